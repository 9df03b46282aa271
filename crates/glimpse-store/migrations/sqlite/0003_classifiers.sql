-- Saved classifiers (issue 24), owned by the key that made them; a name is unique per key.
-- `labels` is JSON: [{"name", "prompts": [..], "examples": n, "embedding": [f32..]}], the
-- prototypes computed once at create/replace, so using a classifier embeds no text or example.
CREATE TABLE classifiers (
    key_id          TEXT NOT NULL REFERENCES keys(id),
    name            TEXT NOT NULL,
    model           TEXT NOT NULL,
    labels          TEXT NOT NULL,
    min_confidence  REAL,
    fallback        TEXT,
    multi_label     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (key_id, name)
);
