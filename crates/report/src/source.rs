//! What the report needs from the analysed instance.

use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, Tag};
use dicom_dictionary_std::tags;
use dicom_encoding::text::{SpecificCharacterSet, TextCodec};
use dicom_object::mem::InMemElement;
use dicom_object::InMemDicomObject;

use crate::content::Code;
use crate::uid::is_referable_uid;
use crate::ReportError;

/// Patient module (PS3.3 C.7.1.1), General Study module (C.7.2.1) and Patient
/// Study module (C.7.2.2) attributes copied from the source when present.
/// Study Instance UID is handled apart (it is required).
pub const COPIED_TAGS: &[Tag] = &[
    // Patient
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE,
    tags::TYPE_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_BIRTH_TIME,
    tags::PATIENT_SEX,
    tags::PATIENT_BIRTH_DATE_IN_ALTERNATIVE_CALENDAR,
    tags::PATIENT_DEATH_DATE_IN_ALTERNATIVE_CALENDAR,
    tags::PATIENT_ALTERNATIVE_CALENDAR,
    tags::OTHER_PATIENT_I_DS_SEQUENCE,
    tags::OTHER_PATIENT_NAMES,
    tags::PATIENT_COMMENTS,
    tags::PATIENT_SPECIES_DESCRIPTION,
    tags::PATIENT_SPECIES_CODE_SEQUENCE,
    tags::PATIENT_BREED_DESCRIPTION,
    tags::PATIENT_BREED_CODE_SEQUENCE,
    tags::RESPONSIBLE_PERSON,
    tags::RESPONSIBLE_PERSON_ROLE,
    tags::RESPONSIBLE_ORGANIZATION,
    tags::PATIENT_IDENTITY_REMOVED,
    tags::DEIDENTIFICATION_METHOD,
    tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
    // General Study
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::REFERRING_PHYSICIAN_IDENTIFICATION_SEQUENCE,
    tags::STUDY_ID,
    tags::ACCESSION_NUMBER,
    tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE,
    tags::STUDY_DESCRIPTION,
    tags::PHYSICIANS_OF_RECORD,
    tags::NAME_OF_PHYSICIANS_READING_STUDY,
    tags::PROCEDURE_CODE_SEQUENCE,
    // Patient Study
    tags::ADMITTING_DIAGNOSES_DESCRIPTION,
    tags::ADMITTING_DIAGNOSES_CODE_SEQUENCE,
    tags::PATIENT_AGE,
    tags::PATIENT_SIZE,
    tags::PATIENT_SIZE_CODE_SEQUENCE,
    tags::PATIENT_WEIGHT,
    tags::OCCUPATION,
    tags::ADDITIONAL_PATIENT_HISTORY,
    // what screening for an occupational lung disease may carry
    tags::SMOKING_STATUS,
    tags::MEDICAL_ALERTS,
    tags::ALLERGIES,
    tags::PREGNANCY_STATUS,
    tags::PATIENT_SEX_NEUTERED,
];

/// Type 2 attributes of the Patient and General Study modules: written empty
/// when the source lacks them.
pub const TYPE2_TAGS: &[(Tag, dicom_core::VR)] = &[
    (tags::PATIENT_NAME, dicom_core::VR::PN),
    (tags::PATIENT_ID, dicom_core::VR::LO),
    (tags::PATIENT_BIRTH_DATE, dicom_core::VR::DA),
    (tags::PATIENT_SEX, dicom_core::VR::CS),
    (tags::STUDY_DATE, dicom_core::VR::DA),
    (tags::STUDY_TIME, dicom_core::VR::TM),
    (tags::REFERRING_PHYSICIAN_NAME, dicom_core::VR::PN),
    (tags::STUDY_ID, dicom_core::VR::SH),
    (tags::ACCESSION_NUMBER, dicom_core::VR::SH),
];

