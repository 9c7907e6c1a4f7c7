//! The attributes the node needs from a received data set's header.

use std::path::Path;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};

use crate::cp246::rewrite_un_sequences;
use crate::{Incoming, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceHeader {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub modality: Option<String>,
    pub body_part_examined: Option<String>,
    pub view_position: Option<String>,
    /// Accession Number (0008,0050): how a radiologist's worklist names the
    /// study, for finding its jobs.
    pub accession_number: Option<String>,
    /// The patient's age in years at the study: Patient's Age (0010,1010),
    /// else Patient's Birth Date against the Study Date.
    pub patient_age_years: Option<f64>,
    /// Image Type (0008,0008), its values joined by `\`.
    pub image_type: Option<String>,
    /// Presentation Intent Type (0008,0068): FOR PRESENTATION or FOR
    /// PROCESSING (raw detector data, whatever the SOP class says).
    pub presentation_intent_type: Option<String>,
    /// Manufacturer's Model Name (0008,1090): the node's product name on
    /// objects it made itself.
    pub manufacturer_model_name: Option<String>,
    /// Conversion Type (0008,0064) of a Secondary Capture (DF: a digitised
    /// film; WSD: a workstation's capture, ...), upper case.
    pub conversion_type: Option<String>,
}

/// Attributes the store reads all come before (0020,0021), Patient
/// Orientation last: parsing stops there, so private groups and pixel data
/// further on are never parsed.
const HEADER_END: Tag = Tag(0x0020, 0x0021);

/// The product name the node writes on what it makes (Manufacturer's Model
/// Name, and in the Contributing Equipment's Software Versions).
const PRODUCT: &str = "pneumo-node";

/// The Source Application Entity Title (0002,0016) of a Part-10 file,
/// trimmed: the AE title of whoever wrote it (the node's own on what it
/// made, the sender's on what it received).
pub fn source_ae_title(path: &Path) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::io::BufReader::new(std::fs::File::open(path).ok()?);
    file.seek(SeekFrom::Start(128)).ok()?;
    let meta = dicom_object::meta::FileMetaTable::from_reader(&mut file).ok()?;
    meta.source_application_entity_title
        .map(|ae| ae.trim_matches(['\0', ' ']).to_string())
}

/// Whether a name is the product's, as a PACS may have rewritten it
/// ("PNEUMO-NODE", "pneumo-node 0.1.0").
pub fn is_product(name: &str) -> bool {
    name.trim().to_ascii_lowercase().starts_with(PRODUCT)
}

/// Whether an item of the Contributing Equipment Sequence names the
/// product in its Software Versions (which a PACS rewriting the General
/// Equipment leaves alone).
fn contributed_by_product(obj: &InMemDicomObject) -> bool {
    let Some(items) = obj
        .element_opt(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items())
    else {
        return false;
    };
    items.iter().any(|item| {
        item.element_opt(tags::SOFTWARE_VERSIONS)
            .ok()
            .flatten()
            .and_then(|e| e.to_multi_str().ok())
            .is_some_and(|versions| versions.iter().any(|v| is_product(v)))
    })
}

/// The descriptions that may name a body part or a lateral view when
/// nothing else does.
const DESCRIPTIONS: [(Tag, &str); 4] = [
    (tags::STUDY_DESCRIPTION, "Study Description"),
    (tags::SERIES_DESCRIPTION, "Series Description"),
    (tags::PROTOCOL_NAME, "Protocol Name"),
    (
        tags::ACQUISITION_DEVICE_PROCESSING_DESCRIPTION,
        "Acquisition Device Processing Description",
    ),
];

/// The descriptions present, as (attribute name, value).
fn descriptions(obj: &DefaultDicomObject) -> Vec<(&'static str, String)> {
    DESCRIPTIONS
        .iter()
        .filter_map(|(tag, name)| {
            let value = obj.element_opt(*tag).ok()??.to_str().ok()?;
            let value = value.trim_end_matches(['\0', ' ']).trim();
            (!value.is_empty()).then(|| (*name, value.to_string()))
        })
        .collect()
}

