//! The `[inference]` section of the node's configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{InferenceError, Result};

/// Which execution provider to run the model on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProviderChoice {
    /// CUDA if it can be used, else the CPU (the log and the node say which).
    #[default]
    Auto,
    /// CUDA or an error at start.
    Cuda,
    /// ONNX Runtime's CPU provider.
    Cpu,
}

/// How the CUDA memory arena grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArenaStrategy {
    /// Grow by what is requested (bounded memory).
    #[default]
    SameAsRequested,
    /// Grow by powers of two (ONNX Runtime's own default; can take far more).
    NextPowerOfTwo,
}

/// How cuDNN picks a convolution algorithm for each new input shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConvAlgoSearch {
    /// cuDNN's heuristics: no benchmarking when a new batch size arrives.
    #[default]
    Heuristic,
    /// Times every algorithm on the first run of each new shape (ONNX
    /// Runtime's default; slow first batches of each size).
    Exhaustive,
    /// cuDNN's default algorithm.
    Default,
}

/// Which of ONNX Runtime's graph optimisations run when a session is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GraphOptimization {
    /// Every level (ONNX Runtime's default).
    #[default]
    All,
    /// Basic and extended fusions, no layout transformations (one of which
    /// crashed ONNX Runtime, the process killed by a signal, on a float16
    /// ViT export).
    Extended,
    /// Constant folding and redundant node elimination only.
    Basic,
    /// None: the graph runs as exported.
    Disabled,
}

/// `[inference]`: every key has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceSettings {
    /// The ONNX model. A relative path is looked up in the working
    /// directory, then in the repository the executable was built in.
    pub model: PathBuf,
    /// The lung segmentation model (docs/inference.md, "Lung segmentation
    /// model contract"), for a classifier whose contract says crop
    /// `lung-box`. Empty: none. Looked up like `model`.
    pub lung_segmentation_model: PathBuf,
    /// libonnxruntime.so.X.Y.Z. Empty: `ORT_DYLIB_PATH`, then the
    /// onnxruntime wheel in `.venv` (working directory, then the
    /// executable's repository).
    pub ort_library: PathBuf,
    /// `auto`, `cuda` or `cpu`.
    pub execution_provider: ExecutionProviderChoice,
    /// With `cuda`: build the session even when some nodes would run on the
    /// CPU. Without it, such a model is refused. (`auto` always accepts them.)
    pub allow_cpu_fallback: bool,
    /// CUDA device ordinal.
    pub device_id: i32,
    /// CUDA memory arena limit in bytes; 0 = no limit.
    pub cuda_mem_limit: u64,
    /// CUDA arena growth: `same-as-requested` or `next-power-of-two`.
    pub arena_strategy: ArenaStrategy,
    /// CUDA convolution algorithm search: `heuristic`, `exhaustive` or
    /// `default`.
    pub cuda_conv_algo_search: ConvAlgoSearch,
    /// Intra-op threads of the CPU provider; 0 = ONNX Runtime's default
    /// (one per physical core).
    pub cpu_threads: usize,
    /// ONNX Runtime's graph optimisations: `all`, `extended`, `basic` or
    /// `disabled`.
    pub graph_optimization: GraphOptimization,
    /// Most images run together in one batch.
    pub max_batch: usize,
    /// Longest time the first request of a batch waits for others, ms.
    pub max_wait_ms: u64,
    /// Run the model once at start (on CUDA also a full batch, which sizes
    /// the memory arena for the largest batch).
    pub warmup: bool,
}

impl Default for InferenceSettings {
    fn default() -> Self {
        InferenceSettings {
            model: PathBuf::from("fixtures/models/pneumollm-tiny.onnx"),
            lung_segmentation_model: PathBuf::new(),
            ort_library: PathBuf::new(),
            execution_provider: ExecutionProviderChoice::Auto,
            allow_cpu_fallback: false,
            device_id: 0,
            cuda_mem_limit: 0,
            arena_strategy: ArenaStrategy::SameAsRequested,
            cuda_conv_algo_search: ConvAlgoSearch::Heuristic,
            cpu_threads: 0,
            graph_optimization: GraphOptimization::All,
            max_batch: 8,
            max_wait_ms: 5,
            warmup: true,
        }
    }
}

impl InferenceSettings {
    /// Checks the ranges (messages name the key).
    pub fn validate(&self) -> Result<()> {
        if self.model.as_os_str().is_empty() {
            return Err(InferenceError::Settings(
                "inference.model must name an ONNX file".into(),
            ));
        }
        if !(1..=256).contains(&self.max_batch) {
            return Err(InferenceError::Settings(format!(
                "inference.max_batch {} must be between 1 and 256",
                self.max_batch
            )));
        }
        if self.max_wait_ms > 10_000 {
            return Err(InferenceError::Settings(format!(
                "inference.max_wait_ms {} must be at most 10000",
                self.max_wait_ms
            )));
        }
        if self.device_id < 0 {
            return Err(InferenceError::Settings(format!(
                "inference.device_id {} must not be negative",
                self.device_id
            )));
        }
        if self.cpu_threads > 1024 {
            return Err(InferenceError::Settings(format!(
                "inference.cpu_threads {} is not a thread count",
                self.cpu_threads
            )));
        }
        Ok(())
    }
}
