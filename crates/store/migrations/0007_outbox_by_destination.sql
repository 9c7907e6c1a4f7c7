-- A destination's pending rows, by when they are due: a new row takes the
-- destination's current back-off from them.
CREATE INDEX outbox_by_destination ON outbox (destination, state, next_attempt_at_ms);