/// Past the View Code Sequence (0054,0220), read only without a View
/// Position.
const VIEW_CODE_END: Tag = Tag(0x0054, 0x0221);

/// The View Position term of the View Code Sequence, for a data set
/// without View Position; the header is read again that far, and what
/// cannot be read there leaves the view absent (the instance is not
/// refused for a part it did not need before).
fn coded_view(path: &Path) -> Option<String> {
    check_element_lengths(path, VIEW_CODE_END).ok()?;
    let obj = open_instance(path, Some(VIEW_CODE_END)).ok()?;
    crate::coded::view(&obj)
}

/// Refuses a Part-10 file whose element lengths (up to `stop`) cannot be
/// right, before a parser allocates what they claim.
pub fn check_element_lengths(path: &Path, stop: Tag) -> Result<(), StoreError> {
    let bad = |e: String| StoreError::Unparseable(e);
    let Some((mut file, encoding, size)) = data_set_reader(path).map_err(bad)? else {
        return Ok(()); // Deflated data sets are checked by inflation itself
    };
    crate::lengths::check(&mut file, encoding, size, stop).map_err(bad)
}

/// Checks a data set held in memory (`bytes`, in transfer syntax
/// `transfer_syntax`) as a received file's is: every length, delimiters,
/// nesting depth and element count, before a parser recurses into it (a
/// Storage Commitment request's). Deflated and unknown syntaxes are
/// refused: such a data set is never read from memory.
pub fn check_data_set_bytes(bytes: &[u8], transfer_syntax: &str) -> Result<(), String> {
    let syntax = transfer_syntax.trim_end_matches(['\0', ' ']);
    let (explicit_vr, big_endian) = match syntax {
        "1.2.840.10008.1.2" => (false, false),
        "1.2.840.10008.1.2.1" => (true, false),
        "1.2.840.10008.1.2.2" => (true, true),
        other => return Err(format!("a data set in memory is not read in {other}")),
    };
    let encoding = crate::lengths::Encoding {
        explicit_vr,
        big_endian,
        pixel_data: crate::lengths::PixelDataForm::Native,
    };
    crate::lengths::check(
        std::io::Cursor::new(bytes),
        encoding,
        bytes.len() as u64,
        Tag(0xFFFF, 0xFFFF),
    )
}

/// Refuses a Part-10 file whose data set does not end where its elements
/// say: a value, a sequence or the pixel data cut off (a sender that
/// stopped mid-instance but marked the last fragment as last). Checked
/// before the instance is acknowledged: a success status tells the sender
/// it may delete its copy.
pub fn check_whole_data_set(path: &Path) -> Result<(), StoreError> {
    check_element_lengths(path, Tag(0xFFFF, 0xFFFF))?;
    check_deflated_data_set(path)
}

/// A Deflated data set (PS3.5 A.5): the raw deflate stream after the meta
/// must inflate, and the inflated data set's lengths hold, as another
/// syntax's do (a cut one was acknowledged and stored unreadable). Two
/// passes over the stream: its inflated size first, which bounds the walk.
fn check_deflated_data_set(path: &Path) -> Result<(), StoreError> {
    let bad = |e: String| StoreError::Unparseable(e);
    let open = || -> Result<Option<flate2::read::DeflateDecoder<FileReader>>, String> {
        let (file, syntax, _) = open_data_set(path)?;
        Ok((syntax == DEFLATED).then(|| flate2::read::DeflateDecoder::new(file)))
    };
    let Some(mut stream) = open().map_err(bad)? else {
        return Ok(());
    };
    use std::io::Read;
    let size = std::io::copy(
        &mut (&mut stream).take(MAX_INFLATED + 1),
        &mut std::io::sink(),
    )
    .map_err(|e| bad(format!("the deflated data set does not inflate: {e}")))?;
    if size > MAX_INFLATED {
        return Err(bad(format!(
            "deflated data set inflates past {} MiB, the most this node reads \
             (a few hundred kilobytes of zeros inflate to a gigabyte: each read of the \
             header held it all in memory)",
            MAX_INFLATED >> 20
        )));
    }
    let stream = open()
        .map_err(bad)?
        .ok_or_else(|| bad("the file changed".into()))?;
    let encoding = crate::lengths::Encoding {
        explicit_vr: true,
        big_endian: false,
        pixel_data: crate::lengths::PixelDataForm::Native,
    };
    crate::lengths::check(
        crate::lengths::ForwardOnly::new(stream),
        encoding,
        size,
        Tag(0xFFFF, 0xFFFF),
    )
    .map_err(|e| bad(format!("the inflated data set: {e}")))
}

