//! A model's contract and graph signature, read from the file without ONNX
//! Runtime (`model info`), and the contract parsing shared with
//! [`crate::Model::load`], which reads the same things from a session.

use std::path::{Path, PathBuf};

use crate::contract::{ModelContract, CONTRACT_KEYS};
use crate::error::{ContractError, InferenceError, Result};
use crate::graph::{check_graph, check_output_is_logits, GraphSignature};
use crate::onnx_proto::{read_onnx_header, OnnxHeader};
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
    let header = read_header(&path)?;
    let contract = read_contract(&path, &header)?;
    check_graph(&path, &header.signature, &contract)?;
    check_output_is_logits(&path, &header.output_activations, &contract)?;
    Ok(InspectedModel {
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
