-- What the pipeline needs of a job: who holds it and until when, and what it produced.
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires_at_ms INTEGER;
-- the analysis result as JSON (probabilities, decision, threshold, model, execution provider)
ALTER TABLE jobs ADD COLUMN result_json TEXT;
ALTER TABLE jobs ADD COLUMN sr_instance_id INTEGER REFERENCES instances (id);
CREATE INDEX jobs_by_sr ON jobs (sr_instance_id);
