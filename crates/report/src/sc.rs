//! The companion Secondary Capture image, for viewers without SR support:
//! the radiograph, downscaled, under a black banner with the result in
//! words.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileDicomObject, InMemDicomObject};

use crate::common::{self, put_empty, put_str};
use crate::content::{sequence, sop_reference};
use crate::font::{glyph, GLYPH_H, GLYPH_W};
use crate::sr::{instance_number, DEMO_MARK};
use crate::uid;
use crate::{
    AnalysisResult, ModelIdentity, NodeIdentity, ReportError, ReportOptions, ReportTime,
    SourceInstance,
};

/// A grey image as the imaging code gives it: row-major, `rows × columns`
/// values in [0, 1] for display (0 black, 1 white: windowed, and MONOCHROME1
/// already inverted). Values outside [0, 1] are clamped, NaN is black.
#[derive(Debug, Clone, Copy)]
pub struct GreyImage<'a> {
    pub pixels: &'a [f32],
    pub rows: usize,
    pub columns: usize,
}

/// An 8-bit grey raster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raster {
    pub rows: usize,
    pub columns: usize,
    pub data: Vec<u8>,
}

/// Shrink `img` (area average) so that its longer side is at most
/// `max_side`, with square pixels where the source's are `aspect` (height
/// over width) high, and quantise to 8 bits. Never enlarges: the longer
/// side of a pixel sets the size. (A 2:1 image kept on its own grid was
/// drawn squashed by viewers, the companion image having no aspect ratio.)
pub fn downscale(img: &GreyImage<'_>, max_side: usize, aspect: f64) -> Result<Raster, ReportError> {
    let (rows, cols) = (img.rows, img.columns);
    if rows == 0 || cols == 0 {
        return Err(ReportError::InvalidImage("empty image".into()));
    }
    if rows.checked_mul(cols) != Some(img.pixels.len()) {
        return Err(ReportError::InvalidImage(format!(
            "{} pixels given for {rows} x {cols}",
            img.pixels.len()
        )));
    }
    let max_side = max_side.max(16) as f64;
    // on square pixels the size of the source's longer side
    let aspect = if aspect.is_finite() && aspect > 0.0 {
        aspect
    } else {
        1.0
    };
    let (square_r, square_c) = if aspect >= 1.0 {
        (rows as f64, cols as f64 / aspect)
    } else {
        (rows as f64 * aspect, cols as f64)
    };
    let scale = (max_side / square_r.max(square_c)).min(1.0);
    let fit = |n: f64, whole: usize| (((n * scale) - 1e-9).ceil() as usize).clamp(1, whole);
    let (out_r, out_c) = (fit(square_r, rows), fit(square_c, cols));
    let mut sums = vec![0f64; out_r * out_c];
    let mut counts = vec![0u32; out_r * out_c];
    for y in 0..rows {
        let oy = y * out_r / rows;
        let row = &img.pixels[y * cols..(y + 1) * cols];
        for (x, v) in row.iter().enumerate() {
            let ox = x * out_c / cols;
            let v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
            sums[oy * out_c + ox] += f64::from(v);
            counts[oy * out_c + ox] += 1;
        }
    }
    let data = sums
        .iter()
        .zip(&counts)
        .map(|(s, n)| {
            let mean = if *n == 0 { 0.0 } else { s / f64::from(*n) };
            (mean * 255.0).round().clamp(0.0, 255.0) as u8
        })
        .collect();
    Ok(Raster {
        rows: out_r,
        columns: out_c,
        data,
    })
}

/// Body Part Examined terms of the chest and around it that PS3.16 Annex L
/// calls paired structures: their series needs a Laterality (Type 2C).
const PAIRED_BODY_PARTS: [&str; 8] = [
    "LUNG", "THORAX", "PLEURA", "BREAST", "RIB", "CLAVICLE", "SCAPULA", "SHOULDER",
];

/// Split `text` into lines of at most `width` characters, at spaces where
/// possible.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: String = word.to_string();
        while word.chars().count() > width {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            lines.push(head);
        }
        let need = if line.is_empty() { 0 } else { 1 } + word.chars().count();
        if line.chars().count() + need > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Put `image` under a black banner that carries `lines` in white. The font
