-- Image Type (values joined by '\') and Presentation Intent Type, for the
-- routing rules that leave stitched images and raw detector data (FOR
-- PROCESSING, whatever the SOP class) unanalysed. NULL when absent, and
-- for instances received before this migration.
ALTER TABLE instances ADD COLUMN image_type TEXT;
ALTER TABLE instances ADD COLUMN presentation_intent_type TEXT;
-- Manufacturer's Model Name: the node's own report or companion image sent
-- back by a PACS names the node's product there, and is never analysed
-- (nor forwarded as an original).
ALTER TABLE instances ADD COLUMN manufacturer_model_name TEXT;
