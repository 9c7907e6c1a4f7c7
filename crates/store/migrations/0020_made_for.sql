-- The image whose job first linked this instance the node made (a report,
-- a notice, their companion images). A re-analysis with another model
-- links the job to its new report: the image's listing
-- (`/api/instances/UID`) still shows the earlier ones and their
-- deliveries. NULL for received instances.
ALTER TABLE instances ADD COLUMN made_for_instance_id INTEGER REFERENCES instances (id);
CREATE INDEX instances_by_made_for ON instances (made_for_instance_id);
UPDATE instances SET made_for_instance_id = (
    SELECT MIN(maker) FROM (
        SELECT instance_id AS maker FROM jobs WHERE sr_instance_id = instances.id
        UNION ALL SELECT instance_id FROM jobs WHERE sc_instance_id = instances.id
        UNION ALL SELECT instance_id FROM jobs WHERE notice_instance_id = instances.id
        UNION ALL SELECT instance_id FROM jobs WHERE notice_sc_instance_id = instances.id))
WHERE generated = 1;
