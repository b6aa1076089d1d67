-- Tandem chat server, PostgreSQL schema version 2: the URL that wakes an identity's device group
-- (docs/chat-server.md "Push").

ALTER TABLE identities ADD COLUMN push_url TEXT;
