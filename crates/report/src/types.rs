//! The inputs of the report builders and their checks.

use crate::ReportError;

/// The classifier's verdict on the finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Pneumoconiosis present: `p_pneumoconiosis >= threshold`.
    Present,
    /// Pneumoconiosis absent: `p_pneumoconiosis < threshold`.
    Absent,
}

impl Decision {
    /// The decision the threshold rule gives (`p >= threshold` is present).
    pub fn from_threshold(p_pneumoconiosis: f64, threshold: f64) -> Decision {
        if p_pneumoconiosis >= threshold {
            Decision::Present
        } else {
            Decision::Absent
        }
    }

    /// "present" / "absent".
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Present => "present",
            Decision::Absent => "absent",
        }
    }
}

/// What the analysis of one image gave. Only a successful analysis is
/// reported: a failed one produces no SR (its reason stays on the job).
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisResult {
    /// Softmax output, in the model's label order.
    pub probabilities: Vec<f64>,
    /// Probability of pneumoconiosis, in [0, 1] (its column of
    /// `probabilities`).
    pub p_pneumoconiosis: f64,
    /// Decision threshold on `p_pneumoconiosis`, in [0, 1].
    pub threshold: f64,
    /// The decision; must agree with `p_pneumoconiosis` and `threshold`.
    pub decision: Decision,
    /// How the lungs were cropped before inference (e.g. `none`, `center`).
    pub crop_mode: String,
    /// ONNX Runtime execution provider that ran the model (e.g. `CPU`, `CUDA`).
    pub execution_provider: String,
    /// The part of the image the model saw, in pixels: columns x0..x1, rows
    /// y0..y1 (the lung box of a cropping model); `None`: the whole image.
    pub analysed_region: Option<PixelRegion>,
}

/// A rectangle of image pixels: columns `x0..x1`, rows `y0..y1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelRegion {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

impl AnalysisResult {
    /// Build a result from the softmax output in the contract's default
    /// label order (column 0 = pneumoconiosis) and the threshold; the
    /// decision follows the threshold rule.
    pub fn from_probabilities(
        probabilities: Vec<f64>,
        threshold: f64,
        crop_mode: impl Into<String>,
        execution_provider: impl Into<String>,
    ) -> Result<AnalysisResult, ReportError> {
        Self::with_pneumoconiosis_at(0, probabilities, threshold, crop_mode, execution_provider)
    }

    /// The same, the probability of pneumoconiosis being column
    /// `pneumoconiosis_index` (the contract's labels may come in any order).
    pub fn with_pneumoconiosis_at(
        pneumoconiosis_index: usize,
        probabilities: Vec<f64>,
        threshold: f64,
        crop_mode: impl Into<String>,
        execution_provider: impl Into<String>,
    ) -> Result<AnalysisResult, ReportError> {
        let p = *probabilities.get(pneumoconiosis_index).ok_or_else(|| {
            ReportError::InvalidResult(format!(
                "no probability in column {pneumoconiosis_index} (of {})",
                probabilities.len()
            ))
        })?;
        let r = AnalysisResult {
            decision: Decision::from_threshold(p, threshold),
            probabilities,
            p_pneumoconiosis: p,
            threshold,
            crop_mode: crop_mode.into(),
            execution_provider: execution_provider.into(),
            analysed_region: None,
        };
        r.validate()?;
        Ok(r)
    }

    /// Check ranges and the agreement of decision, probability and threshold.
    pub fn validate(&self) -> Result<(), ReportError> {
        let unit = |x: f64| x.is_finite() && (0.0..=1.0).contains(&x);
        if !unit(self.p_pneumoconiosis) {
            return Err(ReportError::InvalidResult(format!(
                "p_pneumoconiosis {} is not in [0, 1]",
                self.p_pneumoconiosis
            )));
        }
        if !unit(self.threshold) {
            return Err(ReportError::InvalidResult(format!(
                "threshold {} is not in [0, 1]",
                self.threshold
            )));
        }
        if let Some(bad) = self.probabilities.iter().find(|p| !unit(**p)) {
            return Err(ReportError::InvalidResult(format!(
                "probability {bad} is not in [0, 1]"
            )));
        }
        if self.decision != Decision::from_threshold(self.p_pneumoconiosis, self.threshold) {
            return Err(ReportError::InvalidResult(format!(
                "decision {} disagrees with p = {} and threshold = {}",
                self.decision.as_str(),
                self.p_pneumoconiosis,
                self.threshold
            )));
        }
        Ok(())
    }
}

/// Which weights the model carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsKind {
    /// Trained weights: results are meant to be read by a radiologist.
    Trained,
    /// Random demonstration weights: results mean nothing, and every report
    /// says so ("DEMO MODEL - NOT FOR DIAGNOSIS").
    RandomDemo,
}