/// Deflated Explicit VR Little Endian.
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

/// Whose turn it is to hold a Deflated data set in memory on receipt.
static DEFLATED_IN_MEMORY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// For a Deflated data set, a turn (held until dropped) to read it on
/// receipt: its header is read by inflating it whole in memory (up to
/// [`MAX_INFLATED`], several copies), and six sent at once of 250 KB each
/// took 2 GB; one at a time, what many associations can make the node hold
/// is one data set's. Other syntaxes (read from the file as they go): none.
pub(crate) fn deflated_in_memory_turn(syntax: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    (syntax.trim_end_matches('\0') == DEFLATED)
        .then(|| DEFLATED_IN_MEMORY.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The largest inflated Deflated data set: a chest radiograph inflates to
/// tens of megabytes; this bounds what one association can make the node
/// hold in memory from a small upload.
pub const MAX_INFLATED: u64 = 256 << 20;

/// Removes File Meta Information elements (group 0002) from the start of a
/// received data set, where PS3.10 7.1 does not allow them (some senders
/// send a file's meta with its data set): readers take them for the file's
/// own, and a Transfer Syntax UID there made pydicom read the file as Big
/// Endian. The file is rewritten without them (fsync'd, renamed over it);
/// returns how many bytes were removed (0: none there, file untouched).
pub fn drop_meta_elements_from_data_set(path: &Path) -> Result<u64, StoreError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let bad = |e: String| StoreError::Unparseable(e);
    let Some((mut file, enc, size)) = data_set_reader(path).map_err(bad)? else {
        return Ok(0);
    };
    let start = file.stream_position().map_err(|e| bad(e.to_string()))?;
    let mut group = [0u8; 2];
    if file.read_exact(&mut group).is_err() {
        return Ok(0);
    }
    let group = if enc.big_endian {
        u16::from_be_bytes(group)
    } else {
        u16::from_le_bytes(group)
    };
    if group != 0x0002 {
        return Ok(0);
    }
    // Tags ascend: the group ends where the first element after it begins.
    file.seek(SeekFrom::Start(start))
        .map_err(|e| bad(e.to_string()))?;
    let end = crate::lengths::start_of(&mut file, enc, size, Tag(0x0003, 0x0000)).map_err(bad)?;
    if end == start {
        return Ok(0);
    }
    let io = |e: std::io::Error| {
        StoreError::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))
    };
    let cleaned = path.with_extension("meta-dropped");
    let mut out = std::fs::File::create(&cleaned).map_err(io)?;
    let mut source = std::fs::File::open(path).map_err(io)?;
    std::io::copy(&mut (&mut source).take(start), &mut out).map_err(io)?;
    source.seek(SeekFrom::Start(end)).map_err(io)?;
    std::io::copy(&mut source, &mut out).map_err(io)?;
    out.flush().map_err(io)?;
    out.sync_all().map_err(io)?;
    std::fs::rename(&cleaned, path).map_err(io)?;
    Ok(end - start)
}

type FileReader = std::io::BufReader<std::fs::File>;

/// The transfer syntax a Part-10 file's File Meta names.
pub(crate) fn file_transfer_syntax(path: &Path) -> Result<String, String> {
    open_data_set(path).map(|(_, syntax, _)| syntax)
}