/// The analysed instance, as far as the report needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInstance {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    /// Modality of the source series (e.g. `CR`, `DX`).
    pub modality: String,
    pub rows: u16,
    pub columns: u16,
    /// Instance Number of the source, when present.
    pub instance_number: Option<i32>,
    /// Series Number of the source, when present.
    pub series_number: Option<i32>,
    /// View Position (PA, AP, ...), else the meaning of the first View Code
    /// Sequence item ("postero-anterior"), when present.
    pub view_position: Option<String>,
    /// When the image was acquired, "HH:MM:SS" (Acquisition DateTime, else
    /// Acquisition Time, else Content Time): what tells a retake from the
    /// first exposure when the source has no Instance Number.
    pub acquired_at: Option<String>,
    /// Patient Orientation (row, column), when present.
    pub patient_orientation: Option<(String, String)>,
    /// Imager Pixel Spacing (row spacing, column spacing) in mm, when present
    /// and positive.
    pub imager_pixel_spacing: Option<(f64, f64)>,
    /// A pixel's height over its width when not 1 (Pixel Aspect Ratio,
    /// else Pixel Spacing, else Imager Pixel Spacing): the companion image
    /// is resampled to square pixels by it.
    pub pixel_aspect: Option<f64>,
    /// Frame of Reference UID, when present.
    pub frame_of_reference_uid: Option<String>,
    /// Specific Character Set as found (values joined by `\`), when present.
    pub specific_character_set: Option<String>,
    /// Body Part Examined (CS), when present.
    pub body_part_examined: Option<String>,
    /// Laterality of the series (0020,0060), when `R` or `L`.
    pub series_laterality: Option<String>,
    /// Timezone Offset From UTC as found, when present and valid.
    pub timezone_offset_from_utc: Option<String>,
    /// First item of the Procedure Code Sequence, when present and complete.
    pub procedure_code: Option<Code>,
    /// The Patient / General Study / Patient Study attributes to copy (see
    /// [`COPIED_TAGS`]), as decoded from the source.
    pub copied_elements: Vec<InMemElement>,
    /// Which version of its SOP Instance UID this source is: None for the
    /// first data set received under it (and for a later one that names the
    /// same patient and study); for a corrected copy (see [`Self::identity`]),
    /// a digest of that data set. The report's UIDs derive from it, so a
    /// corrected copy gets its own report.
    pub version: Option<String>,
    /// The report this node made, with the same model, for an earlier copy
    /// stored under this SOP Instance UID, which this copy's report
    /// replaces (its Predecessor Documents Sequence and a comment say so).
    pub replaces: Option<EarlierReport>,
    /// The version key of a copy that names another patient or study than
    /// the first stored under its SOP Instance UID (the modality corrected
    /// it); None for the first and for copies that name the same (even
    /// with other pixels). See [`Self::series_key`].
    pub corrected_copy: Option<String>,
}

/// A report made for an earlier copy of the source (see
/// [`SourceInstance::replaces`]).
#[derive(Debug, Clone, PartialEq)]
pub struct EarlierReport {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// Why it does not stand for this copy.
    pub because: Replacement,
}

/// Why a copy's report replaces an earlier copy's report, or the notice
/// that the image was not analysed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    /// The copy names the same patient and study as an earlier one whose
    /// report it would share, but its analysis gave another result (a
    /// sender that re-used the UID for other pixels).
    OtherResult,
    /// What it replaces is the notice that the image had not been analysed
    /// (an analysis that failed, then succeeded after a retry or a re-send).
    Notice,
}

impl Replacement {
    /// The words of the report's comment.
    pub fn explained(self) -> &'static str {
        match self {
            Replacement::OtherResult => {
                "this copy's analysis gave another result (where a viewer still shows the earlier \
                 copy's pixels, the earlier report is the one that applies to them)"
            }
            Replacement::Notice => "the image has been analysed since",
        }
    }
}

/// "HH:MM:SS" of a TM value ("081403.123", "0814", "08:14:03" as some
/// write it); None when it does not read as a time of day.
fn time_of_day(tm: &str) -> Option<String> {
    let digits: String = tm
        .trim()
        .chars()
        .take_while(|c| *c != '.' && *c != '+' && *c != '-')
        .filter(|c| *c != ':')
        .collect();
    if digits.len() < 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let part = |i: usize| digits.get(i..i + 2).unwrap_or("00");
    let (h, m, s) = (part(0), part(2), part(4));
    (h < "24" && m < "60" && s < "61").then(|| format!("{h}:{m}:{s}"))
}

