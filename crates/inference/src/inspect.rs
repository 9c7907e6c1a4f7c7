//! A model's contract and graph signature, read from the file without ONNX
//! Runtime (`model info`), and the contract parsing shared with
//! [`crate::Model::load`], which reads the same things from a session.

use std::path::{Path, PathBuf};

use crate::contract::{ModelContract, CONTRACT_KEYS};
use crate::error::{ContractError, InferenceError, Result};
use crate::graph::{check_graph, check_output_is_logits, GraphSignature, ShapesBy};
use crate::onnx_proto::{read_onnx_header, ExternalTensor, OnnxHeader};
use crate::runtime::locate_model_file;

/// A model file's contract, checked against its graph, without a session.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectedModel {
    /// The file read (the path resolved as [`crate::Model::load`] does).
    pub path: PathBuf,
    pub contract: ModelContract,
    pub signature: GraphSignature,
    /// Why its external weights would not load (missing, cut short), if
    /// they would not: `model info` still shows the contract, `check-config`
    /// refuses it.
    pub weights_problem: Option<String>,
}

impl InspectedModel {
    /// `weights_problem` as the error a load would end with.
    pub fn check_weights(&self) -> Result<()> {
        weights_loadable(&self.path, self.weights_problem.clone())
    }
}

/// Reads the contract (`metadata_props`) and the graph's inputs and outputs
/// of the ONNX file `path` and checks them against each other, as
/// [`crate::Model::load`] does, without loading ONNX Runtime or any weight:
/// instant even for a model of many gigabytes. A relative path is resolved
/// as `Model::load` resolves `inference.model`.
///
/// The same file gives the same contract and the same errors as
/// `Model::load`, except what only a session finds: an unknown operator,
/// missing external weights, a graph that cannot be built.
pub fn inspect_model(path: &Path) -> Result<InspectedModel> {
    let path = locate_model_file(path)?;
    let header = read_header(&path)?;
    let contract = read_contract(&path, &header)?;
    check_graph(&path, &header.signature, &contract, ShapesBy::File)?;
    check_output_is_logits(&path, &header.output_activations, &contract)?;
    Ok(InspectedModel {
        weights_problem: external_weights_problem(&path, &header.external_tensors),
        path,
        contract,
        signature: header.signature,
    })
}

/// The ONNX file's metadata and signature, read without its weights.
pub(crate) fn read_header(path: &Path) -> Result<OnnxHeader> {
    read_onnx_header(path).map_err(|e| InferenceError::ModelLoad {
        path: path.to_path_buf(),
        message: format!("not a readable ONNX file: {e}"),
    })
}

/// Whether a relative location climbs out of the model's directory:
/// `sub/../w.bin` stays in it (ONNX Runtime takes it), `../w.bin` leaves.
fn leaves_its_directory(location: &Path) -> bool {
    let mut depth = 0i32;
    for c in location.components() {
        match c {
            std::path::Component::ParentDir => depth -= 1,
            std::path::Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// What keeps a model's external weights from loading: a file missing, or
/// too short for a weight's bytes (the `.onnx.data` left behind, or cut
/// short by a copy), found from their sizes without reading them.
pub(crate) fn external_weights_problem(path: &Path, tensors: &[ExternalTensor]) -> Option<String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut sizes = std::collections::HashMap::new();
    for t in tensors {
        if let Some(why) = &t.malformed {
            return Some(format!("its weight `{}`: {why}", t.name));
        }
        // ONNX Runtime reads weights only from within the model's directory,
        // named relative to it.
        let location = Path::new(&t.location);
        if location.is_absolute() {
            return Some(format!(
                "its weight `{}` is named by the absolute path `{}`, which ONNX Runtime \
                 refuses (\"Absolute path not allowed for external data location\"): name \
                 the weights file relative to the model's directory, as onnx.save does",
                t.name, t.location
            ));
        }
        if leaves_its_directory(location) {
            return Some(format!(
                "its weight `{}` lies in `{}`, outside the model's directory, which ONNX \
                 Runtime refuses: keep the weights beside the model",
                t.name, t.location
            ));
        }
        let file = dir.join(&t.location);
        let size = match sizes.get(&t.location) {
            Some(size) => *size,
            None => match std::fs::metadata(&file) {
                Ok(m) if m.is_dir() => {
                    return Some(format!(
                        "its weights (`{}`) are to be in {}, which is a directory",
                        t.name,
                        file.display()
                    ))
                }
                Ok(m) => *sizes.entry(t.location.clone()).or_insert(m.len()),
                Err(e) => {
                    return Some(format!(
                        "its weights (`{}`) are in {}, beside the model, which cannot be \
                         read: {e} (copy the model with its .data file)",
                        t.name,
                        file.display()
                    ))
                }
            },
        };
        let needed = t.length.and_then(|n| t.offset.checked_add(n));
        if needed.map_or(t.offset > size, |n| n > size) {
            return Some(format!(
                "its weights file {} is {size} bytes, and weight `{}` lies at bytes {}..{} \
                 (a copy cut short?)",
                file.display(),
                t.name,
                t.offset,
                needed.map_or("?".to_string(), |n| n.to_string())
            ));
        }
    }
    None
}

/// [`external_weights_problem`] as the error of a load.
pub(crate) fn check_external_weights(path: &Path, header: &OnnxHeader) -> Result<()> {
    weights_loadable(
        path,
        external_weights_problem(path, &header.external_tensors),
    )
}

/// A weights problem of the model `path` as the error of its load.
fn weights_loadable(path: &Path, problem: Option<String>) -> Result<()> {
    match problem {
        Some(message) => Err(InferenceError::ModelLoad {
            path: path.to_path_buf(),
            message,
        }),
        None => Ok(()),
    }
}

/// The contract in a model's custom metadata. A contract key given twice
/// is refused: ONNX Runtime and this reader need not keep the same one.
pub(crate) fn read_contract(path: &Path, header: &OnnxHeader) -> Result<ModelContract> {
    let contract_error = |problem| InferenceError::Contract {
        path: path.to_path_buf(),
        problem,
    };
    if let Some(key) = header
        .repeated_keys
        .iter()
        .find(|k| CONTRACT_KEYS.contains(&k.as_str()))
    {
        return Err(contract_error(ContractError::DuplicateKey {
            key: key.clone(),
        }));
    }
    ModelContract::from_metadata(|k| header.metadata.get(k).cloned()).map_err(contract_error)
}