/// The file positioned at its data set, its transfer syntax and the file's
/// size.
fn open_data_set(path: &Path) -> Result<(FileReader, String, u64), String> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| e.to_string())?);
    let size = file.get_ref().metadata().map_err(|e| e.to_string())?.len();
    file.seek(SeekFrom::Start(128)).map_err(|e| e.to_string())?;
    let meta =
        dicom_object::meta::FileMetaTable::from_reader(&mut file).map_err(|e| e.to_string())?;
    let syntax = meta.transfer_syntax().trim_end_matches('\0').to_string();
    Ok((file, syntax, size))
}

/// The file positioned at its data set, the data set's encoding and the
/// file's size; None for a Deflated data set (no raw walk possible).
fn data_set_reader(
    path: &Path,
) -> Result<Option<(FileReader, crate::lengths::Encoding, u64)>, String> {
    let (file, syntax, size) = open_data_set(path)?;
    let pixel_data = crate::lengths::PixelDataForm::of_syntax(&syntax);
    let encoding = match syntax.as_str() {
        "1.2.840.10008.1.2" => crate::lengths::Encoding {
            explicit_vr: false,
            big_endian: false,
            pixel_data,
        },
        "1.2.840.10008.1.2.2" => crate::lengths::Encoding {
            explicit_vr: true,
            big_endian: true,
            pixel_data,
        },
        DEFLATED => return Ok(None),
        // the rest are explicit little endian up to their (encapsulated) pixel data
        _ => crate::lengths::Encoding {
            explicit_vr: true,
            big_endian: false,
            pixel_data,
        },
    };
    Ok(Some((file, encoding, size)))
}

/// Text VRs whose values a Specific Character Set governs.
const CHARSET_TEXT_VRS: &[VR] = &[VR::PN, VR::LO, VR::SH, VR::LT, VR::ST, VR::UT, VR::UC];

/// When the data set's Specific Character Set uses ISO 2022 code extensions
/// or a single term dicom-rs does not know (`iso2022::decoded_here`), its
/// text values, nested ones included, are read again from the file's bytes
/// (up to `stop`) and decoded here (`iso2022`). (An item with a Specific
/// Character Set of its own is rare and read with the data set's.)
fn with_code_extensions_decoded(
    path: &Path,
    stop: Tag,
    mut obj: DefaultDicomObject,
) -> DefaultDicomObject {
    let Some(terms) = obj
        .element(tags::SPECIFIC_CHARACTER_SET)
        .ok()
        .and_then(|e| e.to_multi_str().ok())
        .map(|v| v.iter().map(|s| s.trim().to_string()).collect::<Vec<_>>())
        .filter(|t| crate::iso2022::decoded_here(t))
    else {
        return obj;
    };
    let raw = data_set_reader(path).and_then(|r| match r {
        Some((mut file, enc, size)) => {
            crate::lengths::values_of_vrs(&mut file, enc, size, stop, CHARSET_TEXT_VRS)
        }
        None => Ok(Vec::new()),
    });
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) => {
            tracing::warn!(error = %e, "text in ISO 2022 code extensions left as dicom-rs read it");
            return obj;
        }
    };
    for v in raw {
        let text = crate::iso2022::decode(&v.bytes, &terms, v.vr == VR::PN);
        let text = text.trim_end_matches(['\0', ' ']);
        let value = if matches!(v.vr, VR::LT | VR::ST | VR::UT) {
            PrimitiveValue::from(text.to_string())
        } else {
            PrimitiveValue::Strs(text.split('\\').map(|s| s.trim_end().to_string()).collect())
        };
        put_at(&mut obj, &v.path, DataElement::new(v.tag, v.vr, value));
    }
    obj
}

/// Puts `element` into the item `path` leads to (sequence tag, item index,
/// outermost first); nothing when the path is not in `obj`.
fn put_at(obj: &mut InMemDicomObject, path: &[(Tag, usize)], element: InMemElement) {
    let Some(((seq, index), rest)) = path.split_first() else {
        obj.put(element);
        return;
    };
    let Ok(mut sequence) = obj.take_element(*seq) else {
        return;
    };
    if let Some(item) = sequence.items_mut().and_then(|items| items.get_mut(*index)) {
        put_at(item, rest, element);
    }
    obj.put(sequence);
}

