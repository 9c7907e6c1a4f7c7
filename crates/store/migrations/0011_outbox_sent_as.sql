-- The SOP Instance UID a report was delivered under when it went as
-- another class (a Comprehensive 3D SR sent as Comprehensive SR to a PACS
-- without 3D SR): the UID that PACS holds, for finding the delivery by it.
ALTER TABLE outbox ADD COLUMN sent_as_uid TEXT;
CREATE INDEX outbox_by_sent_as ON outbox (sent_as_uid) WHERE sent_as_uid IS NOT NULL;