/// The first item of a sequence attribute, when it has one.
fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    match obj.get(tag)?.value() {
        Value::Sequence(seq) => seq.items().first(),
        _ => None,
    }
}

fn get_str(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| {
            s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_string()
        })
        .filter(|s| !s.is_empty())
}

fn required_uid(
    obj: &InMemDicomObject,
    tag: Tag,
    name: &'static str,
) -> Result<String, ReportError> {
    let v = get_str(obj, tag).ok_or(ReportError::MissingAttribute(name))?;
    if !is_referable_uid(&v) {
        return Err(ReportError::InvalidAttribute {
            name,
            reason: format!("{v:?} is not a UID (digits and dots, at most 64 characters)"),
        });
    }
    Ok(v)
}

impl SourceInstance {
    /// Take what the report needs from the source's data set (the header is
    /// enough: pixel data is not read).
    pub fn from_dataset(obj: &InMemDicomObject) -> Result<SourceInstance, ReportError> {
        let sop_class_uid = required_uid(obj, tags::SOP_CLASS_UID, "SOPClassUID")?;
        let sop_instance_uid = required_uid(obj, tags::SOP_INSTANCE_UID, "SOPInstanceUID")?;
        let study_instance_uid = required_uid(obj, tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?;
        let series_instance_uid =
            required_uid(obj, tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
        let modality =
            get_str(obj, tags::MODALITY).ok_or(ReportError::MissingAttribute("Modality"))?;
        let us = |tag: Tag, name: &'static str| -> Result<u16, ReportError> {
            obj.get(tag)
                .ok_or(ReportError::MissingAttribute(name))?
                .to_int::<u16>()
                .map_err(|e| ReportError::InvalidAttribute {
                    name,
                    reason: e.to_string(),
                })
        };
        let rows = us(tags::ROWS, "Rows")?;
        let columns = us(tags::COLUMNS, "Columns")?;
        let instance_number = obj
            .get(tags::INSTANCE_NUMBER)
            .and_then(|e| e.to_int::<i32>().ok());
        let series_number = obj
            .get(tags::SERIES_NUMBER)
            .and_then(|e| e.to_int::<i32>().ok());
        let view_position = get_str(obj, tags::VIEW_POSITION).or_else(|| {
            get_str(
                first_item(obj, tags::VIEW_CODE_SEQUENCE)?,
                tags::CODE_MEANING,
            )
            .filter(|m| m.chars().count() <= 64)
        });
        let acquired_at = get_str(obj, tags::ACQUISITION_DATE_TIME)
            .and_then(|dt| dt.get(8..).map(str::to_string))
            .or_else(|| get_str(obj, tags::ACQUISITION_TIME))
            .or_else(|| get_str(obj, tags::CONTENT_TIME))
            .and_then(|t| time_of_day(&t));
        let patient_orientation = obj
            .get(tags::PATIENT_ORIENTATION)
            .and_then(|e| e.to_multi_str().ok())
            .and_then(|v| {
                let v: Vec<String> = v.iter().map(|s| s.trim().to_string()).collect();
                match v.as_slice() {
                    [r, c] if !r.is_empty() && !c.is_empty() => Some((r.clone(), c.clone())),
                    _ => None,
                }
            });
        let imager_pixel_spacing = obj
            .get(tags::IMAGER_PIXEL_SPACING)
            .and_then(|e| e.to_multi_float64().ok())
            .and_then(|v| match v.as_slice() {
                [r, c] if r.is_finite() && c.is_finite() && *r > 0.0 && *c > 0.0 => Some((*r, *c)),
                _ => None,
            });
        let pair = |tag| {
            obj.get(tag)
                .and_then(|e| e.to_multi_float64().ok())
                .and_then(|v| match v.as_slice() {
                    [a, b] if a.is_finite() && b.is_finite() && *a > 0.0 && *b > 0.0 => Some(a / b),
                    _ => None,
                })
        };
        // (vertical, horizontal) for the ratio; (row spacing, column
        // spacing), the same order, for the spacings
        let pixel_aspect = pair(tags::PIXEL_ASPECT_RATIO)
            .or_else(|| pair(tags::PIXEL_SPACING))
            .or_else(|| pair(tags::IMAGER_PIXEL_SPACING))
            .filter(|ratio| (ratio - 1.0).abs() > 1e-3 && (0.1..=10.0).contains(ratio));
        let frame_of_reference_uid =
            get_str(obj, tags::FRAME_OF_REFERENCE_UID).filter(|u| is_referable_uid(u));
        let specific_character_set = obj
            .get(tags::SPECIFIC_CHARACTER_SET)
            .and_then(|e| e.to_multi_str().ok())
            .map(|v| v.iter().map(|s| s.trim()).collect::<Vec<_>>().join("\\"))
            .filter(|s| !s.trim_matches('\\').is_empty());
        let body_part_examined = get_str(obj, tags::BODY_PART_EXAMINED).filter(|s| {
            s.len() <= 16
                && s.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ' || b == b'_')
        });
        let series_laterality =
            get_str(obj, tags::LATERALITY).filter(|s| s.as_str() == "R" || s.as_str() == "L");
        let timezone_offset_from_utc = get_str(obj, tags::TIMEZONE_OFFSET_FROM_UTC)
            .filter(|s| crate::types::parse_tz_offset(s).is_some());
        let procedure_code =
            first_item(obj, tags::PROCEDURE_CODE_SEQUENCE).and_then(Code::from_item);
        let copied_elements = COPIED_TAGS
            .iter()
            .filter_map(|t| obj.get(*t))
            .filter(|e| !is_empty_sequence(e))
            .map(|e| rebuild(&with_current_date_time_form(e)))
            .map(|e| match &specific_character_set {
                Some(_) => with_undecodable_bytes_replaced(&e),
                None => e,
            })
            .collect();
        Ok(SourceInstance {
            sop_class_uid,
            sop_instance_uid,
            study_instance_uid,
            series_instance_uid,
            modality,
            rows,
            columns,
            instance_number,
            series_number,
            view_position,
            acquired_at,
            patient_orientation,
            imager_pixel_spacing,
            pixel_aspect,
            frame_of_reference_uid,
            specific_character_set,
            body_part_examined,
            series_laterality,
            timezone_offset_from_utc,
            procedure_code,
            copied_elements,
            version: None,
            replaces: None,
            corrected_copy: None,
        })
    }

    /// What the Series Instance UIDs of its reports and notices derive
    /// from: its SOP Instance UID, and the version of a corrected copy. A
    /// series names one patient in one study: a copy moved to another
    /// patient's study had its report put in the series of the first
    /// patient's report. (A copy with other pixels only shares the series
    /// of the report it replaces.)
    pub fn series_key(&self) -> String {
        match &self.corrected_copy {
            Some(version) => format!("{}#{}", self.sop_instance_uid, version.trim()),
            None => self.sop_instance_uid.clone(),
        }
    }

    /// The value of a copied attribute, trimmed; empty when absent.
    pub fn copied_text(&self, tag: Tag) -> String {
        self.copied_elements
            .iter()
            .find(|e| e.tag() == tag)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_matches([' ', '\0']).to_string())
            .unwrap_or_default()
    }

