-- Same schema as migrations/sqlite; timestamps are TIMESTAMPTZ from the database clock, so every
-- replica judges reservation age by one clock.

CREATE TABLE keys (
    id          TEXT PRIMARY KEY,                 -- 'key_…', not secret
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,             -- hex sha256 of the whole key; the key itself is never stored
    prefix      TEXT NOT NULL,                    -- first chars of the key, for display only
    balance     BIGINT NOT NULL CHECK (balance >= 0 AND balance <= 1000000000000000),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);

-- One row per debit; closed exactly once (settled or refunded) by a conditional UPDATE on state.
CREATE TABLE reservations (
    id          TEXT PRIMARY KEY,                 -- 'dbt_…'
    key_id      TEXT NOT NULL REFERENCES keys(id),
    credits     BIGINT NOT NULL CHECK (credits >= 0),
    endpoint    TEXT NOT NULL,
    model       TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'settled', 'refunded')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    closed_at   TIMESTAMPTZ
);
CREATE INDEX reservations_open_by_age ON reservations(created_at) WHERE state = 'open';

CREATE TABLE ledger (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id          TEXT NOT NULL REFERENCES keys(id),
    kind            TEXT NOT NULL CHECK (kind IN ('debit', 'refund', 'topup')),
    credits         BIGINT NOT NULL,              -- signed: negative for a debit
    endpoint        TEXT NOT NULL DEFAULT '',
    model           TEXT NOT NULL DEFAULT '',
    status          INTEGER,
    latency_ms      DOUBLE PRECISION,
    reservation_id  TEXT REFERENCES reservations(id),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ledger_by_key ON ledger(key_id, id);
-- Backstops: one debit row and at most one refund row per reservation.
CREATE UNIQUE INDEX ledger_one_debit ON ledger(reservation_id) WHERE kind = 'debit';
CREATE UNIQUE INDEX ledger_one_refund ON ledger(reservation_id) WHERE kind = 'refund';

CREATE TABLE idempotency (
    key_id           TEXT NOT NULL REFERENCES keys(id),
    idempotency_key  TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('in_progress', 'completed')),
    status           INTEGER,
    body             TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, idempotency_key)
);
