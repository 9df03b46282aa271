-- Idempotency rows expire (StoreOptions::idempotency_ttl) and are capped per key: index the
-- per-key count of live rows and the prune by age.
CREATE INDEX idempotency_by_key_age ON idempotency(key_id, created_at);
CREATE INDEX idempotency_by_age ON idempotency(created_at);

-- The one row `check_writes` (/readyz) rewrites to prove a commit still works.
CREATE TABLE write_check (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    at  TIMESTAMPTZ NOT NULL
);
INSERT INTO write_check (id, at) VALUES (1, now());