impl WeightsKind {
    /// `trained` / `random-demo`, as in the model's metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightsKind::Trained => "trained",
            WeightsKind::RandomDemo => "random-demo",
        }
    }

    /// Parse `trained` / `random-demo` (also `demo`, `random`).
    pub fn parse(s: &str) -> Option<WeightsKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "trained" => Some(WeightsKind::Trained),
            "random-demo" | "random_demo" | "demo" | "random" => Some(WeightsKind::RandomDemo),
            _ => None,
        }
    }
}

/// Which model produced the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    /// Algorithm name, e.g. `PneumoLLM`.
    pub name: String,
    /// Algorithm version, e.g. `1.0.0`.
    pub version: String,
    /// Trained or random demonstration weights.
    pub weights_kind: WeightsKind,
    /// SHA-256 of the weights (the contract's `weights_sha256`), 64
    /// hexadecimal digits.
    pub sha256: String,
    /// SHA-256 of the model's whole contract (weights hash, labels,
    /// threshold, preprocessing, name, version): two models that can give
    /// an image different results differ here. The report's UIDs derive
    /// from it, never from the weights alone (a recalibrated threshold
    /// with the same weights is another result).
    pub contract_sha256: String,
    /// SHA-256 of the lung segmentation model whose box the classifier's
    /// input was cropped to, when it was: another segmentation model
    /// crops otherwise and gives another result (which kept the first
    /// one's report UID: the report the hospital held contradicted the
    /// API after a re-analysis).
    pub lung_segmentation_sha256: Option<String>,
}

impl ModelIdentity {
    /// `name version`, as series descriptions name the model.
    pub fn name_and_version(&self) -> String {
        format!("{} {}", self.name.trim(), self.version.trim())
    }

    /// `before` + `name version` + `after` in at most `max` characters
    /// (a Series Description's 64): a name too long is cut, marked "...",
    /// so that the version stays (two versions of one model would
    /// otherwise read alike in the viewer's series list); a version too
    /// long for that keeps its start and its end (where versions differ:
    /// "-rc3", a build number), its middle marked "...".
    pub fn described_within(&self, before: &str, after: &str, max: usize) -> String {
        let (name, version) = (self.name.trim(), self.version.trim());
        let full = format!("{before}{name} {version}{after}");
        let count = |s: &str| s.chars().count();
        if count(&full) <= max {
            return full;
        }
        // Room for "name version" between `before` and `after`.
        let room = max.saturating_sub(count(before) + count(after));
        let shown = if count(version) + " ...".len() < room {
            let keep = room - count(version) - " ...".len();
            format!("{}... {version}", first_chars(name, keep).trim_end())
        } else {
            // Both give way, the version keeping two thirds of the room or
            // all but a short name; a name left fewer letters than that
            // goes.
            let version_room = (room * 2 / 3).max(room.saturating_sub(SHORTEST_NAME + 1));
            let cut_version = middle_cut(version, version_room);
            let name_room = room.saturating_sub(count(&cut_version) + 1);
            if count(name) <= name_room {
                format!("{name} {cut_version}")
            } else if name_room >= SHORTEST_NAME / 2 {
                format!(
                    "{}... {cut_version}",
                    first_chars(name, name_room - 3).trim_end()
                )
            } else {
                middle_cut(version, room)
            }
        };
        first_chars(&format!("{before}{shown}{after}"), max).to_string()
    }

    /// What the report's UIDs derive from: the contract's SHA-256 in lower
    /// case, and `+lung-segmentation:` and that model's SHA-256 when the
    /// input was cropped to its box (a classifier without one keeps the
    /// UIDs it always had).
    pub fn uid_basis(&self) -> String {
        let contract = self.contract_sha256.trim().to_ascii_lowercase();
        match &self.lung_segmentation_sha256 {
            Some(seg) => format!(
                "{contract}+lung-segmentation:{}",
                seg.trim().to_ascii_lowercase()
            ),
            None => contract,
        }
    }

