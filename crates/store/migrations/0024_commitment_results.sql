-- Storage Commitment results owed to requesters that take them on an
-- association of their own (dicom.commitment_requesters): kept from the
-- N-ACTION's answer until the requester answers the N-EVENT-REPORT, or
-- until they are given up, so a restart loses none.
CREATE TABLE commitment_results (
    id               INTEGER PRIMARY KEY,
    requester_ae     TEXT    NOT NULL,
    transaction_uid  TEXT    NOT NULL,
    event_type_id    INTEGER NOT NULL,
    -- the Event Information, in Explicit VR Little Endian
    data             BLOB    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'sent', 'given_up')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at_ms    INTEGER NOT NULL,
    next_attempt_ms  INTEGER NOT NULL,
    finished_at_ms   INTEGER,
    -- the requester's last answer, or why none came
    last_status      TEXT
);
CREATE INDEX commitment_results_due ON commitment_results (state, next_attempt_ms);