    /// Whom and what the report is about: the study, and the patient's name,
    /// ID, birth date and sex and the accession number as the source has
    /// them. A later copy of a source that changes one of these (the patient
    /// corrected) needs its own report; one that does not (a PACS that added
    /// an issuer) shares the first's.
    pub fn identity(&self) -> Vec<String> {
        let value = |tag: Tag| {
            let text = self.copied_text(tag);
            if tag != tags::PATIENT_NAME {
                return text;
            }
            // `DOE^JOHN^^^` is `DOE^JOHN` (PS3.5 6.2: trailing component
            // delimiters may be left out), in each component group.
            let groups: Vec<&str> = text
                .split('=')
                .map(|g| g.trim_end_matches(['^', ' ']))
                .collect();
            groups.join("=").trim_end_matches('=').to_string()
        };
        let mut identity = vec![self.study_instance_uid.clone()];
        identity.extend(
            [
                tags::PATIENT_NAME,
                tags::PATIENT_ID,
                tags::PATIENT_BIRTH_DATE,
                tags::PATIENT_SEX,
                tags::ACCESSION_NUMBER,
            ]
            .map(value),
        );
        identity
    }

    /// What the report's UIDs derive from: the SOP Instance UID, and for a
    /// later version `#` and its digest (`#` never occurs in a UID).
    pub fn uid_key(&self) -> String {
        match &self.version {
            None => self.sop_instance_uid.clone(),
            Some(v) => format!("{}#{}", self.sop_instance_uid, v.trim()),
        }
    }

