-- Instances this node made (reports), as opposed to those it received.
ALTER TABLE instances ADD COLUMN generated INTEGER NOT NULL DEFAULT 0;
