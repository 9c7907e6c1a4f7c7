-- When a delivery became owed this time: its row's making, or the
-- operator's resend or retry of a parked row, or the repair of its file.
-- The age of the oldest waiting delivery (/metrics) counts from here: from
-- the row's making, a resend of a study sent a month ago read a month old.
-- NULL: since the row was made.
ALTER TABLE outbox ADD COLUMN owed_since_ms INTEGER;
