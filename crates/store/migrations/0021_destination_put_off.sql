-- Until when a destination that failed as a whole (no association, one
-- lost before any answer on two rows, two A7xx) is put off: a row owed to
-- it meanwhile waits as long. (It waited for the latest next attempt of
-- any tried row, a row's own back-off included: one instance a PACS
-- refused made every later image and report wait up to retry_cap_s.)
CREATE TABLE destination_put_off (
    destination TEXT    PRIMARY KEY,
    until_ms    INTEGER NOT NULL
);
