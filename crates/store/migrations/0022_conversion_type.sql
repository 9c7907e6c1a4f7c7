-- Conversion Type (0008,0064) of a Secondary Capture: a routing rule
-- leaves a workstation's capture, a drawing, a synthetic image or a
-- scanned document unanalysed (another vendor's annotated overlay with
-- Modality CR got a chest result). NULL when absent, and for instances
-- received before this migration.
ALTER TABLE instances ADD COLUMN conversion_type TEXT;
