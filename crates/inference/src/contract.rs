//! The model contract (version 1): the `pneumo.*` keys of the ONNX model's
//! `metadata_props`, exactly as docs/model-contract.md lists them.

use pneumo_imaging::{CropMode, OutputDType, PreprocessSpec};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::ContractError;

/// How close to 0 or 1 `pneumo.decision_threshold` may be: the report
/// writes it as a percentage of at most six decimals.
const MIN_THRESHOLD: f64 = 1e-6;

/// Every key of contract version 1, in the documentation's order.
pub const CONTRACT_KEYS: [&str; 28] = [
    "pneumo.contract_version",
    "pneumo.model_name",
    "pneumo.model_version",
    "pneumo.model_config",
    "pneumo.weights_kind",
    "pneumo.weights_sha256",
    "pneumo.weights_sha256_method",
    "pneumo.precision",
    "pneumo.input_name",
    "pneumo.input_shape",
    "pneumo.input_dtype",
    "pneumo.input_layout",
    "pneumo.output_name",
    "pneumo.output_shape",
    "pneumo.output_dtype",
    "pneumo.output_kind",
    "pneumo.labels",
    "pneumo.positive_label",
    "pneumo.score_function",
    "pneumo.decision_threshold",
    "pneumo.input_size",
    "pneumo.color_mode",
    "pneumo.input_range",
    "pneumo.mean",
    "pneumo.std",
    "pneumo.resize_filter",
    "pneumo.resize_mode",
    "pneumo.crop_mode",
];

/// `pneumo.weights_sha256` of the bundled demo model's random weights
/// (fixtures/models/pneumollm-tiny.onnx, and its fp16 form).
pub const DEMO_WEIGHTS_SHA256: [&str; 2] = [
    "3b2ea30cd644c67192f18883769d0abced6670e48a619e0777b97769ffe03a00",
    "d93500ad9de612556f8b3be415e10e848452f4f19a222d3033e7e0586b714b17",
];

/// The warning every output of a demo model carries.
pub const DEMO_WARNING: &str = "DEMO MODEL - NOT FOR DIAGNOSIS";

/// `pneumo.weights_kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightsKind {
    Trained,
    RandomDemo,
}

impl WeightsKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            WeightsKind::Trained => "trained",
            WeightsKind::RandomDemo => "random-demo",
        }
    }
}

/// Element type of the model input (`pneumo.input_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputDType {
    Float32,
    Float16,
}

/// One dimension of a shape in the contract: `"batch"` or a size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Dim {
    Named(String),
    Fixed(i64),
}

/// The label whose probability the node reports (`pneumo.positive_label`).
pub const PNEUMOCONIOSIS_LABEL: &str = "pneumoconiosis";

/// A model's contract, parsed and checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelContract {
    pub contract_version: u32,
    pub model_name: String,
    pub model_version: String,
    pub model_config: String,
    pub weights_kind: WeightsKind,
    pub weights_sha256: String,
    pub weights_sha256_method: String,
    pub precision: String,
    pub input_name: String,
    pub input_shape: Vec<Dim>,
    pub input_dtype: InputDType,
    pub input_layout: String,
    pub output_name: String,
    pub output_shape: Vec<Dim>,
    pub output_dtype: String,
    pub output_kind: String,
    pub labels: Vec<String>,
    pub positive_label: String,
    /// Index of `positive_label` in `labels`.
    pub positive_index: usize,
    pub score_function: String,
    pub decision_threshold: f64,
    pub input_size: u32,
    pub color_mode: String,
    pub input_range: [f32; 2],
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub resize_filter: String,
    pub resize_mode: String,
    pub crop_mode: CropMode,
    /// SHA-256 (hex) of the contract as the model states it: every key of
    /// [`CONTRACT_KEYS`] and its value, in that order. Two models that can
    /// give an image different results (other weights, threshold, labels,
    /// preprocessing) differ here; the report's UIDs derive from it.
    pub contract_sha256: String,
}

