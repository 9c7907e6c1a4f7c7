-- When retention removed the instance's file (NULL: the file is kept). The
-- row, its job and its deliveries stay: what was received, analysed and
-- sent remains answerable, and a copy sent again is a duplicate.
ALTER TABLE instances ADD COLUMN purged_at_ms INTEGER;
CREATE INDEX instances_kept_by_age ON instances (received_at_ms) WHERE purged_at_ms IS NULL;