/// scale follows the image width so that the text stays legible.
pub fn add_banner(image: &Raster, lines: &[String]) -> Raster {
    let cols = image.columns;
    let scale = (cols / 320).clamp(1, 6);
    let cell_w = (GLYPH_W + 1) * scale;
    let line_h = (GLYPH_H + 3) * scale;
    let margin = 2 * scale;
    let per_line = ((cols.saturating_sub(2 * margin)) / cell_w).max(1);
    let wrapped: Vec<String> = lines.iter().flat_map(|l| wrap(l, per_line)).collect();
    let banner_rows = 2 * margin + wrapped.len() * line_h;
    let mut data = vec![0u8; banner_rows * cols];
    for (li, line) in wrapped.iter().enumerate() {
        let top = margin + li * line_h + scale;
        for (ci, ch) in line.chars().enumerate() {
            let left = margin + ci * cell_w;
            for (gy, bits) in glyph(ch).iter().enumerate() {
                for gx in 0..GLYPH_W {
                    if bits & (1 << (GLYPH_W - 1 - gx)) == 0 {
                        continue;
                    }
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let y = top + gy * scale + dy;
                            let x = left + gx * scale + dx;
                            if y < banner_rows && x < cols {
                                data[y * cols + x] = 255;
                            }
                        }
                    }
                }
            }
        }
    }
    data.extend_from_slice(&image.data);
    Raster {
        rows: banner_rows + image.rows,
        columns: cols,
        data,
    }
}

/// The lines burned into the companion image.
pub fn banner_lines(
    result: &AnalysisResult,
    model: &ModelIdentity,
    source: &SourceInstance,
) -> Vec<String> {
    let mut lines = Vec::new();
    if model.is_demo() {
        lines.push(DEMO_MARK.to_string());
    }
    lines.push(format!(
        "AI RESULT: PNEUMOCONIOSIS {}",
        result.decision.as_str().to_uppercase()
    ));
    let (probability, threshold) = crate::sr::percentages_in_words(result);
    lines.push(format!(
        "PROBABILITY {probability}% (THRESHOLD {threshold}%)"
    ));
    let named = crate::sr::which_image(source, "SERIES", "IMAGE", "ACQUIRED");
    if !named.is_empty() {
        lines.push(format!("SOURCE: {}", named.join(" - ")));
    }
    // As the report says it: a viewer without SR shows this image beside
    // the one it replaces (which said there was no result).
    if let Some(earlier) = &source.replaces {
        lines.push(
            match earlier.because {
                crate::Replacement::Notice => {
                    "REPLACES THE EARLIER NOTICE THAT THIS IMAGE WAS NOT ANALYSED"
                }
                _ => "REPLACES THE RESULT OF AN EARLIER COPY OF THIS IMAGE",
            }
            .to_string(),
        );
    }
    lines.push(format!(
        "MODEL {} {} - NOT REVIEWED BY A PHYSICIAN",
        model.name.trim(),
        model.version.trim()
    ));
    if model.is_demo() {
        lines.push(DEMO_MARK.to_string());
    }
    lines
}

/// Instance Number of a companion image. A study's companion images share
/// one series, so the source's Instance Number alone repeated there (image
/// 1 of series 1 and image 1 of series 2): the source's Series Number
/// times 10,000 plus its Instance Number keeps them apart and in the
/// study's order (series 2 image 7 is 20007); where either is missing or
/// out of that range, the SR's rule. Deterministic, like the UIDs.
pub fn companion_instance_number(source: &SourceInstance) -> i32 {
    match (source.series_number, source.instance_number) {
        (Some(series), Some(image))
            if (1..=200_000).contains(&series) && (1..10_000).contains(&image) =>
        {
            series * 10_000 + image
        }
        _ => instance_number(source),
    }
}

/// Series Description of the companion image series.
pub fn sc_series_description(model: &ModelIdentity) -> String {
    crate::sr::series_description(model, "image - ", "AI pneumoconiosis image")
}