/// Names are written into reports and printed to terminals: a control
/// character (an escape sequence, a newline, NUL) or a direction override
/// there drove the terminal, broke the SR's text (dciodvfy errors) or
/// reversed a viewer's line, and NUL made two contracts hash alike.
const CONTROL_CHARACTER: &str =
    "holds a control or text-direction character: names go into reports and terminals as written";

fn is_control_or_direction(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // direction marks and overrides
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
            // invisible: soft hyphen, zero-width, line and paragraph
            // separators, word joiner and invisible operators, BOM, tags
            | '\u{00AD}' | '\u{200B}'..='\u{200D}' | '\u{2028}' | '\u{2029}'
            | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{E0000}'..='\u{E007F}'
        )
}

fn bad(key: &'static str, value: &str, expected: impl Into<String>) -> ContractError {
    ContractError::InvalidValue {
        key,
        value: value.to_string(),
        expected: expected.into(),
    }
}

fn exact(key: &'static str, value: &str, allowed: &[&str]) -> Result<String, ContractError> {
    if allowed.contains(&value) {
        Ok(value.to_string())
    } else {
        Err(bad(key, value, format!("expected one of {allowed:?}")))
    }
}

fn json<T: serde::de::DeserializeOwned>(
    key: &'static str,
    value: &str,
    what: &str,
) -> Result<T, ContractError> {
    serde_json::from_str(value).map_err(|_| bad(key, value, format!("expected JSON {what}")))
}

fn shape(key: &'static str, value: &str) -> Result<Vec<Dim>, ContractError> {
    let raw: Vec<serde_json::Value> = json(key, value, "list of sizes and \"batch\"")?;
    raw.into_iter()
        .map(|d| match d {
            serde_json::Value::String(s) => Ok(Dim::Named(s)),
            serde_json::Value::Number(n) => n
                .as_i64()
                .filter(|v| *v > 0)
                .map(Dim::Fixed)
                .ok_or_else(|| bad(key, value, "sizes must be positive integers")),
            _ => Err(bad(key, value, "sizes must be integers or \"batch\"")),
        })
        .collect()
}

fn floats<const N: usize>(key: &'static str, value: &str) -> Result<[f32; N], ContractError> {
    let v: Vec<f32> = json(key, value, &format!("list of {N} numbers"))?;
    let arr: [f32; N] = v
        .try_into()
        .map_err(|_| bad(key, value, format!("expected {N} numbers")))?;
    if arr.iter().any(|x| !x.is_finite()) {
        return Err(bad(key, value, "numbers must be finite"));
    }
    Ok(arr)
}

