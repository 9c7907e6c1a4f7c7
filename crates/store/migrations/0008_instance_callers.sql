-- The AE titles that sent an instance again (an identical copy, or the same
-- data set in another encoding), beside the first one's in
-- instances.calling_ae: an image's results go to the destinations of every
-- caller that sent it.
CREATE TABLE instance_callers (
    instance_id INTEGER NOT NULL REFERENCES instances (id),
    calling_ae  TEXT    NOT NULL,
    UNIQUE (instance_id, calling_ae)
);
