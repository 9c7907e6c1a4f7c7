-- The notice a failed job made (an SR saying its image was not analysed,
-- and why), owed to the results destinations like a report. NULL: none
-- (notices turned off, the job failed before this migration, or the
-- notice could not be made).
ALTER TABLE jobs ADD COLUMN notice_instance_id INTEGER REFERENCES instances (id);
