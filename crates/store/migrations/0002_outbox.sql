-- One row per instance and destination: what must be delivered, and how it went.
CREATE TABLE outbox (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id        INTEGER NOT NULL REFERENCES instances (id),
    destination        TEXT    NOT NULL,
    state              TEXT    NOT NULL CHECK (state IN ('pending', 'sent', 'parked')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    -- the last answer: a DIMSE status ("0000H", "B000H: comment") or why no status came
    last_status        TEXT,
    created_at_ms      INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    UNIQUE (instance_id, destination)
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at_ms);