    /// Check the fields; returns [`Self::uid_basis`].
    pub fn validate(&self) -> Result<String, ReportError> {
        if self.name.trim().is_empty() {
            return Err(ReportError::InvalidModel("empty model name".into()));
        }
        if self.version.trim().is_empty() {
            return Err(ReportError::InvalidModel("empty model version".into()));
        }
        let seg = self.lung_segmentation_sha256.as_ref();
        for (what, value) in [
            ("SHA-256", Some(&self.sha256)),
            ("contract SHA-256", Some(&self.contract_sha256)),
            ("lung segmentation SHA-256", seg),
        ]
        .into_iter()
        .filter_map(|(what, value)| value.map(|v| (what, v)))
        {
            let v = value.trim();
            if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ReportError::InvalidModel(format!(
                    "{what} {value:?} is not 64 hexadecimal digits"
                )));
            }
        }
        Ok(self.uid_basis())
    }

    /// True for demonstration weights.
    pub fn is_demo(&self) -> bool {
        self.weights_kind == WeightsKind::RandomDemo
    }

    /// The Contribution Description of what the node made: `<name>
    /// <version> (<kind> weights) <did>`.
    pub(crate) fn contribution(&self, did: &str) -> String {
        format!(
            "{} {} ({} weights) {did}",
            self.name.trim(),
            self.version.trim(),
            self.weights_kind.as_str()
        )
    }
}

/// Who writes the report: this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node's AE title (also the Device Observer Name).
    pub ae_title: String,
    /// Manufacturer written in General Equipment, the observer context and
    /// Contributing Equipment.
    pub manufacturer: String,
    /// Product name of the node software (Manufacturer's Model Name).
    pub model_name: String,
    /// Version of the node software (Software Versions).
    pub software_version: String,
    /// Device UID of this node (Device Observer UID, Device UID).
    pub device_uid: String,
    /// Station Name (SH), when configured.
    pub station_name: Option<String>,
    /// Institution Name (LO), when configured.
    pub institution_name: Option<String>,
    /// Institutional Department Name (LO), when configured.
    pub institution_department: Option<String>,
    /// UID root for derived UIDs; `None` = the `2.25.` UUID form.
    pub uid_root: Option<String>,
}

/// The product name every object the node makes carries as Manufacturer's
/// Model Name: what tells the node its own report or companion image when
/// a PACS sends it back.
pub const PRODUCT: &str = "pneumo-node";

impl NodeIdentity {
    /// A node identity with the given AE title and device UID, the product
    /// name `pneumo-node` and this crate's version.
    pub fn new(ae_title: impl Into<String>, device_uid: impl Into<String>) -> NodeIdentity {
        NodeIdentity {
            ae_title: ae_title.into(),
            manufacturer: "pneumo-node".into(),
            model_name: PRODUCT.into(),
            software_version: env!("CARGO_PKG_VERSION").into(),
            device_uid: device_uid.into(),
            station_name: None,
            institution_name: None,
            institution_department: None,
            uid_root: None,
        }
    }

    /// Check the AE title, the device UID and the UID root.
    pub fn validate(&self) -> Result<(), ReportError> {
        let ae = self.ae_title.trim();
        if ae.is_empty()
            || ae.len() > 16
            || !ae.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
        {
            return Err(ReportError::InvalidNode(format!(
                "AE title {:?} is not 1 to 16 printable ASCII characters",
                self.ae_title
            )));
        }
        if !crate::uid::is_valid_uid(self.device_uid.trim()) {
            return Err(ReportError::InvalidNode(format!(
                "device UID {:?} is not a valid UID",
                self.device_uid
            )));
        }
        crate::uid::validate_uid_root(self.uid_root.as_deref())
    }
}

/// Which SR storage SOP class to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrSopClass {
    /// Comprehensive 3D SR Storage, 1.2.840.10008.5.1.4.1.1.88.34 (default).
    #[default]
    Comprehensive3D,
    /// Comprehensive SR Storage, 1.2.840.10008.5.1.4.1.1.88.33, for archives
    /// that refuse the 3D class. The content tree is the same (it has no 3D
    /// coordinates).
    Comprehensive,
}

impl SrSopClass {
    /// The SOP Class UID.
    pub fn uid(self) -> &'static str {
        match self {
            SrSopClass::Comprehensive3D => "1.2.840.10008.5.1.4.1.1.88.34",
            SrSopClass::Comprehensive => "1.2.840.10008.5.1.4.1.1.88.33",
        }
    }
}

/// Configuration of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOptions {
    /// SR storage class.
    pub sop_class: SrSopClass,
    /// Series Number of the SR series (default 9901: sorts after the
    /// acquired series in viewers, and is the same for every SR of the node).
    pub sr_series_number: i32,
    /// Series Number of the companion Secondary Capture series (default 9902).
    pub sc_series_number: i32,
    /// Series Number of the not-analysed notices' series (default 9903).
    pub notice_series_number: i32,
    /// Series Number of the notices as images, with `companion_sc`
    /// (default 9904).
    pub notice_sc_series_number: i32,
    /// Write the companion Secondary Capture image (default off). The
    /// builder does not look at this; the caller decides whether to call
    /// [`crate::build_companion_sc`].
    pub companion_sc: bool,
    /// Longest side of the companion image in pixels (default 1024).
    pub sc_max_size: u16,
    /// Send a notice (an SR, [`crate::build_not_analysed_sr`]) where an
    /// image's analysis failed (default on). The caller decides, as for
    /// `companion_sc`.
    pub not_analysed_notice: bool,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            sop_class: SrSopClass::Comprehensive3D,
            sr_series_number: 9901,
            sc_series_number: 9902,
            notice_series_number: 9903,
            notice_sc_series_number: 9904,
            companion_sc: false,
            sc_max_size: 1024,
            not_analysed_notice: true,
        }
    }
}

