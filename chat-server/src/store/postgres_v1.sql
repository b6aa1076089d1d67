-- Tandem chat server, PostgreSQL schema version 1 (docs/chat-server.md "Several nodes").

CREATE TABLE identities (
    identity       BYTEA PRIMARY KEY,
    public_key     BYTEA NOT NULL UNIQUE,
    created_at     BIGINT NOT NULL,
    device_cookie  BYTEA,
    cookie_changed BOOLEAN NOT NULL DEFAULT FALSE
);

-- Per receiver: the next sequence number. An enqueue locks this row until it commits, so a
-- receiver's sequence numbers commit in order on every node. Removals do not touch it.
CREATE TABLE mailboxes (
    receiver BYTEA PRIMARY KEY,
    next_seq BIGINT NOT NULL
) WITH (fillfactor = 50); -- room on the page for HOT updates: one per message

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
-- unblock raises; `reading` is the epoch of the session that has started reading the queue
-- (the new one waits for the old node's release first). A removal carries the epoch of the
-- session that acked and counts only if that epoch is not older than `reading`: acks the old
-- session handled before the new one read still count, later ones do nothing.
-- The node is NULL once that session closed (the epochs stay: they only ever grow).
CREATE TABLE receiving (
    identity BYTEA PRIMARY KEY,
    node     BIGINT,
    session  BIGINT NOT NULL,
    epoch    BIGINT NOT NULL,
    reading  BIGINT NOT NULL DEFAULT 0
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

-- Queue a batch of messages (arrays of equal length, sorted by receiver so that batches of
-- different nodes lock mailbox rows in the same order). One row per message, in order:
-- outcome 0 stored (with its seq and the node of the receiving session), 1 duplicate, 2 queue
-- full (the dedupe key is withdrawn so that a later resend is stored, and the seq given back).
CREATE FUNCTION tandem_enqueue(p_receivers BYTEA[], p_senders BYTEA[], p_message_ids BIGINT[],
                               p_flags SMALLINT[], p_expires_at BIGINT[], p_bodies BYTEA[],
                               p_now BIGINT, p_max INTEGER)
RETURNS TABLE (o_outcome SMALLINT, o_seq BIGINT, o_node BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v_seq BIGINT;
    v_first BIGINT;
    v_count BIGINT;
BEGIN
    FOR i IN 1 .. COALESCE(array_length(p_receivers, 1), 0) LOOP
        INSERT INTO seen (receiver, sender, message_id, at)
        VALUES (p_receivers[i], p_senders[i], p_message_ids[i], p_now) ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            o_outcome := 1; o_seq := 0; o_node := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
        INSERT INTO mailboxes AS m (receiver, next_seq) VALUES (p_receivers[i], 2)
        ON CONFLICT (receiver) DO UPDATE SET next_seq = m.next_seq + 1
        RETURNING m.next_seq - 1 INTO v_seq;
        -- At most v_seq - first + 1 messages wait; count them only when that could be too many.
        IF v_seq > p_max THEN
            SELECT q.seq INTO v_first FROM queue q
            WHERE q.receiver = p_receivers[i] ORDER BY q.seq LIMIT 1;
            IF v_first IS NOT NULL AND v_seq - v_first >= p_max THEN
                SELECT COUNT(*) INTO v_count FROM queue q WHERE q.receiver = p_receivers[i];
                IF v_count >= p_max THEN
                    UPDATE mailboxes m SET next_seq = v_seq WHERE m.receiver = p_receivers[i];
                    DELETE FROM seen s
                    WHERE s.receiver = p_receivers[i] AND s.sender = p_senders[i]
                      AND s.message_id = p_message_ids[i];
                    o_outcome := 2; o_seq := 0; o_node := NULL;
                    RETURN NEXT;
                    CONTINUE;
                END IF;
            END IF;
        END IF;
        INSERT INTO queue (receiver, seq, sender, message_id, flags, expires_at, body)
        VALUES (p_receivers[i], v_seq, p_senders[i], p_message_ids[i], p_flags[i],
                p_expires_at[i], p_bodies[i]);
        o_outcome := 0; o_seq := v_seq;
        o_node := (SELECT r.node FROM receiving r WHERE r.identity = p_receivers[i]);
        RETURN NEXT;
    END LOOP;
END
$$;