impl ModelContract {
    /// Parses the contract from the model's metadata (`get` returns the
    /// value of a custom metadata key). The first missing key is named.
    pub fn from_metadata(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<ModelContract, ContractError> {
        let mut values = Vec::with_capacity(CONTRACT_KEYS.len());
        for key in CONTRACT_KEYS {
            values.push(get(key).ok_or(ContractError::MissingKey { key })?);
        }
        let v = |key: &'static str| -> &str {
            let i = CONTRACT_KEYS.iter().position(|k| *k == key).unwrap_or(0);
            values[i].as_str()
        };

        let k = "pneumo.contract_version";
        if v(k) != "1" {
            return Err(bad(k, v(k), "this node knows contract version 1 only"));
        }
        let k = "pneumo.weights_kind";
        let weights_kind = match v(k) {
            "trained" => WeightsKind::Trained,
            "random-demo" => WeightsKind::RandomDemo,
            other => return Err(bad(k, other, "expected trained or random-demo")),
        };
        let k = "pneumo.weights_sha256";
        let sha = v(k);
        if sha.len() != 64 || !sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad(k, sha, "expected 64 lowercase hex digits"));
        }
        // The bundled demo's random weights stay a demo whatever the
        // metadata says: relabelled `trained`, every DEMO marking was gone.
        if weights_kind == WeightsKind::Trained && DEMO_WEIGHTS_SHA256.contains(&sha) {
            return Err(bad(
                "pneumo.weights_kind",
                v("pneumo.weights_kind"),
                "these are the bundled demo model's random weights (pneumo.weights_sha256): expected random-demo",
            ));
        }
        let k = "pneumo.input_dtype";
        let input_dtype = match v(k) {
            "float32" => InputDType::Float32,
            "float16" => InputDType::Float16,
            other => return Err(bad(k, other, "expected float32 or float16")),
        };
        let precision = exact("pneumo.precision", v("pneumo.precision"), &["fp32", "fp16"])?;
        let k = "pneumo.input_size";
        let input_size: u32 = v(k)
            .parse()
            .ok()
            .filter(|s| (1..=8192).contains(s))
            .ok_or_else(|| bad(k, v(k), "expected a size in pixels, 1 to 8192"))?;
        let k = "pneumo.input_shape";
        let input_shape = shape(k, v(k))?;
        let s = i64::from(input_size);
        match input_shape.as_slice() {
            [Dim::Named(b), Dim::Fixed(3), Dim::Fixed(h), Dim::Fixed(w)]
                if b == "batch" && *h == s && *w == s => {}
            _ => {
                return Err(bad(
                    k,
                    v(k),
                    format!("expected [\"batch\",3,{s},{s}] (NCHW, pneumo.input_size {s})"),
                ))
            }
        }
        let k = "pneumo.labels";
        let labels: Vec<String> = json(k, v(k), "list of strings")?;
        if labels.len() < 2 {
            return Err(bad(k, v(k), "expected at least two labels"));
        }
        if labels.iter().any(|l| l.trim().is_empty()) {
            return Err(bad(k, v(k), "a label is empty: each names its class"));
        }
        if labels
            .iter()
            .any(|l| l.chars().any(is_control_or_direction))
        {
            return Err(bad(k, &v(k).escape_debug().to_string(), CONTROL_CHARACTER));
        }
        let k = "pneumo.output_shape";
        let output_shape = shape(k, v(k))?;
        match output_shape.as_slice() {
            [Dim::Named(b), Dim::Fixed(n)] if b == "batch" && *n as usize == labels.len() => {}
            _ => {
                return Err(bad(
                    k,
                    v(k),
                    format!(
                        "expected [\"batch\",{}] (one column per label)",
                        labels.len()
                    ),
                ))
            }
        }
        if let Some(twice) = labels
            .iter()
            .enumerate()
            .find_map(|(i, l)| labels[..i].contains(l).then_some(l))
        {
            return Err(bad(
                "pneumo.labels",
                v("pneumo.labels"),
                format!("the label `{twice}` comes twice"),
            ));
        }
        let k = "pneumo.positive_label";
        let positive_index = labels
            .iter()
            .position(|l| l == v(k))
            .ok_or_else(|| bad(k, v(k), format!("expected one of the labels {labels:?}")))?;
        // The report's finding is pneumoconiosis, present or absent: the
        // probability compared with the threshold must be that one.
        if labels[positive_index] != PNEUMOCONIOSIS_LABEL {
            return Err(bad(
                k,
                v(k),
                format!("expected `{PNEUMOCONIOSIS_LABEL}`: the node reports whether pneumoconiosis is present"),
            ));
        }
        // 0 would make every image positive, 1 almost none: neither is a
        // decision, nor is a threshold closer to them than the report's
        // percentages can show (1e-300 read "threshold 0%").
        let k = "pneumo.decision_threshold";
        let decision_threshold: f64 = v(k)
            .parse()
            .ok()
            .filter(|t: &f64| (MIN_THRESHOLD..=1.0 - MIN_THRESHOLD).contains(t))
            .ok_or_else(|| {
                bad(
                    k,
                    v(k),
                    "expected a number from 0.000001 to 0.999999 (0 or 1, or closer to them, \
                     decides every image alike)",
                )
            })?;
        let k = "pneumo.input_range";
        let input_range = floats::<2>(k, v(k))?;
        if input_range != [0.0, 1.0] {
            return Err(bad(k, v(k), "this node scales to [0.0,1.0] only"));
        }
        // Mean and std are on the scale of the input range, [0, 1]: values on
        // the 0-255 scale (124, 116, 104) would normalise every image to
        // about -2 without an error anywhere.
        let k = "pneumo.mean";
        let mean = floats::<3>(k, v(k))?;
        if mean.iter().any(|x| !(0.0..=1.0).contains(x)) {
            return Err(bad(
                k,
                v(k),
                "means must lie in the input range [0.0,1.0] (not on a 0-255 scale)",
            ));
        }
        let k = "pneumo.std";
        let std = floats::<3>(k, v(k))?;
        // Dividing by less than 0.001 overflows nothing in f32 but blows a
        // 1/255 step up past anything a network was trained on (1e-40
        // gave an input of infinities, every image "not finite").
        if std.iter().any(|x| !(0.001..=1.0).contains(x)) {
            return Err(bad(
                k,
                v(k),
                "standard deviations must lie in [0.001,1] (the input range is [0.0,1.0])",
            ));
        }
        for k in [
            "pneumo.model_name",
            "pneumo.model_version",
            "pneumo.model_config",
        ] {
            if v(k).chars().any(is_control_or_direction) {
                return Err(bad(k, &v(k).escape_debug().to_string(), CONTROL_CHARACTER));
            }
        }
        for k in ["pneumo.model_name", "pneumo.model_version"] {
            if v(k).trim().is_empty() {
                return Err(bad(
                    k,
                    v(k),
                    "must not be empty: the reports name the model and its version",
                ));
            }
        }
        let k = "pneumo.crop_mode";
        let crop_mode: CropMode = v(k)
            .parse()
            .map_err(|_| bad(k, v(k), "expected none or lung-box"))?;

        let mut stated = Sha256::new();
        for (key, value) in CONTRACT_KEYS.iter().zip(&values) {
            stated.update(key.as_bytes());
            stated.update(b"\0");
            stated.update(value.as_bytes());
            stated.update(b"\0");
        }
        let contract_sha256 = hex::encode(stated.finalize());
        Ok(ModelContract {
            contract_sha256,
            contract_version: 1,
            model_name: v("pneumo.model_name").to_string(),
            model_version: v("pneumo.model_version").to_string(),
            model_config: v("pneumo.model_config").to_string(),
            weights_kind,
            weights_sha256: sha.to_string(),
            weights_sha256_method: exact(
                "pneumo.weights_sha256_method",
                v("pneumo.weights_sha256_method"),
                &["pneumo-state-dict-v1"],
            )?,
            precision,
            input_name: v("pneumo.input_name").to_string(),
            input_shape,
            input_dtype,
            input_layout: exact("pneumo.input_layout", v("pneumo.input_layout"), &["NCHW"])?,
            output_name: v("pneumo.output_name").to_string(),
            output_shape,
            output_dtype: exact(
                "pneumo.output_dtype",
                v("pneumo.output_dtype"),
                &["float32"],
            )?,
            output_kind: exact("pneumo.output_kind", v("pneumo.output_kind"), &["logits"])?,
            positive_label: labels[positive_index].clone(),
            labels,
            positive_index,
            score_function: exact(
                "pneumo.score_function",
                v("pneumo.score_function"),
                &["softmax"],
            )?,
            decision_threshold,
            input_size,
            color_mode: exact(
                "pneumo.color_mode",
                v("pneumo.color_mode"),
                &["grey-to-rgb"],
            )?,
            input_range,
            mean,
            std,
            resize_filter: exact(
                "pneumo.resize_filter",
                v("pneumo.resize_filter"),
                &["bilinear-antialias"],
            )?,
            resize_mode: exact("pneumo.resize_mode", v("pneumo.resize_mode"), &["stretch"])?,
            crop_mode,
        })
    }

    /// True for a model with random demo weights.
    pub fn is_demo(&self) -> bool {
        self.weights_kind == WeightsKind::RandomDemo
    }

    /// The pre-processing this model expects.
    pub fn preprocess_spec(&self) -> PreprocessSpec {
        PreprocessSpec {
            width: self.input_size,
            height: self.input_size,
            mean: self.mean,
            std: self.std,
            crop: self.crop_mode,
            dtype: match self.input_dtype {
                InputDType::Float32 => OutputDType::F32,
                InputDType::Float16 => OutputDType::F16,
            },
        }
    }

    /// Number of elements of one image's input.
    pub fn image_len(&self) -> usize {
        let s = self.input_size as usize;
        3 * s * s
    }
}