/// Opens a Part-10 file, its data set read up to `until` (whole when
/// `None`). A data set dicom-rs cannot parse because it holds a sequence
/// sent as UN of undefined length (CP-246) is rewritten in memory and
/// parsed again (see `cp246`); standard attributes sent as UN are read as
/// their dictionary VR (see `un_values`), and text in ISO 2022 code
/// extensions is decoded by the node (see `iso2022`); the file itself is
/// not changed.
/// Err is the parser's message.
pub fn open_instance(path: &Path, until: Option<Tag>) -> Result<DefaultDicomObject, String> {
    let stop = until.unwrap_or(tags::PIXEL_DATA);
    let options = || match until {
        Some(tag) => OpenFileOptions::new().read_until(tag),
        None => OpenFileOptions::new(),
    };
    // what a parsed data set still needs, however it was parsed
    let finish = |obj| with_code_extensions_decoded(path, stop, with_un_values_reinterpreted(obj));
    let first_error = match options().open_file(path) {
        Ok(obj) => return Ok(finish(obj)),
        Err(e) => e.to_string(),
    };
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let rewritten = (|| {
        // preamble, "DICM", then the File Meta group (its length first)
        let meta = bytes.get(128..)?;
        let table = dicom_object::meta::FileMetaTable::from_reader(meta).ok()?;
        let explicit_le = !matches!(
            table.transfer_syntax().trim_end_matches(['\0', ' ']),
            "1.2.840.10008.1.2" | "1.2.840.10008.1.2.2" | "1.2.840.10008.1.2.1.99"
        );
        let data_start = 132 + 12 + table.information_group_length as usize;
        let data = rewrite_un_sequences(bytes.get(data_start..)?).ok()??;
        explicit_le.then(|| [&bytes[128..data_start], &data[..]].concat())
    })();
    match rewritten {
        Some(file) => options()
            .from_reader(&file[..])
            .map(finish)
            .map_err(|e| format!("{first_error} (and after rewriting CP-246 sequences: {e})")),
        None => Err(first_error),
    }
}

fn with_un_values_reinterpreted(mut obj: DefaultDicomObject) -> DefaultDicomObject {
    // UN values are read as little endian: not in the (retired) big endian syntax
    if obj.meta().transfer_syntax().trim_end_matches('\0') != "1.2.840.10008.1.2.2" {
        crate::un_values::reinterpret_un_values(&mut obj);
    }
    obj
}

/// An AS value ("045Y", "006M", "003W", "010D": PS3.5 6.2) in years; a
/// bare number ("12", written by some systems against the VR) is years.
/// "000Y", which many systems write for an age they do not know, is none
/// (a newborn's is given in days, weeks or months).
fn age_string_years(age: &str) -> Option<f64> {
    let age = age.trim();
    if age == "000Y" {
        return None;
    }
    let (number, per_year) = match age.char_indices().last()? {
        (i, unit) if unit.is_ascii_alphabetic() => {
            let per_year = match unit.to_ascii_uppercase() {
                'Y' => 1.0,
                'M' => 12.0,
                'W' => 52.1775,
                'D' => 365.25,
                _ => return None,
            };
            (&age[..i], per_year)
        }
        _ => (age, 1.0),
    };
    let number = number.trim();
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(number.parse::<f64>().ok()? / per_year)
}

/// A DA value (YYYYMMDD; the old YYYY.MM.DD and the ISO YYYY-MM-DD forms
/// too) as (year, month, day). A birth date (`birth`) of a year alone
/// ("1975", against the VR: some registries know no more) is the year's
/// first day, as registries record an unknown birthday; a date counted to
/// may be a DT, whose date is taken.
fn calendar_day(da: &str, birth: bool) -> Option<(i32, u32, u32)> {
    let digits: String = da.chars().filter(char::is_ascii_digit).collect();
    let (y, m, d) = match digits.len() {
        8 => (
            digits[..4].parse().ok()?,
            digits[4..6].parse().ok()?,
            digits[6..].parse().ok()?,
        ),
        4 if birth && da.trim().len() == 4 => (digits.parse().ok()?, 1, 1),
        // a date-time (DT) counted to: its date
        n if n > 8 && !birth => (
            digits[..4].parse().ok()?,
            digits[4..6].parse().ok()?,
            digits[6..8].parse().ok()?,
        ),
        _ => return None,
    };
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((y, m, d))
}

