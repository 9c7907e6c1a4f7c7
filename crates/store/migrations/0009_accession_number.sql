-- The Accession Number of each instance (its reports copy their image's),
-- so that an operator finds a study's jobs and deliveries by the number a
-- radiologist's worklist shows. NULL for instances stored before.
ALTER TABLE instances ADD COLUMN accession_number TEXT;
CREATE INDEX instances_by_accession ON instances (accession_number);