impl From<&ModelContract> for PreprocessSpec {
    fn from(c: &ModelContract) -> Self {
        c.preprocess_spec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    pub(crate) fn tiny_metadata() -> HashMap<String, String> {
        [
            ("pneumo.contract_version", "1"),
            ("pneumo.model_name", "pneumollm-tiny"),
            ("pneumo.model_version", "0.0.0-demo"),
            ("pneumo.model_config", "tiny"),
            ("pneumo.weights_kind", "random-demo"),
            (
                "pneumo.weights_sha256",
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
            ("pneumo.weights_sha256_method", "pneumo-state-dict-v1"),
            ("pneumo.precision", "fp32"),
            ("pneumo.input_name", "image"),
            ("pneumo.input_shape", "[\"batch\",3,224,224]"),
            ("pneumo.input_dtype", "float32"),
            ("pneumo.input_layout", "NCHW"),
            ("pneumo.output_name", "logits"),
            ("pneumo.output_shape", "[\"batch\",2]"),
            ("pneumo.output_dtype", "float32"),
            ("pneumo.output_kind", "logits"),
            ("pneumo.labels", "[\"pneumoconiosis\",\"normal\"]"),
            ("pneumo.positive_label", "pneumoconiosis"),
            ("pneumo.score_function", "softmax"),
            ("pneumo.decision_threshold", "0.5"),
            ("pneumo.input_size", "224"),
            ("pneumo.color_mode", "grey-to-rgb"),
            ("pneumo.input_range", "[0.0,1.0]"),
            ("pneumo.mean", "[0.485,0.456,0.406]"),
            ("pneumo.std", "[0.229,0.224,0.225]"),
            ("pneumo.resize_filter", "bilinear-antialias"),
            ("pneumo.resize_mode", "stretch"),
            ("pneumo.crop_mode", "none"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn parse(m: &HashMap<String, String>) -> Result<ModelContract, ContractError> {
        ModelContract::from_metadata(|k| m.get(k).cloned())
    }

    #[test]
    fn the_tiny_contract_parses_and_gives_the_preprocess_spec() {
        let c = parse(&tiny_metadata()).unwrap();
        assert!(c.is_demo());
        assert_eq!(c.positive_index, 0);
        assert_eq!(c.decision_threshold, 0.5);
        let spec = PreprocessSpec::from(&c);
        assert_eq!((spec.width, spec.height), (224, 224));
        assert_eq!(spec.mean, [0.485, 0.456, 0.406]);
        assert_eq!(spec.std, [0.229, 0.224, 0.225]);
        assert_eq!(spec.crop, CropMode::None);
        assert_eq!(spec.dtype, OutputDType::F32);
    }

    #[test]
    fn labels_may_come_in_another_order() {
        let mut m = tiny_metadata();
        m.insert(
            "pneumo.labels".into(),
            "[\"normal\",\"pneumoconiosis\"]".into(),
        );
        let c = parse(&m).unwrap();
        assert_eq!(
            (c.positive_index, c.positive_label.as_str()),
            (1, "pneumoconiosis")
        );
    }

    #[test]
    fn every_missing_key_is_named() {
        for key in CONTRACT_KEYS {
            let mut m = tiny_metadata();
            m.remove(key);
            assert_eq!(parse(&m).unwrap_err(), ContractError::MissingKey { key });
        }
    }

    #[test]
    fn invalid_values_name_their_key() {
        for (key, value) in [
            ("pneumo.contract_version", "2"),
            ("pneumo.weights_kind", "random"),
            ("pneumo.weights_sha256", "ABC"),
            ("pneumo.input_shape", "[\"batch\",224,224]"),
            ("pneumo.input_shape", "[\"batch\",3,256,256]"),
            ("pneumo.input_dtype", "int8"),
            ("pneumo.output_shape", "[\"batch\",3]"),
            ("pneumo.positive_label", "silicosis"),
            ("pneumo.positive_label", "normal"), // the node reports P(pneumoconiosis)
            ("pneumo.labels", "[\"pneumoconiosis\",\"pneumoconiosis\"]"),
            ("pneumo.decision_threshold", "1.5"),
            ("pneumo.decision_threshold", "0"), // every image positive
            ("pneumo.decision_threshold", "1.0"),
            ("pneumo.decision_threshold", "1e-300"),
            ("pneumo.decision_threshold", "0.9999999"),
            ("pneumo.mean", "[0.5,0.5]"),
            ("pneumo.std", "[0.2,0.0,0.2]"),
            ("pneumo.std", "[1e-40,0.2,0.2]"),
            ("pneumo.model_name", "pneumo\u{1b}[2Jllm"),
            ("pneumo.model_version", "1.0\n"),
            ("pneumo.model_config", "vit\u{0}"),
            ("pneumo.model_name", "\u{202E}mllomuenp"),
            ("pneumo.model_name", "\u{200B}"),
            ("pneumo.model_version", "1.0\u{2028}"),
            ("pneumo.labels", "[\"pneumo\\u0007coniosis\",\"normal\"]"),
            ("pneumo.mean", "[124.0,116.0,104.0]"), // the 0-255 scale
            ("pneumo.std", "[58.4,57.1,57.4]"),
            ("pneumo.model_name", " "),
            ("pneumo.model_version", ""),
            ("pneumo.crop_mode", "center"),
            ("pneumo.score_function", "sigmoid"),
        ] {
            let mut m = tiny_metadata();
            m.insert(key.into(), value.into());
            match parse(&m) {
                Err(ContractError::InvalidValue { key: k, .. }) => assert_eq!(k, key, "{value}"),
                other => panic!("{key}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_demo_weights_stay_a_demo_whatever_the_metadata_says() {
        for sha in DEMO_WEIGHTS_SHA256 {
            let mut m = tiny_metadata();
            m.insert("pneumo.weights_sha256".into(), sha.into());
            assert!(parse(&m).unwrap().is_demo());
            m.insert("pneumo.weights_kind".into(), "trained".into());
            match parse(&m) {
                Err(ContractError::InvalidValue { key, .. }) => {
                    assert_eq!(key, "pneumo.weights_kind")
                }
                other => panic!("demo weights relabelled trained: {other:?}"),
            }
        }
    }

    #[test]
    fn the_contract_hash_follows_every_stated_value() {
        let first = parse(&tiny_metadata()).unwrap().contract_sha256;
        assert_eq!(first, parse(&tiny_metadata()).unwrap().contract_sha256);
        assert_eq!(first.len(), 64);
        // The same weights recalibrated: another result, another hash.
        for (key, value) in [
            ("pneumo.decision_threshold", "0.7"),
            ("pneumo.model_version", "0.0.1"),
            ("pneumo.mean", "[0.5,0.5,0.5]"),
        ] {
            let mut m = tiny_metadata();
            m.insert(key.into(), value.into());
            assert_ne!(parse(&m).unwrap().contract_sha256, first, "{key}");
        }
    }

    #[test]
    fn fp16_contract_asks_for_f16_tensors() {
        let mut m = tiny_metadata();
        m.insert("pneumo.input_dtype".into(), "float16".into());
        m.insert("pneumo.precision".into(), "fp16".into());
        m.insert("pneumo.crop_mode".into(), "lung-box".into());
        let spec = parse(&m).unwrap().preprocess_spec();
        assert_eq!(spec.dtype, OutputDType::F16);
        assert_eq!(spec.crop, CropMode::LungBox);
    }
}
