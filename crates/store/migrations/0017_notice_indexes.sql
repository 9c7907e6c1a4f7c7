-- Which delivery is a notice: asked of every outbox row an operator lists
-- (`/api/deliveries`), by the instance the row delivers; without these,
-- each row scanned every job.
CREATE INDEX jobs_by_notice ON jobs (notice_instance_id);
CREATE INDEX jobs_by_notice_sc ON jobs (notice_sc_instance_id);
