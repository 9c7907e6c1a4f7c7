-- Every instance kept on disk, and the job that carries it through the pipeline.
CREATE TABLE instances (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid    TEXT    NOT NULL,
    sop_class_uid       TEXT    NOT NULL,
    study_instance_uid  TEXT    NOT NULL,
    series_instance_uid TEXT    NOT NULL,
    transfer_syntax_uid TEXT    NOT NULL,
    modality            TEXT,
    body_part_examined  TEXT,
    view_position       TEXT,
    -- relative to the data directory
    path                TEXT    NOT NULL UNIQUE,
    file_size           INTEGER NOT NULL,
    dataset_size        INTEGER NOT NULL,
    -- SHA-256 of the data set bytes as received, lower-case hex
    sha256              TEXT    NOT NULL,
    calling_ae          TEXT    NOT NULL,
    peer_address        TEXT    NOT NULL,
    -- milliseconds since the Unix epoch, UTC
    received_at_ms      INTEGER NOT NULL,
    UNIQUE (sop_instance_uid, sha256)
);
CREATE INDEX instances_by_sop ON instances (sop_instance_uid);
CREATE INDEX instances_by_study ON instances (study_instance_uid);

CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id   INTEGER NOT NULL UNIQUE REFERENCES instances (id),
    state         TEXT    NOT NULL CHECK (state IN
                    ('received', 'queued', 'analysing', 'reported', 'delivered', 'failed', 'skipped')),
    reason        TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (state);
