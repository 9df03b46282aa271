-- Timestamps are UTC RFC 3339 text with milliseconds ('2026-01-02T03:04:05.678Z'): fixed width, so
-- text order is time order and comparisons against a cutoff work.

CREATE TABLE keys (
    id          TEXT PRIMARY KEY,                 -- 'key_…', not secret
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,             -- hex sha256 of the whole key; the key itself is never stored
    prefix      TEXT NOT NULL,                    -- first chars of the key, for display only
    balance     INTEGER NOT NULL CHECK (balance >= 0 AND balance <= 1000000000000000),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    revoked_at  TEXT
);

-- One row per debit; closed exactly once (settled or refunded) by a conditional UPDATE on state.
CREATE TABLE reservations (
    id          TEXT PRIMARY KEY,                 -- 'dbt_…'
    key_id      TEXT NOT NULL REFERENCES keys(id),
    credits     INTEGER NOT NULL CHECK (credits >= 0),
    endpoint    TEXT NOT NULL,
    model       TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'settled', 'refunded')),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    closed_at   TEXT
);
CREATE INDEX reservations_open_by_age ON reservations(created_at) WHERE state = 'open';

CREATE TABLE ledger (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id          TEXT NOT NULL REFERENCES keys(id),
    kind            TEXT NOT NULL CHECK (kind IN ('debit', 'refund', 'topup')),
    credits         INTEGER NOT NULL,             -- signed: negative for a debit
    endpoint        TEXT NOT NULL DEFAULT '',
    model           TEXT NOT NULL DEFAULT '',
    status          INTEGER,
    latency_ms      REAL,
    reservation_id  TEXT REFERENCES reservations(id),
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
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
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (key_id, idempotency_key)
);
