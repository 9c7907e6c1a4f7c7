//! The lung segmentation model: the grey image to a lung mask to the box
//! the classifier's `lung-box` crop uses. Its contract is the `pneumo.seg.*`
//! metadata keys (docs/inference.md, "Lung segmentation model contract").

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::session::Session;
use ort::value::{TensorElementType, TensorRef};
use pneumo_imaging::{resize_bilinear, GreyImage, LungBox};

use crate::error::{ContractError, InferenceError, Result};
use crate::files::ModelFiles;
use crate::graph::{GraphDim, GraphSignature, GraphValue, GraphValueType};
use crate::inspect::{check_external_weights, read_header};
use crate::model::{open_session, ExecutionProvider};
use crate::runtime::{init_runtime, locate_model_file};
use crate::settings::InferenceSettings;

/// Every key of the lung segmentation contract, version 1.
pub const SEG_CONTRACT_KEYS: [&str; 5] = [
    "pneumo.seg.contract_version",
    "pneumo.seg.input_size",
    "pneumo.seg.input_name",
    "pneumo.seg.output_name",
    "pneumo.seg.threshold",
];

/// The parsed `pneumo.seg.*` keys.
#[derive(Debug, Clone, PartialEq)]
pub struct SegContract {
    /// Side of the square input and output, pixels.
    pub input_size: u32,
    pub input_name: String,
    pub output_name: String,
    /// A pixel is lung when the output is above this.
    pub threshold: f32,
}

impl SegContract {
    /// Reads and checks the keys; `get` returns a metadata value.
    pub fn from_metadata(get: impl Fn(&str) -> Option<String>) -> Result<Self, ContractError> {
        let mut values = SEG_CONTRACT_KEYS.map(|_| String::new());
        for (key, value) in SEG_CONTRACT_KEYS.iter().zip(values.iter_mut()) {
            *value = get(key).ok_or(ContractError::MissingSegKey { key })?;
        }
        let [version, size, input_name, output_name, threshold] = values;
        let bad = |key: &'static str, value: &str, expected: &str| ContractError::InvalidValue {
            key,
            value: value.to_string(),
            expected: expected.to_string(),
        };
        if version != "1" {
            return Err(bad(
                SEG_CONTRACT_KEYS[0],
                &version,
                "this node knows lung segmentation contract version 1 only",
            ));
        }
        let input_size = size
            .parse::<u32>()
            .ok()
            .filter(|s| (1..=4096).contains(s))
            .ok_or_else(|| bad(SEG_CONTRACT_KEYS[1], &size, "expected a size 1-4096"))?;
        if input_name.is_empty() {
            return Err(bad(SEG_CONTRACT_KEYS[2], &input_name, "expected a name"));
        }
        if output_name.is_empty() {
            return Err(bad(SEG_CONTRACT_KEYS[3], &output_name, "expected a name"));
        }
        let t = threshold
            .parse::<f32>()
            .ok()
            .filter(|t| t.is_finite())
            .ok_or_else(|| bad(SEG_CONTRACT_KEYS[4], &threshold, "expected a number"))?;
        Ok(SegContract {
            input_size,
            input_name,
            output_name,
            threshold: t,
        })
    }
}

/// A loaded lung segmentation model. [`LungSegmenter::lung_box`] blocks:
/// call it from a blocking thread. Calls are serialised on one session.
pub struct LungSegmenter {
    session: Mutex<Session>,
    contract: SegContract,
    provider: ExecutionProvider,
    path: PathBuf,
    /// Its files as loaded, looked at around each run (as the classifier's).
    files: ModelFiles,
    /// SHA-256 of its files at load: the reports of a classifier that
    /// crops to its lung box derive their UIDs from it too.
    sha256: String,
}

impl std::fmt::Debug for LungSegmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LungSegmenter")
            .field("path", &self.path)
            .field("provider", &self.provider)
            .field("contract", &self.contract)
            .finish()
    }
}

fn contract_err(path: &Path, problem: ContractError) -> InferenceError {
    InferenceError::Contract {
        path: path.to_path_buf(),
        problem,
    }
}

