//! Typed errors of the inference crate.

use std::path::PathBuf;

/// Everything that can go wrong between a path in the configuration and a
/// prediction. Messages name the file, the key or the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// No ONNX Runtime library was configured and none was found.
    #[error("no ONNX Runtime library found: set inference.ort_library (or ORT_DYLIB_PATH), or install the onnxruntime wheel into .venv (`make deps`); looked in: {looked}")]
    LibraryNotFound { looked: String },

    /// The configured library file does not exist.
    #[error("ONNX Runtime library {path} does not exist")]
    LibraryMissing { path: PathBuf },

    /// The file is not a loadable ONNX Runtime library.
    #[error("{path} is not an ONNX Runtime library: {reason}")]
    LibraryInvalid { path: PathBuf, reason: String },

    /// The library is older than the API this build was compiled against.
    #[error("ONNX Runtime {found} at {path} is too old: this build needs 1.{needed}.0 or newer (onnxruntime wheel in requirements.txt)")]
    LibraryTooOld {
        path: PathBuf,
        found: String,
        needed: u32,
    },

    /// A second, different library was asked for after one was loaded.
    #[error("ONNX Runtime is already loaded from {loaded} in this process; cannot switch to {requested}")]
    LibraryAlreadyLoaded { loaded: PathBuf, requested: PathBuf },

    /// The model file does not exist, or is not a file.
    #[error("model file {path} {why}")]
    ModelMissing { path: PathBuf, why: String },

    /// ONNX Runtime refused the file (not ONNX, unsupported operator...).
    #[error("cannot load model {path}: {message}")]
    ModelLoad { path: PathBuf, message: String },

    /// The model's contract (ONNX metadata) is missing or invalid.
    #[error("model {path}: {problem}")]
    Contract {
        path: PathBuf,
        problem: ContractError,
    },

    /// The library has no such execution provider (a CPU-only build
    /// configured for `cuda`): no restart can change that.
    #[error("execution provider {provider}: ONNX Runtime at {library} ({version}) was built without it ({remedy})")]
    ProviderNotBuilt {
        provider: String,
        library: PathBuf,
        version: String,
        remedy: String,
    },

    /// A model file changed on disk after the model was loaded: the
    /// running session may compute with a mix of two models.
    #[error(
        "{0}: the model does not run until its files hold the loaded bytes again, or the node is \
         restarted to load it anew"
    )]
    ModelFilesChanged(String),

    /// The requested execution provider could not be used.
    #[error("execution provider {provider}: {message}")]
    ExecutionProvider { provider: String, message: String },

    /// Any other ONNX Runtime failure (environment, session options).
    #[error("ONNX Runtime: {0}")]
    Ort(String),

    /// The input tensor does not match the contract.
    #[error("input tensor: {0}")]
    BadInput(String),

    /// ONNX Runtime failed to run the batch this request was part of.
    #[error("inference failed: {0}")]
    Run(String),

    /// The model's output does not have the contract's shape.
    #[error("model output: {0}")]
    BadOutput(String),

    /// The output row of this request holds NaN or infinity.
    #[error("model output for this image is not finite (logits {logits:?})")]
    NonFiniteOutput { logits: Vec<f32> },

    /// The batcher's worker thread is gone.
    #[error("the inference worker has stopped")]
    WorkerGone,

    /// A configuration value is out of range.
    #[error("configuration: {0}")]
    Settings(String),
}

/// What is wrong with a model's contract (docs/model-contract.md).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContractError {
    #[error("the model has no contract: metadata key `{key}` is missing (docs/model-contract.md)")]
    MissingKey { key: &'static str },

    #[error("not a lung segmentation model: metadata key `{key}` is missing (docs/inference.md, lung segmentation model contract)")]
    MissingSegKey { key: &'static str },

    #[error("metadata key `{key}` = {value:?}: {expected}")]
    InvalidValue {
        key: &'static str,
        value: String,
        expected: String,
    },

    #[error(
        "metadata key `{key}` is given more than once: which value applies would depend on the reader"
    )]
    DuplicateKey { key: String },

    #[error("the graph does not match the contract: {0}")]
    Graph(String),
}

impl InferenceError {
    /// Whether only a change of configuration, or of the files it names,
    /// can cure it: a node that starts again unchanged fails the same way.
    /// An execution provider that failed is not (a GPU driver can come up
    /// after the node at boot).
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            Self::LibraryNotFound { .. }
                | Self::LibraryMissing { .. }
                | Self::LibraryInvalid { .. }
                | Self::LibraryTooOld { .. }
                | Self::ModelMissing { .. }
                | Self::ModelLoad { .. }
                | Self::Contract { .. }
                | Self::ProviderNotBuilt { .. }
                | Self::Settings(_)
        )
    }
}

pub type Result<T, E = InferenceError> = std::result::Result<T, E>;