/// The age in years on DA `on` of a patient born on DA `born`: the
/// completed years (a birthday counts from its day), plus the part of the
/// year since the last birthday; none when either is unreadable or `on`
/// comes first.
fn years_between(born: &str, on: &str) -> Option<f64> {
    let (by, bm, bd) = calendar_day(born, true)?;
    let (oy, om, od) = calendar_day(on, false)?;
    let before_birthday = (om, od) < (bm, bd);
    let completed = oy - by - i32::from(before_birthday);
    if completed < 0 {
        return None;
    }
    // days since the last birthday, by 31-day months: under a year, so
    // the completed years are never rounded up
    let month_days = |m: u32, d: u32| i64::from(m) * 31 + i64::from(d);
    let mut since = month_days(om, od) - month_days(bm, bd);
    if before_birthday {
        since += 12 * 31;
    }
    Some(f64::from(completed) + since as f64 / (12.0 * 31.0 + 1.0))
}

/// The dates a patient's age is counted to, most telling first: Study
/// Date is Type 2 and may be empty, while the image's own dates are there.
const AGE_REFERENCE_DATES: [Tag; 4] = [
    tags::STUDY_DATE,
    tags::SERIES_DATE,
    tags::ACQUISITION_DATE,
    tags::CONTENT_DATE,
];

