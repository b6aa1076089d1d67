-- Tandem chat server, PostgreSQL schema version 1 (docs/chat-server.md "Several nodes").

CREATE TABLE identities (
    identity       BYTEA PRIMARY KEY,
    public_key     BYTEA NOT NULL UNIQUE,
    created_at     BIGINT NOT NULL,
    device_cookie  BYTEA,
    cookie_changed BOOLEAN NOT NULL DEFAULT FALSE
);

-- Per receiver: the next sequence number and how many messages wait. An enqueue locks this row
-- until it commits, so a receiver's sequence numbers commit in order on every node.
CREATE TABLE mailboxes (
    receiver BYTEA PRIMARY KEY,
    next_seq BIGINT NOT NULL,
    queued   INTEGER NOT NULL
);

CREATE TABLE queue (
    receiver   BYTEA NOT NULL,
    seq        BIGINT NOT NULL,
    sender     BYTEA NOT NULL,
    message_id BIGINT NOT NULL,
    flags      SMALLINT NOT NULL,
    expires_at BIGINT,
    body       BYTEA NOT NULL,
    PRIMARY KEY (receiver, seq)
);
CREATE INDEX queue_by_expiry ON queue (expires_at) WHERE expires_at IS NOT NULL;

-- Dedupe keys of messages accepted within the dedupe window.
CREATE TABLE seen (
    receiver   BYTEA NOT NULL,
    sender     BYTEA NOT NULL,
    message_id BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (receiver, sender, message_id)
);
CREATE INDEX seen_by_time ON seen (at);

-- Which session receives each identity: the node, the session on it, and an epoch that every
-- unblock raises. A remove carries the epoch of the session that acked; a stale one does nothing.
CREATE TABLE receiving (
    identity BYTEA PRIMARY KEY,
    node     BIGINT NOT NULL,
    session  BIGINT NOT NULL,
    epoch    BIGINT NOT NULL
);

-- Identity-creation tokens, so that step two may reach another node than step one.
CREATE TABLE tokens (
    token      BYTEA PRIMARY KEY,
    public_key BYTEA NOT NULL,
    challenge  BYTEA NOT NULL,
    issued_at  BIGINT NOT NULL
);
CREATE INDEX tokens_by_time ON tokens (issued_at);

-- Node ids: each chat-server start takes a fresh one (its NOTIFY channel is tandem_node_<id>).
CREATE SEQUENCE tandem_nodes;

-- Queue one message: 0 stored (with its seq and the node of the receiving session), 1 duplicate,
-- 2 queue full (the dedupe key is withdrawn so that a later resend is stored).
CREATE FUNCTION tandem_enqueue(p_receiver BYTEA, p_sender BYTEA, p_message_id BIGINT,
                               p_flags SMALLINT, p_expires_at BIGINT, p_body BYTEA,
                               p_now BIGINT, p_max INTEGER)
RETURNS TABLE (o_outcome SMALLINT, o_seq BIGINT, o_node BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v_seq BIGINT;
    v_queued INTEGER;
BEGIN
    INSERT INTO seen (receiver, sender, message_id, at)
    VALUES (p_receiver, p_sender, p_message_id, p_now) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 1::SMALLINT, 0::BIGINT, NULL::BIGINT;
        RETURN;
    END IF;
    INSERT INTO mailboxes (receiver, next_seq, queued) VALUES (p_receiver, 1, 0)
    ON CONFLICT DO NOTHING;
    SELECT m.next_seq, m.queued INTO v_seq, v_queued
    FROM mailboxes m WHERE m.receiver = p_receiver FOR UPDATE;
    IF v_queued >= p_max THEN
        DELETE FROM seen s
        WHERE s.receiver = p_receiver AND s.sender = p_sender AND s.message_id = p_message_id;
        RETURN QUERY SELECT 2::SMALLINT, 0::BIGINT, NULL::BIGINT;
        RETURN;
    END IF;
    UPDATE mailboxes m SET next_seq = v_seq + 1, queued = v_queued + 1
    WHERE m.receiver = p_receiver;
    INSERT INTO queue (receiver, seq, sender, message_id, flags, expires_at, body)
    VALUES (p_receiver, v_seq, p_sender, p_message_id, p_flags, p_expires_at, p_body);
    RETURN QUERY SELECT 0::SMALLINT, v_seq,
        (SELECT r.node FROM receiving r WHERE r.identity = p_receiver);
END
$$;

-- Remove a delivered message if the remover's epoch is still the receiving one.
CREATE FUNCTION tandem_remove(p_receiver BYTEA, p_seq BIGINT, p_epoch BIGINT)
RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    v_removed INTEGER;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM receiving r
                   WHERE r.identity = p_receiver AND r.epoch = p_epoch) THEN
        RETURN 0;
    END IF;
    DELETE FROM queue q WHERE q.receiver = p_receiver AND q.seq = p_seq;
    GET DIAGNOSTICS v_removed = ROW_COUNT;
    IF v_removed > 0 THEN
        UPDATE mailboxes m SET queued = m.queued - v_removed WHERE m.receiver = p_receiver;
    END IF;
    RETURN v_removed;
END
$$;
