//! pneumo-inference: the exported PneumoLLM graph under ONNX Runtime.
//!
//! - [`runtime`]: finds and checks `libonnxruntime.so` (configured path,
//!   `ORT_DYLIB_PATH`, or the onnxruntime wheel in `.venv`) before `ort`
//!   loads it; one environment per process.
//! - [`ModelContract`]: the `pneumo.*` metadata keys (docs/model-contract.md),
//!   checked against the graph; converts to [`pneumo_imaging::PreprocessSpec`].
//! - [`Model`]: one session on CUDA or the CPU (`auto` tries CUDA first).
//! - [`inspect_model`]: the contract and the graph's inputs and outputs read
//!   from the ONNX file itself (no session, no weights), for `model info`.
//! - [`LungSegmenter`]: the lung segmentation model (`pneumo.seg.*`
//!   contract) giving the box of a `lung-box` crop.
//! - [`InferenceEngine`]: the micro-batcher on a dedicated thread, with an
//!   async [`InferenceEngine::infer`].
//!
//! See docs/inference.md.

mod batcher;
mod contract;
mod error;
mod files;
mod graph;
mod inspect;
mod model;
mod onnx_proto;
mod prediction;
pub mod runtime;
mod segment;
mod settings;

pub use batcher::{BatchConfig, EngineStats, InferenceEngine};
pub use contract::{Dim, InputDType, ModelContract, WeightsKind, CONTRACT_KEYS, DEMO_WARNING};
pub use error::{ContractError, InferenceError, Result};
pub use graph::{GraphDim, GraphSignature, GraphValue, GraphValueType};
pub use inspect::{inspect_model, InspectedModel};
pub use model::{check_provider_built, ExecutionProvider, ImageInput, Model};
pub use prediction::{softmax, ModelIdentity, Prediction};
pub use runtime::locate_model_file;
pub use segment::{inspect_segmentation_model, LungSegmenter, SegContract, SEG_CONTRACT_KEYS};
pub use settings::{
    ArenaStrategy, ConvAlgoSearch, ExecutionProviderChoice, GraphOptimization, InferenceSettings,
};
