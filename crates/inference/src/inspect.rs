//! A model's contract, read from its metadata however the metadata was
//! obtained (here, from an ONNX Runtime session).

use std::collections::HashMap;
use std::path::Path;

use ort::session::Session;

use crate::contract::ModelContract;
use crate::error::{InferenceError, Result};

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