/// The moment the report is written (Content Date/Time, Instance Creation
/// Date/Time). The builders never read the clock: the caller passes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportTime {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub unix_seconds: i64,
    /// Microseconds within the second (0..1_000_000).
    pub micros: u32,
    /// Offset of the node's local time from UTC in minutes, used when the
    /// source has no Timezone Offset From UTC (then the times are written in
    /// this offset and no offset attribute is written, as the copied study
    /// times are the source's local times too).
    pub local_offset_minutes: i32,
}

impl ReportTime {
    /// The current time from the system clock, expressed in UTC.
    pub fn now_utc() -> ReportTime {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        ReportTime {
            unix_seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            micros: d.subsec_micros(),
            local_offset_minutes: 0,
        }
    }

    /// (DA `YYYYMMDD`, TM `HHMMSS.ffffff`) in the given UTC offset.
    pub fn format(&self, offset_minutes: i32) -> (String, String) {
        let secs = self
            .unix_seconds
            .saturating_add(i64::from(offset_minutes) * 60);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        (
            format!("{y:04}{m:02}{d:02}"),
            format!(
                "{:02}{:02}{:02}.{:06}",
                sod / 3600,
                (sod % 3600) / 60,
                sod % 60,
                self.micros.min(999_999)
            ),
        )
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parse a Timezone Offset From UTC value (`+HHMM` / `-HHMM`) into minutes.
pub(crate) fn parse_tz_offset(s: &str) -> Option<i32> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() != 5 || !(b[0] == b'+' || b[0] == b'-') || !b[1..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let h: i32 = s[1..3].parse().ok()?;
    let m: i32 = s[3..5].parse().ok()?;
    if h > 14 || m > 59 {
        return None;
    }
    let v = h * 60 + m;
    Some(if b[0] == b'-' { -v } else { v })
}

/// The most of a model's name kept where its version needs the room.
const SHORTEST_NAME: usize = 12;

/// The first `n` characters of `s`.
fn first_chars(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(at, _)| &s[..at])
}

/// `s` in at most `n` characters: its start and its end, "..." between.
fn middle_cut(s: &str, n: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= n {
        return s.to_string();
    }
    if n <= 3 {
        return chars[..n].iter().collect();
    }
    let tail = (n - 3) / 2;
    let head = n - 3 - tail;
    let (start, end): (String, String) = (
        chars[..head].iter().collect(),
        chars[chars.len() - tail..].iter().collect(),
    );
    format!("{start}...{end}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        // 2024-02-29T23:59:58Z
        let t = ReportTime {
            unix_seconds: 1_709_251_198,
            micros: 5,
            local_offset_minutes: 0,
        };
        assert_eq!(t.format(0), ("20240229".into(), "235958.000005".into()));
        assert_eq!(t.format(60), ("20240301".into(), "005958.000005".into()));
        assert_eq!(t.format(-240).0, "20240229");
        let epoch = ReportTime {
            unix_seconds: 0,
            micros: 0,
            local_offset_minutes: 0,
        };
        assert_eq!(epoch.format(-1).0, "19691231");
    }

    #[test]
    fn tz_offsets() {
        assert_eq!(parse_tz_offset("-0400"), Some(-240));
        assert_eq!(parse_tz_offset("+0530"), Some(330));
        assert_eq!(parse_tz_offset("0400"), None);
        assert_eq!(parse_tz_offset("+2500"), None);
    }

    #[test]
    fn result_checks() {
        let ok = AnalysisResult::from_probabilities(vec![0.8, 0.2], 0.5, "none", "CPU").unwrap();
        assert_eq!(ok.decision, Decision::Present);
        let mut bad = ok.clone();
        bad.decision = Decision::Absent;
        assert!(bad.validate().is_err());
        bad = ok.clone();
        bad.p_pneumoconiosis = f64::NAN;
        assert!(bad.validate().is_err());
        assert!(AnalysisResult::from_probabilities(vec![], 0.5, "", "").is_err());
        assert!(AnalysisResult::from_probabilities(vec![1.5, 0.0], 0.5, "", "").is_err());
    }
}
