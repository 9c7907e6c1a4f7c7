//! A model's contract and graph signature, read from the file without ONNX
//! Runtime (`model info`), and the contract parsing shared with
//! [`crate::Model::load`], which reads the same things from a session.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ort::session::Session;

use crate::contract::ModelContract;
use crate::error::{InferenceError, Result};
use crate::graph::{check_graph, GraphSignature};
use crate::onnx_proto::read_onnx_header;
use crate::runtime::locate_model_file;

/// A model file's contract, checked against its graph, without a session.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectedModel {
    /// The file read (the path resolved as [`crate::Model::load`] does).
    pub path: PathBuf,
    pub contract: ModelContract,
    pub signature: GraphSignature,
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
    let header = read_onnx_header(&path).map_err(|e| InferenceError::ModelLoad {
        path: path.clone(),
        message: format!("not a readable ONNX file: {e}"),
    })?;
    let contract = read_contract(&path, &header.metadata)?;
    check_graph(&path, &header.signature, &contract)?;
    Ok(InspectedModel {
        path,
        contract,
        signature: header.signature,
    })
}

/// The contract in a model's custom metadata.
pub(crate) fn read_contract(
    path: &Path,
    metadata: &HashMap<String, String>,
) -> Result<ModelContract> {
    ModelContract::from_metadata(|k| metadata.get(k).cloned()).map_err(|problem| {
        InferenceError::Contract {
            path: path.to_path_buf(),
            problem,
        }
    })
}

/// A session's custom metadata (`metadata_props`).
pub(crate) fn session_metadata(session: &Session) -> Result<HashMap<String, String>> {
    let ort_err = |e: ort::Error| InferenceError::Ort(e.to_string());
    let meta = session.metadata().map_err(ort_err)?;
    let mut map = HashMap::new();
    for key in meta.custom_keys().map_err(ort_err)? {
        if let Some(value) = meta.custom(&key) {
            map.insert(key, value);
        }
    }
    Ok(map)
}