impl InstanceHeader {
    /// Parses the header of a Part-10 file, after checking that no element
    /// claims more bytes than the file has (see `lengths`).
    pub fn read(path: &Path) -> Result<InstanceHeader, StoreError> {
        check_element_lengths(path, HEADER_END)?;
        let obj = open_instance(path, Some(HEADER_END)).map_err(StoreError::Unparseable)?;
        let mut header = Self::from_object(&obj)?;
        if header.view_position.is_none() {
            let orientation = obj
                .element_opt(tags::PATIENT_ORIENTATION)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok().map(|s| s.to_string()))
                .unwrap_or_default();
            header.view_position = coded_view(path)
                .or_else(|| crate::described::lateral_from_orientation(&orientation))
                .or_else(|| {
                    // the image's orientation, where it is frontal, over words
                    if crate::described::frontal_orientation(&orientation) {
                        return None;
                    }
                    let described = descriptions(&obj);
                    crate::described::lateral_in_descriptions(
                        described.iter().map(|(n, v)| (*n, v.as_str())),
                    )
                });
        }
        Ok(header)
    }

    pub fn from_object(obj: &DefaultDicomObject) -> Result<InstanceHeader, StoreError> {
        let text = |tag| -> Option<String> {
            obj.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let required = |tag, name: &str| {
            text(tag).ok_or_else(|| StoreError::Unparseable(format!("{name} is missing or empty")))
        };
        Ok(InstanceHeader {
            sop_class_uid: required(tags::SOP_CLASS_UID, "SOP Class UID")?,
            sop_instance_uid: required(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
            study_instance_uid: required(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            series_instance_uid: required(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
            modality: text(tags::MODALITY),
            body_part_examined: text(tags::BODY_PART_EXAMINED)
                .or_else(|| crate::coded::body_part(obj))
                .or_else(|| {
                    let described = descriptions(obj);
                    crate::described::body_part_in_descriptions(
                        described.iter().map(|(n, v)| (*n, v.as_str())),
                    )
                }),
            // (its coded form lies past the header: `read` looks for it)
            view_position: text(tags::VIEW_POSITION),
            accession_number: text(tags::ACCESSION_NUMBER),
            image_type: text(tags::IMAGE_TYPE),
            presentation_intent_type: text(tags::PRESENTATION_INTENT_TYPE)
                .map(|t| t.to_ascii_uppercase()),
            conversion_type: text(tags::CONVERSION_TYPE).map(|t| t.to_ascii_uppercase()),
            // the product's, where a PACS rewrote it but not the
            // Contributing Equipment
            manufacturer_model_name: match text(tags::MANUFACTURER_MODEL_NAME) {
                named if named.as_deref().is_some_and(is_product) => named,
                _ if contributed_by_product(obj) => Some(PRODUCT.to_string()),
                named => named,
            },
            patient_age_years: text(tags::PATIENT_AGE)
                .and_then(|age| age_string_years(&age))
                .or_else(|| {
                    let born = text(tags::PATIENT_BIRTH_DATE)?;
                    AGE_REFERENCE_DATES
                        .iter()
                        .filter_map(|tag| text(*tag))
                        .chain(text(tags::ACQUISITION_DATE_TIME))
                        .find_map(|on| years_between(&born, &on))
                }),
        })
    }

    /// The data set must be the instance the C-STORE request announced.
    /// Whether this is a report or companion image a node made: its
    /// Manufacturer's Model Name (or, where a PACS rewrote that, its
    /// Contributing Equipment) is the product's.
    pub fn made_by_the_product(&self) -> bool {
        self.manufacturer_model_name
            .as_deref()
            .is_some_and(is_product)
    }

    pub fn check_against(&self, incoming: &Incoming) -> Result<(), StoreError> {
        if self.sop_instance_uid != incoming.sop_instance_uid {
            // What differs first: the sender's Error Comment holds 64
            // characters, and "differ" came after both UIDs, cut off.
            return Err(StoreError::Mismatch(format!(
                "SOP Instance UIDs differ: data set's {}, request's {}",
                self.sop_instance_uid, incoming.sop_instance_uid
            )));
        }
        if self.sop_class_uid != incoming.sop_class_uid {
            return Err(StoreError::Mismatch(format!(
                "SOP Class UIDs differ: data set's {}, request's {}",
                self.sop_class_uid, incoming.sop_class_uid
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod age_tests {
    use super::*;

    #[test]
    fn ages_in_every_unit_and_from_dates() {
        assert_eq!(age_string_years("045Y"), Some(45.0));
        assert_eq!(age_string_years("018M"), Some(1.5));
        assert!(age_string_years("010D").is_some_and(|y| y < 0.03));
        assert!(age_string_years("003W").is_some_and(|y| y < 0.06));
        assert_eq!(age_string_years("45"), Some(45.0));
        assert_eq!(age_string_years(" 012 "), Some(12.0));
        assert_eq!(age_string_years("12X"), None);
        assert_eq!(age_string_years("1.5Y"), None);
        assert_eq!(age_string_years("000Y"), None);
        assert_eq!(age_string_years("000D"), Some(0.0));
        assert_eq!(age_string_years("Y"), None);
        assert_eq!(age_string_years(""), None);
        let y = years_between("19800615", "20261129").unwrap();
        assert!((46.4..46.5).contains(&y), "{y}");
        assert!(years_between("2024.01.01", "20261129").is_some_and(|y| y < 3.0));
        assert_eq!(years_between("20300101", "20261129"), None);
        assert_eq!(years_between("unknown", "20261129"), None);
        // the day before the sixteenth birthday, and the birthday itself
        assert!(years_between("20101121", "20261120").is_some_and(|y| y < 16.0));
        assert!(years_between("20101121", "20261121").is_some_and(|y| y >= 16.0));
        assert!(years_between("20100131", "20260130").is_some_and(|y| y < 16.0));
        assert!(years_between("20101231", "20261230").is_some_and(|y| (15.99..16.0).contains(&y)));
        // a year alone is its first day, for a birth date only
        assert!(years_between("2016", "20261120").is_some_and(|y| (10.8..11.0).contains(&y)));
        assert_eq!(years_between("19800615", "2026"), None);
        // dates in the old or ISO forms, and a date-time, counted to
        for on in [
            "2020-01-01",
            "2020.01.01",
            "20200101120000",
            "2020-01-01T12:00:00",
        ] {
            assert!(
                years_between("20100101", on).is_some_and(|y| (10.0..10.01).contains(&y)),
                "{on}"
            );
        }
    }
}
