-- The not-analysed notice as an image (with report.companion_sc), owed
-- with the notice's SR. NULL: none.
ALTER TABLE jobs ADD COLUMN notice_sc_instance_id INTEGER REFERENCES instances (id);