    /// The Specific Character Set to write the report's `texts` in (those
    /// copied from the source, the node's configured names, the content):
    /// - the source's, when it is one value that dicom-rs can encode and every
    ///   text encodes in it;
    /// - none (the default repertoire), when the source declared none and
    ///   every text is ASCII;
    /// - `ISO_IR 100`, when the source declared none and every text fits
    ///   ISO 8859-1: a source without a Specific Character Set but with 8-bit
    ///   bytes in its names (as older modalities send) is read as ISO 8859-1,
    ///   so its bytes are written back unchanged, now declared;
    /// - otherwise `ISO_IR 192` (UTF-8), which writes any text: code
    ///   extensions, unknown terms, a configured institution name the
    ///   source's set cannot write ("Łódź" beside an ISO 8859-1 source).
    pub fn output_character_set<'a>(
        &self,
        texts: impl Iterator<Item = &'a str> + Clone,
    ) -> Option<String> {
        let writes_all = |code: &str| {
            SpecificCharacterSet::from_code(code)
                .is_some_and(|cs| texts.clone().all(|t| cs.encode(t).is_ok()))
        };
        match self.specific_character_set.as_deref().map(str::trim) {
            Some(cs) if !cs.contains('\\') && writes_all(cs) => Some(cs.to_string()),
            None if texts.clone().all(str::is_ascii) => None,
            None if writes_all("ISO_IR 100") => Some("ISO_IR 100".to_string()),
            _ => Some("ISO_IR 192".to_string()),
        }
    }
}

/// A sequence without items. Every sequence copied is Type 3, where PS3.3
/// wants one item or the attribute absent; validators refuse the empty form
/// some sources send, so it is left out.
fn is_empty_sequence(e: &InMemElement) -> bool {
    matches!(e.value(), Value::Sequence(seq) if seq.items().is_empty())
}

/// A date `YYYY.MM.DD` or time `HH:MM:SS` in the ACR-NEMA form that PS3.5
/// (6.2, DA and TM notes) asks readers to accept, written in the current
/// form (`YYYYMMDD`, `HHMMSS`); anything else as it is.
fn with_current_date_time_form(e: &InMemElement) -> InMemElement {
    let (separator, lengths): (char, &[usize]) = match e.vr() {
        dicom_core::VR::DA => ('.', &[4, 2, 2]),
        dicom_core::VR::TM => (':', &[2, 2, 2]),
        _ => return e.clone(),
    };
    let Ok(text) = e.to_str() else {
        return e.clone();
    };
    let text = text.trim_matches([' ', '\0']);
    let (head, fraction) = match (e.vr(), text.split_once('.')) {
        (dicom_core::VR::TM, Some((h, f))) => (h, Some(f)),
        _ => (text, None),
    };
    let parts: Vec<&str> = head.split(separator).collect();
    let old_form = parts.len() == lengths.len()
        && parts
            .iter()
            .zip(lengths)
            .all(|(p, n)| p.len() == *n && p.bytes().all(|b| b.is_ascii_digit()));
    if !old_form {
        return e.clone();
    }
    let mut current = parts.concat();
    if let Some(f) = fraction {
        current.push('.');
        current.push_str(f);
    }
    DataElement::new(e.tag(), e.vr(), PrimitiveValue::from(current))
}

