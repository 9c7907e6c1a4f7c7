-- Which job made a companion image: asked of each due delivery of an
-- instance the node made (a report waits for its image's due delivery to
-- the same destination), like the indexes on the report and the notices.
CREATE INDEX jobs_by_sc ON jobs (sc_instance_id);
