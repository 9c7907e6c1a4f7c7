-- When a delivery was last sent: kept when an operator's resend makes it
-- pending again, so cancelling or moving that resend puts it back to sent
-- (its history) instead of deleting the record that the destination has it.
ALTER TABLE outbox ADD COLUMN sent_at_ms INTEGER;
UPDATE outbox SET sent_at_ms = updated_at_ms WHERE state = 'sent';