/// A copy of `e` whose sequences and items have undefined length, so that
/// lengths are recomputed when written, and whose text values lose their
/// trailing padding: written in another character set (UTF-8 beside a
/// Latin-1 source) a value's pad byte would become part of it.
/// Text the source's declared character set could not decode (Latin-1 or
/// GB18030 bytes under `ISO_IR 192`, after a modality's switch to UTF-8):
/// dicom-rs writes each such byte as `\ooo`, whose backslash, written
/// out, split the value (Patient's Name "M\374ller^J\374rgen" became
/// three values, "M", "374ller^J", "374rgen", in the report). Each such
/// byte is U+FFFD, the replacement character, in one value. (Only bytes
/// from 0x80: ASCII always decodes; a value of its own beginning with 200
/// to 377 in a multi-valued name would be taken for one, which no name
/// does.)
pub(crate) fn with_undecodable_bytes_replaced(e: &InMemElement) -> InMemElement {
    use dicom_core::VR;
    fn escaped_byte(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() >= 3
            && matches!(b[0], b'2' | b'3')
            && b[1..3].iter().all(|d| (b'0'..=b'7').contains(d))
    }
    let mend = |v: &str| -> String {
        // within one value (ST, LT, UT are never split)
        let mut out = String::with_capacity(v.len());
        let mut rest = v;
        while let Some(at) = rest.find('\\') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if escaped_byte(after) {
                out.push('\u{FFFD}');
                rest = &after[3..];
            } else {
                out.push('\\');
                rest = after;
            }
        }
        out.push_str(rest);
        out
    };
    match (e.vr(), e.value()) {
        (VR::PN | VR::LO | VR::SH | VR::UC, Value::Primitive(PrimitiveValue::Strs(vs))) => {
            let mut values: Vec<String> = Vec::with_capacity(vs.len());
            for v in vs.iter() {
                match values.last_mut() {
                    Some(last) if escaped_byte(v) => {
                        last.push('\u{FFFD}');
                        last.push_str(&v[3..]);
                    }
                    _ => values.push(v.to_string()),
                }
            }
            let values: Vec<String> = values.iter().map(|v| mend(v)).collect();
            DataElement::new(e.tag(), e.vr(), PrimitiveValue::Strs(values.into()))
        }
        (
            VR::PN | VR::LO | VR::SH | VR::UC | VR::ST | VR::LT | VR::UT,
            Value::Primitive(PrimitiveValue::Str(v)),
        ) => DataElement::new(e.tag(), e.vr(), PrimitiveValue::from(mend(v))),
        (VR::ST | VR::LT | VR::UT, Value::Primitive(PrimitiveValue::Strs(vs))) => DataElement::new(
            e.tag(),
            e.vr(),
            PrimitiveValue::Strs(vs.iter().map(|v| mend(v)).collect()),
        ),
        (_, Value::Sequence(seq)) => {
            let items: Vec<InMemDicomObject> = seq
                .items()
                .iter()
                .map(|item| {
                    InMemDicomObject::from_element_iter(
                        item.iter().map(with_undecodable_bytes_replaced),
                    )
                })
                .collect();
            DataElement::new(e.tag(), e.vr(), DataSetSequence::from(items))
        }
        _ => e.clone(),
    }
}

pub(crate) fn rebuild(e: &InMemElement) -> InMemElement {
    let unpadded = |v: &str| v.trim_end_matches([' ', '\0']).to_string();
    match e.value() {
        Value::Primitive(PrimitiveValue::Str(v)) => {
            DataElement::new(e.tag(), e.vr(), PrimitiveValue::from(unpadded(v)))
        }
        Value::Primitive(PrimitiveValue::Strs(vs)) => DataElement::new(
            e.tag(),
            e.vr(),
            PrimitiveValue::Strs(vs.iter().map(|v| unpadded(v)).collect()),
        ),
        Value::Sequence(seq) => {
            let items: Vec<InMemDicomObject> = seq
                .items()
                .iter()
                .map(|item| InMemDicomObject::from_element_iter(item.iter().map(rebuild)))
                .collect();
            DataElement::new(e.tag(), e.vr(), DataSetSequence::from(items))
        }
        _ => e.clone(),
    }
}