/// Build the companion Secondary Capture image of one analysed instance
/// (same study, its own series). Off by default: the caller calls this when
/// [`ReportOptions::companion_sc`] is set.
pub fn build_companion_sc(
    source: &SourceInstance,
    image: GreyImage<'_>,
    result: &AnalysisResult,
    model: &ModelIdentity,
    node: &NodeIdentity,
    options: &ReportOptions,
    time: &ReportTime,
) -> Result<FileDicomObject<InMemDicomObject>, ReportError> {
    node.validate()?;
    let sha = model.validate()?;
    result.validate()?;
    let root_uid = node.uid_root.as_deref();
    let sop_instance_uid =
        uid::sc_sop_instance_uid(&source.uid_key(), &node.ae_title, &sha, root_uid)?;
    // A study's companion images share a series; a copy naming another
    // patient or study than the first under its UID (corrected at the
    // modality) has its own, as its report has: a series names one
    // patient (one archive keying series by UID alone filed the corrected
    // patient's image under the first's).
    let study_key = match &source.corrected_copy {
        Some(version) => format!("{}#{}", source.study_instance_uid, version.trim()),
        None => source.study_instance_uid.clone(),
    };
    let series_uid = uid::sc_series_instance_uid(&node.ae_title, &study_key, &sha, root_uid)?;

    let small = downscale(
        &image,
        usize::from(options.sc_max_size),
        source.pixel_aspect.unwrap_or(1.0),
    )?;
    let raster = add_banner(&small, &banner_lines(result, model, source));
    // Viewers that overlay Image Comments show it without the banner: the
    // demo mark goes first there too.
    let comments = if model.is_demo() {
        format!("{DEMO_MARK}. {}", crate::sr::result_sentence(result))
    } else {
        crate::sr::result_sentence(result)
    };
    let image = ScImage {
        sop_instance_uid,
        series_instance_uid: series_uid,
        series_number: options.sc_series_number,
        series_description: sc_series_description(model),
        raster,
        derivation: "Downscaled copy of the analysed radiograph with the AI result burned in.",
        comments,
        contribution: model
            .contribution("result burned into a downscaled copy of the referenced image."),
    };
    image.build(source, model, node, time)
}

/// What tells one Secondary Capture of the node from another; the rest
/// comes from the source, the node and the model alike.
pub(crate) struct ScImage {
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub series_number: i32,
    pub series_description: String,
    pub raster: Raster,
    /// Derivation Description (the demo mark is added with demo weights).
    pub derivation: &'static str,
    pub comments: String,
    /// The Contributing Equipment's description.
    pub contribution: String,
}

