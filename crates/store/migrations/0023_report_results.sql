-- What each report the node made states, and from which model input: a
-- later copy of its image is compared with this (a re-analysis overwrote
-- the maker job's result, and a copy compared with the new run got a
-- second report saying "another result" under the same number), and a
-- copy whose model input made a report already shares it. Reports made
-- before this migration have no row.
CREATE TABLE report_results (
    sr_instance_id          INTEGER PRIMARY KEY,
    source_sop_instance_uid TEXT    NOT NULL,
    -- SHA-256 of the patient and study the report names (its source's identity)
    source_identity         TEXT    NOT NULL,
    contract_sha256         TEXT    NOT NULL,
    -- SHA-256 of the preprocessed tensor the model was given
    model_input_sha256      TEXT    NOT NULL,
    p_positive              REAL    NOT NULL,
    decision                TEXT    NOT NULL
);
CREATE INDEX report_results_by_source ON report_results (source_sop_instance_uid, model_input_sha256);