/// The graph has the contract's input [1,1,S,S] and output [1,1,S,S] or
/// [1,S,S], float32 (a dimension may be dynamic; an output whose shape the
/// file leaves out is checked at each run).
fn check_graph(path: &Path, sig: &GraphSignature, c: &SegContract) -> Result<()> {
    let s = i64::from(c.input_size);
    let graph = |msg: String| contract_err(path, ContractError::Graph(msg));
    let fits = |shape: &Option<Vec<GraphDim>>, want: &[i64], undeclared: bool| match shape {
        Some(shape) => {
            shape.len() == want.len()
                && shape
                    .iter()
                    .zip(want)
                    .all(|(g, w)| g.size() < 0 || g.size() == *w)
        }
        None => undeclared,
    };
    let find = |values: &'_ [GraphValue], name: &str, what: &str, key: &str| {
        values
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.ty.clone())
            .ok_or_else(|| graph(format!("no {what} `{name}` ({key})")))
    };
    match find(&sig.inputs, &c.input_name, "input", "pneumo.seg.input_name")? {
        GraphValueType::Tensor { element, shape }
            if element == TensorElementType::Float32 && fits(&shape, &[1, 1, s, s], false) => {}
        other => {
            return Err(graph(format!(
                "input `{}` is {other:?}, the contract wants float32 [1, 1, {s}, {s}]",
                c.input_name
            )))
        }
    }
    match find(&sig.outputs, &c.output_name, "output", "pneumo.seg.output_name")? {
        GraphValueType::Tensor { element, shape }
            if element == TensorElementType::Float32
                && (fits(&shape, &[1, 1, s, s], true) || fits(&shape, &[1, s, s], true)) => {}
        other => {
            return Err(graph(format!(
                "output `{}` is {other:?}, the contract wants float32 [1, 1, {s}, {s}] or [1, {s}, {s}]",
                c.output_name
            )))
        }
    }
    Ok(())
}

/// Reads a lung segmentation model's contract and graph signature from the
/// file and checks them, as [`LungSegmenter::load`] does, without ONNX
/// Runtime (`check-config`): what only a session finds (an operator the
/// library does not know) is found at load.
pub fn inspect_segmentation_model(path: &Path) -> Result<(PathBuf, SegContract)> {
    let path = locate_model_file(path)?;
    let header = read_header(&path)?;
    let contract = SegContract::from_metadata(|k| header.metadata.get(k).cloned())
        .map_err(|problem| contract_err(&path, problem))?;
    check_graph(&path, &header.signature, &contract)?;
    check_external_weights(&path, &header)?;
    Ok((path, contract))
}

impl LungSegmenter {
    /// Loads `path` (looked up like `inference.model`) on the ONNX Runtime
    /// and execution provider choice of `settings`, and checks its contract.
    pub fn load(path: &Path, settings: &InferenceSettings) -> Result<LungSegmenter> {
        let path = locate_model_file(path)?;
        let header = read_header(&path)?;
        check_external_weights(&path, &header)?;
        let files = ModelFiles::stamp(&path, &header.external_files);
        let sha256 = files.sha256().map_err(|e| InferenceError::ModelLoad {
            path: path.clone(),
            message: format!("reading it to hash it: {e}"),
        })?;
        let rt = init_runtime(&settings.ort_library)?;
        let (session, provider) = open_session(rt, settings, &path)?;
        let meta = session
            .metadata()
            .map_err(|e| InferenceError::Ort(e.to_string()))?;
        let contract = SegContract::from_metadata(|k| meta.custom(k))
            .map_err(|problem| contract_err(&path, problem))?;
        drop(meta);
        check_graph(&path, &GraphSignature::from_session(&session), &contract)?;
        let segmenter = LungSegmenter {
            session: Mutex::new(session),
            contract,
            provider,
            path,
            files,
            sha256,
        };
        segmenter.probe()?;
        tracing::info!(
            path = %segmenter.path.display(),
            input_size = segmenter.contract.input_size,
            execution_provider = %provider,
            sha256 = %segmenter.sha256,
            "lung segmentation model loaded"
        );
        Ok(segmenter)
    }

    /// Runs the model on two probe images (a ramp, a flat grey) and refuses
    /// it when its output is finite for neither: it started ready, and
    /// every image got a notice saying its lungs could not be found, the
    /// image blamed for the model.
    fn probe(&self) -> Result<()> {
        let s = self.contract.input_size as usize;
        let ramp = GreyImage {
            width: s,
            height: s,
            data: (0..s * s).map(|i| (i % s) as f32 / s as f32).collect(),
        };
        let flat = GreyImage {
            width: s,
            height: s,
            data: vec![0.5; s * s],
        };
        let finite = |grey: &GreyImage| -> Result<bool> {
            Ok(self.output(grey)?.iter().all(|v| v.is_finite()))
        };
        if finite(&ramp)? || finite(&flat)? {
            return Ok(());
        }
        Err(contract_err(
            &self.path,
            ContractError::Graph(format!(
                "output `{}` is not finite for a ramp nor for a flat grey image: every \
                 analysis would fail",
                self.contract.output_name
            )),
        ))
    }

    /// Loads `settings.lung_segmentation_model`, or `None` when it is empty.
    pub fn from_settings(settings: &InferenceSettings) -> Result<Option<LungSegmenter>> {
        if settings.lung_segmentation_model.as_os_str().is_empty() {
            return Ok(None);
        }
        LungSegmenter::load(&settings.lung_segmentation_model, settings).map(Some)
    }

