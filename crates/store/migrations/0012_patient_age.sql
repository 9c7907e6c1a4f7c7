-- The patient's age in years at the study (Patient's Age, else Patient's
-- Birth Date against the Study Date), for the routing rule that leaves
-- children's radiographs unanalysed. NULL when neither is given.
ALTER TABLE instances ADD COLUMN patient_age_years REAL;