impl ScImage {
    pub(crate) fn build(
        self,
        source: &SourceInstance,
        model: &ModelIdentity,
        node: &NodeIdentity,
        time: &ReportTime,
    ) -> Result<FileDicomObject<InMemDicomObject>, ReportError> {
        let sop_class_uid = uids::SECONDARY_CAPTURE_IMAGE_STORAGE;
        let sop_instance_uid = self.sop_instance_uid.as_str();
        let stamp = common::stamp(source, time);
        let raster = self.raster;
        let rows = u16::try_from(raster.rows)
            .map_err(|_| ReportError::InvalidImage(format!("{} rows is too many", raster.rows)))?;
        let columns = u16::try_from(raster.columns).map_err(|_| {
            ReportError::InvalidImage(format!("{} columns is too many", raster.columns))
        })?;

        let mut obj = common::base_dataset(
            source,
            node,
            &stamp,
            sop_class_uid,
            sop_instance_uid,
            "OT",
            &self.series_instance_uid,
            self.series_number,
            &self.series_description,
        );
        // General Series: Body Part Examined copied from the source, when it
        // has one (Type 3: left out rather than guessed; CHEST written on an
        // image the routing let through without a body part put a chest into
        // the record of a leg). Laterality (Type 2C) is there for a paired part,
        // or an unknown one (dciodvfy asks for it then): the source's R or L,
        // else empty (a chest shows both sides, and the series' Laterality has
        // no value for both).
        if let Some(body_part) = source.body_part_examined.as_deref() {
            put_str(&mut obj, tags::BODY_PART_EXAMINED, VR::CS, body_part);
        }
        let paired = source
            .body_part_examined
            .as_deref()
            .is_none_or(|part| PAIRED_BODY_PARTS.contains(&part));
        if paired {
            match source.series_laterality.as_deref() {
                Some(side) => put_str(&mut obj, tags::LATERALITY, VR::CS, side),
                None => put_empty(&mut obj, tags::LATERALITY, VR::CS),
            }
        }
        // SC Equipment
        put_str(&mut obj, tags::CONVERSION_TYPE, VR::CS, "WSD");
        // General Image
        put_str(
            &mut obj,
            tags::INSTANCE_NUMBER,
            VR::IS,
            companion_instance_number(source).to_string(),
        );
        match &source.patient_orientation {
            Some((r, c)) => obj.put(DataElement::new(
                tags::PATIENT_ORIENTATION,
                VR::CS,
                PrimitiveValue::Strs([r.clone(), c.clone()].as_slice().into()),
            )),
            None => {
                put_empty(&mut obj, tags::PATIENT_ORIENTATION, VR::CS);
                None
            }
        };
        // General Series (Type 3, as the SR has them): viewers' series lists
        // show the date beside the SR's.
        common::put_series_date_time(&mut obj, source);
        put_str(&mut obj, tags::CONTENT_DATE, VR::DA, stamp.date.clone());
        put_str(&mut obj, tags::CONTENT_TIME, VR::TM, stamp.time.clone());
        obj.put(DataElement::new(
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(
                ["DERIVED".to_string(), "SECONDARY".to_string()]
                    .as_slice()
                    .into(),
            ),
        ));
        put_str(
            &mut obj,
            tags::DERIVATION_DESCRIPTION,
            VR::ST,
            format!(
                "{} {}",
                self.derivation,
                if model.is_demo() { DEMO_MARK } else { "" }
            )
            .trim()
            .to_string(),
        );
        obj.put(sequence(
            tags::SOURCE_IMAGE_SEQUENCE,
            vec![sop_reference(
                &source.sop_class_uid,
                &source.sop_instance_uid,
            )],
        ));
        put_str(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
        put_str(&mut obj, tags::IMAGE_COMMENTS, VR::LT, self.comments);
        // Image Pixel
        obj.put(DataElement::new(
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            PrimitiveValue::from(1u16),
        ));
        put_str(
            &mut obj,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2",
        );
        obj.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(rows),
        ));
        obj.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(columns),
        ));
        obj.put(DataElement::new(
            tags::BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(8u16),
        ));
        obj.put(DataElement::new(
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(8u16),
        ));
        obj.put(DataElement::new(
            tags::HIGH_BIT,
            VR::US,
            PrimitiveValue::from(7u16),
        ));
        obj.put(DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ));
        let mut pixels = raster.data;
        if pixels.len() % 2 == 1 {
            pixels.push(0); // OB values have even length: one trailing pad byte
        }
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(pixels),
        ));
        // Contributing Equipment
        common::contributing_equipment(&mut obj, node, model, &stamp, &self.contribution);

        common::to_file(obj, source, sop_class_uid, sop_instance_uid, node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downscale_keeps_aspect_and_mean() {
        let px: Vec<f32> = (0..2000 * 1000)
            .map(|i| if i % 2 == 0 { 1.0 } else { 0.0 })
            .collect();
        let r = downscale(
            &GreyImage {
                pixels: &px,
                rows: 2000,
                columns: 1000,
            },
            500,
            1.0,
        )
        .unwrap();
        assert_eq!((r.rows, r.columns), (500, 250));
        assert!(r.data.iter().all(|v| (127..=128).contains(v)));
    }

    #[test]
    fn pixels_twice_as_high_as_wide_come_out_square() {
        let px = vec![0.5f32; 400 * 600];
        let image = GreyImage {
            pixels: &px,
            rows: 400,
            columns: 600,
        };
        // 400 rows of 0.2 mm, 600 columns of 0.1 mm: 80 x 60 mm
        let r = downscale(&image, 1024, 2.0).unwrap();
        assert_eq!((r.rows, r.columns), (400, 300));
        let r = downscale(&image, 200, 2.0).unwrap();
        assert_eq!((r.rows, r.columns), (200, 150));
        // and the other way: rows half as high
        let r = downscale(&image, 1024, 0.5).unwrap();
        assert_eq!((r.rows, r.columns), (200, 600));
    }

    #[test]
    fn downscale_refuses_bad_sizes() {
        let px = vec![0.5f32; 10];
        let bad = GreyImage {
            pixels: &px,
            rows: 3,
            columns: 3,
        };
        assert!(downscale(&bad, 100, 1.0).is_err());
        let empty = GreyImage {
            pixels: &[],
            rows: 0,
            columns: 0,
        };
        assert!(downscale(&empty, 100, 1.0).is_err());
    }

    #[test]
    fn wrapping() {
        assert_eq!(wrap("AB CD EF", 5), vec!["AB CD", "EF"]);
        assert_eq!(wrap("ABCDEFG", 3), vec!["ABC", "DEF", "G"]);
    }

    #[test]
    fn banner_has_white_text() {
        let img = Raster {
            rows: 10,
            columns: 400,
            data: vec![100; 4000],
        };
        let out = add_banner(&img, &["PRESENT 50%".to_string()]);
        assert!(out.rows > 10);
        let banner = &out.data[..(out.rows - 10) * 400];
        assert!(banner.contains(&255));
        assert_eq!(&out.data[(out.rows - 10) * 400..], &img.data[..]);
    }
}
