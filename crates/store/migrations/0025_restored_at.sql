-- When a file was last put back (a re-sent copy of an instance whose file
-- retention or a mishap removed, a report made again): retention keeps it
-- `keep_days` from then, as from a receipt (the next pass removed it
-- again at once, before the resend it was restored for). NULL: never.
ALTER TABLE instances ADD COLUMN restored_at_ms INTEGER;