    pub fn contract(&self) -> &SegContract {
        &self.contract
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SHA-256 of its files as loaded (lower-case hex).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn execution_provider(&self) -> ExecutionProvider {
        self.provider
    }

    /// The first of its files changed on disk since it was loaded, in words
    /// ("lung segmentation: the model's file … changed").
    pub fn files_changed(&self) -> Option<String> {
        self.files
            .changed()
            .map(|why| format!("lung segmentation: {why}"))
    }

    /// The lung mask of `grey` (the image in [0, 1], bone bright) at the
    /// model's resolution: `S`×`S` values, 1 = lung (blocking). An output
    /// not finite is the model's failure, not an image without lungs.
    pub fn mask(&self, grey: &GreyImage) -> Result<Vec<u8>> {
        let values = self.output(grey)?;
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(InferenceError::BadOutput(format!(
                "the lung segmentation model's output is not finite ({v}) for this image"
            )));
        }
        let t = self.contract.threshold;
        Ok(values.iter().map(|&v| u8::from(v > t)).collect())
    }

    /// The model's output for `grey`, `S`×`S` values (blocking).
    fn output(&self, grey: &GreyImage) -> Result<Vec<f32>> {
        if grey.width == 0 || grey.height == 0 || grey.data.len() != grey.width * grey.height {
            return Err(InferenceError::BadInput(format!(
                "grey image {}x{} with {} values",
                grey.width,
                grey.height,
                grey.data.len()
            )));
        }
        let s = self.contract.input_size as usize;
        let input = resize_bilinear(&grey.data, grey.width, 0, 0, grey.width, grey.height, s, s);
        let tensor = TensorRef::from_array_view(([1usize, 1, s, s], input.as_slice()))
            .map_err(|e| InferenceError::Run(e.to_string()))?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let changed =
            |why: String| InferenceError::ModelFilesChanged(format!("lung segmentation: {why}"));
        let before = self.files.before_run().map_err(changed)?;
        let outputs = session
            .run(ort::inputs![self.contract.input_name.as_str() => tensor])
            .map_err(|e| InferenceError::Run(format!("lung segmentation: {e}")))?;
        // a change during the run may have fed it a mix of two models
        self.files.after_run(&before).map_err(changed)?;
        let out = outputs
            .get(self.contract.output_name.as_str())
            .ok_or_else(|| {
                InferenceError::BadOutput(format!(
                    "lung segmentation: no output `{}`",
                    self.contract.output_name
                ))
            })?;
        let (shape, values) = out
            .try_extract_tensor::<f32>()
            .map_err(|e| InferenceError::BadOutput(format!("lung segmentation: {e}")))?;
        if values.len() != s * s {
            return Err(InferenceError::BadOutput(format!(
                "lung segmentation: shape {:?}, expected [1, 1, {s}, {s}]",
                &shape[..]
            )));
        }
        Ok(values.to_vec())
    }

    /// The bounding box of the lung mask in `grey`'s pixel coordinates, or
    /// `None` when the mask is empty (blocking).
    pub fn lung_box(&self, grey: &GreyImage) -> Result<Option<LungBox>> {
        let mask = self.mask(grey)?;
        let s = self.contract.input_size as usize;
        let (w, h) = (
            u32::try_from(grey.width).map_err(|_| InferenceError::BadInput("width".into()))?,
            u32::try_from(grey.height).map_err(|_| InferenceError::BadInput("height".into()))?,
        );
        Ok(LungBox::from_mask(&mask, s, s, w, h, 0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(over: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let mut m: std::collections::HashMap<String, String> = [
            ("pneumo.seg.contract_version", "1"),
            ("pneumo.seg.input_size", "256"),
            ("pneumo.seg.input_name", "grey"),
            ("pneumo.seg.output_name", "lung"),
            ("pneumo.seg.threshold", "0.5"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in over {
            if v.is_empty() {
                m.remove(*k);
            } else {
                m.insert(k.to_string(), v.to_string());
            }
        }
        move |k| m.get(k).cloned()
    }

    #[test]
    fn contract_parses_and_names_the_bad_key() {
        let c = SegContract::from_metadata(meta(&[])).unwrap();
        assert_eq!(c.input_size, 256);
        assert_eq!(c.threshold, 0.5);
        for key in SEG_CONTRACT_KEYS {
            assert_eq!(
                SegContract::from_metadata(meta(&[(key, "")])),
                Err(ContractError::MissingSegKey { key })
            );
        }
        for (key, value) in [
            ("pneumo.seg.contract_version", "2"),
            ("pneumo.seg.input_size", "0"),
            ("pneumo.seg.input_size", "big"),
            ("pneumo.seg.threshold", "NaN"),
        ] {
            match SegContract::from_metadata(meta(&[(key, value)])) {
                Err(ContractError::InvalidValue { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}={value}: {other:?}"),
            }
        }
    }
}
