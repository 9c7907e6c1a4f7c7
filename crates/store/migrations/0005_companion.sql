-- The companion image a job made beside its report (NULL: none, or made by
-- a build that did not record it).
ALTER TABLE jobs ADD COLUMN sc_instance_id INTEGER REFERENCES instances (id);
