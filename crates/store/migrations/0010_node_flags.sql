-- Conditions the node keeps across restarts until an operator acts:
-- `database_lost`, set when a start found instances/ holding files and the
-- database no instance, cleared by `pneumo-node recover-files`.
CREATE TABLE node_flags (
    name     TEXT    PRIMARY KEY,
    since_ms INTEGER NOT NULL
);
