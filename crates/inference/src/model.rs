//! One ONNX Runtime session of a model with a valid contract, on the
//! execution provider the settings ask for.

use std::path::{Path, PathBuf};

use half::f16;
use ort::ep::{self, ExecutionProvider as _};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use serde::Serialize;

use crate::contract::{InputDType, ModelContract, WeightsKind, DEMO_WARNING};
use crate::error::{InferenceError, Result};
use crate::files::ModelFiles;
use crate::graph::{
    check_graph, check_output_is_finite, check_output_is_logits,
    check_output_is_not_a_distribution, check_rows_do_not_depend_on_the_batch, GraphSignature,
    ShapesBy,
};
use crate::inspect::{check_external_weights, read_contract, read_header};
use crate::prediction::{softmax, ModelIdentity, Prediction};
use crate::runtime::{init_runtime, locate_model_file, Runtime};
use crate::settings::{
    ArenaStrategy, ConvAlgoSearch, ExecutionProviderChoice, GraphOptimization, InferenceSettings,
};

/// The execution provider a session actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cuda,
    Cpu,
}

impl ExecutionProvider {
    pub fn as_str(&self) -> &'static str {
        match self {
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::Cpu => "cpu",
        }
    }
}

impl std::fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One image's input, in the model's element type.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageInput {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl ImageInput {
    /// Checks a `pneumo_imaging::Tensor` against the contract (shape
    /// [1,3,S,S]) and converts it to the model's element type.
    pub fn from_tensor(t: pneumo_imaging::Tensor, contract: &ModelContract) -> Result<ImageInput> {
        let s = contract.input_size as usize;
        if t.shape != [1, 3, s, s] {
            return Err(InferenceError::BadInput(format!(
                "shape {:?}, the model takes [1, 3, {s}, {s}]",
                t.shape
            )));
        }
        Ok(match (t.data, contract.input_dtype) {
            (pneumo_imaging::TensorData::F32(v), InputDType::Float32) => ImageInput::F32(v),
            (pneumo_imaging::TensorData::F16(v), InputDType::Float16) => ImageInput::F16(v),
            (pneumo_imaging::TensorData::F32(v), InputDType::Float16) => {
                ImageInput::F16(v.into_iter().map(f16::from_f32).collect())
            }
            (pneumo_imaging::TensorData::F16(v), InputDType::Float32) => {
                ImageInput::F32(v.into_iter().map(f32::from).collect())
            }
        })
    }

    fn len(&self) -> usize {
        match self {
            ImageInput::F32(v) => v.len(),
            ImageInput::F16(v) => v.len(),
        }
    }
}

/// A loaded model: its session, contract and the provider it runs on.
pub struct Model {
    session: Session,
    contract: ModelContract,
    signature: GraphSignature,
    identity: ModelIdentity,
    provider: ExecutionProvider,
    path: PathBuf,
    runtime: &'static Runtime,
    /// The model's files as loaded, looked at around each batch.
    files: std::sync::Arc<ModelFiles>,
    /// Set once the "output already a probability distribution" warning
    /// has been logged.
    warned_probabilities: std::sync::atomic::AtomicBool,
    /// Whether the load's probe ran a batch of several images (None: it
    /// tried none, batches not being served).
    runs_batches: Option<bool>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("provider", &self.provider)
            .field("identity", &self.identity)
            .finish()
    }
}

fn ort_err(e: impl std::fmt::Display) -> InferenceError {
    InferenceError::Ort(e.to_string())
}

fn base_builder(
    rt: &Runtime,
    s: &InferenceSettings,
) -> Result<ort::session::builder::SessionBuilder> {
    let mut b = Session::builder(&rt.env)
        .map_err(ort_err)?
        .with_optimization_level(match s.graph_optimization {
            GraphOptimization::All => GraphOptimizationLevel::All,
            GraphOptimization::Extended => GraphOptimizationLevel::Level2,
            GraphOptimization::Basic => GraphOptimizationLevel::Level1,
            GraphOptimization::Disabled => GraphOptimizationLevel::Disable,
        })
        .map_err(ort_err)?
        .with_log_level(ort::logging::LogLevel::Warning)
        .map_err(ort_err)?;
    if s.cpu_threads > 0 {
        b = b.with_intra_threads(s.cpu_threads).map_err(ort_err)?;
    }
    Ok(b)
}

/// Refuses, before any session, an ONNX Runtime library without the
/// execution provider the settings name (`cuda` with the CPU-only wheel's
/// library): `check-config` finds it, and `serve` exits as misconfigured.
pub fn check_provider_built(s: &InferenceSettings) -> Result<()> {
    if s.execution_provider != ExecutionProviderChoice::Cuda {
        return Ok(());
    }
    cuda_built(init_runtime(&s.ort_library)?)
}

fn cuda_built(rt: &Runtime) -> Result<()> {
    let available = ep::CUDA::is_available().map_err(|e| InferenceError::ExecutionProvider {
        provider: "cuda".into(),
        message: e.to_string(),
    })?;
    if available {
        return Ok(());
    }
    Err(InferenceError::ProviderNotBuilt {
        provider: "cuda".into(),
        library: rt.library.clone(),
        version: rt.version.clone(),
        remedy: "install onnxruntime-gpu and name its library in inference.ort_library".into(),
    })
}

/// Builds a session on `provider`. With CUDA, `strict` refuses a graph in
/// which any node would be placed on the CPU (ONNX Runtime's
/// `session.disable_cpu_ep_fallback`).
fn build_session(
    rt: &Runtime,
    s: &InferenceSettings,
    path: &Path,
    provider: ExecutionProvider,
    strict: bool,
) -> Result<Session> {
    let mut b = base_builder(rt, s)?;
    match provider {
        ExecutionProvider::Cuda => {
            let ep_err = |e: String| InferenceError::ExecutionProvider {
                provider: "cuda".into(),
                message: e,
            };
            cuda_built(rt)?;
            let mut cuda = ep::CUDA::default()
                .with_device_id(s.device_id)
                .with_arena_extend_strategy(match s.arena_strategy {
                    ArenaStrategy::SameAsRequested => ep::ArenaExtendStrategy::SameAsRequested,
                    ArenaStrategy::NextPowerOfTwo => ep::ArenaExtendStrategy::NextPowerOfTwo,
                })
                // Batches come in every size up to max_batch: an exhaustive
                // search would time each new size's convolution on arrival.
                .with_conv_algorithm_search(match s.cuda_conv_algo_search {
                    ConvAlgoSearch::Heuristic => ep::cuda::ConvAlgorithmSearch::Heuristic,
                    ConvAlgoSearch::Exhaustive => ep::cuda::ConvAlgorithmSearch::Exhaustive,
                    ConvAlgoSearch::Default => ep::cuda::ConvAlgorithmSearch::Default,
                });
            if s.cuda_mem_limit > 0 {
                cuda =
                    cuda.with_memory_limit(usize::try_from(s.cuda_mem_limit).unwrap_or(usize::MAX));
            }
            b = b
                .with_execution_providers([cuda.build().error_on_failure()])
                .map_err(|e| ep_err(e.to_string()))?;
            if strict {
                b = b.with_disable_cpu_fallback().map_err(ort_err)?;
            }
            b.commit_from_file(path).map_err(|e| ep_err(e.to_string()))
        }
        ExecutionProvider::Cpu => {
            // Batches of varying size: the memory pattern only helps fixed shapes.
            b = b.with_memory_pattern(false).map_err(ort_err)?;
            b.commit_from_file(path)
                .map_err(|e| InferenceError::ModelLoad {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })
        }
    }
}

/// Builds a session of `path` on the provider `settings.execution_provider`
/// asks for (`auto`: CUDA if it can be used, else the CPU). The classifier
/// and the lung segmentation model share it.
pub(crate) fn open_session(
    rt: &Runtime,
    settings: &InferenceSettings,
    path: &Path,
) -> Result<(Session, ExecutionProvider)> {
    Ok(match settings.execution_provider {
        ExecutionProviderChoice::Cpu => (
            build_session(rt, settings, path, ExecutionProvider::Cpu, false)?,
            ExecutionProvider::Cpu,
        ),
        ExecutionProviderChoice::Cuda => (
            build_session(
                rt,
                settings,
                path,
                ExecutionProvider::Cuda,
                !settings.allow_cpu_fallback,
            )?,
            ExecutionProvider::Cuda,
        ),
        ExecutionProviderChoice::Auto => {
            // Best effort: ONNX Runtime's own placement of small shape
            // subgraphs on the CPU is accepted here; refusing it would
            // only move the whole graph to the CPU.
            if ep::CUDA::is_available().unwrap_or(false) {
                match build_session(rt, settings, path, ExecutionProvider::Cuda, false) {
                    Ok(s) => (s, ExecutionProvider::Cuda),
                    Err(e) => {
                        // The library has CUDA and it failed: worth a warning.
                        tracing::warn!(reason = %e, "execution provider auto: CUDA failed, using the CPU");
                        (
                            build_session(rt, settings, path, ExecutionProvider::Cpu, false)?,
                            ExecutionProvider::Cpu,
                        )
                    }
                }
            } else {
                tracing::info!(
                    onnxruntime = %rt.version,
                    "execution provider auto: this ONNX Runtime has no CUDA provider, using the CPU"
                );
                (
                    build_session(rt, settings, path, ExecutionProvider::Cpu, false)?,
                    ExecutionProvider::Cpu,
                )
            }
        }
    })
}

impl Model {
    /// Loads ONNX Runtime if needed (`settings.ort_library`), then the
    /// model `settings.model`, checks its contract against the graph and
    /// builds the session on the provider `settings.execution_provider`.
    pub fn load(settings: &InferenceSettings) -> Result<Model> {
        settings.validate()?;
        let path = locate_model_file(&settings.model)?;
        let rt = init_runtime(&settings.ort_library)?;
        // The contract is read from the file as `model info` reads it (a
        // key given twice is refused there, where a session would keep one).
        let header = read_header(&path)?;
        let contract = read_contract(&path, &header)?;
        // What the file declares, as `model info` and `check-config` check
        // it (ONNX Runtime's own account, below, may differ: it merges the
        // declared shapes with those it infers, and keeps its own).
        check_graph(&path, &header.signature, &contract, ShapesBy::File)?;
        check_output_is_logits(&path, &header.output_activations, &contract)?;
        check_external_weights(&path, &header)?;
        // Stamped before the session reads them: a change while it loads
        // is found at the first batch.
        let files = std::sync::Arc::new(ModelFiles::stamp(&path, &header.external_files));
        let (session, provider) = open_session(rt, settings, &path)?;
        let signature = GraphSignature::from_session(&session);
        check_graph(&path, &signature, &contract, ShapesBy::Session)?;
        let identity = ModelIdentity::from(&contract);
        if contract.is_demo() {
            tracing::warn!(
                model = %contract.model_name,
                "{DEMO_WARNING}: pneumo.weights_kind = random-demo, the outputs are meaningless"
            );
        }
        tracing::info!(
            model = %contract.model_name,
            version = %contract.model_version,
            weights_kind = contract.weights_kind.as_str(),
            weights_sha256 = %contract.weights_sha256,
            contract_sha256 = %contract.contract_sha256,
            execution_provider = %provider,
            path = %path.display(),
            "model loaded"
        );
        let mut model = Model {
            session,
            contract,
            signature,
            identity,
            provider,
            path,
            runtime: rt,
            files,
            warned_probabilities: Default::default(),
            runs_batches: None,
        };
        model.probe(settings.max_batch)?;
        Ok(model)
    }

    /// Runs the graph on probe images: two flat ones (zeros, the mean
    /// image, and ones) and three patterned ones, alone, and the patterned
    /// ones as one batch when batches are served. Refuses it when its output
    /// is finite for none of them, when both flat images' outputs are
    /// probability distributions (`check_output_is_not_a_distribution`), or
    /// when an image's row depends on the other images of its batch
    /// (`check_rows_do_not_depend_on_the_batch`). (Flat images alone missed
    /// a graph that standardises each image before reordering rows: both
    /// became the same tensor.)
    fn probe(&mut self, max_batch: usize) -> Result<()> {
        let flat = [self.constant_image(0.0), self.constant_image(1.0)];
        let patterned = [0, 1, 2].map(|which| self.patterned_image(which));
        let mut alone = |images: &[ImageInput]| -> Result<Vec<Vec<f32>>> {
            images
                .iter()
                .map(|image| match self.run_logits(&[image]) {
                    Ok(mut rows) => Ok(rows.remove(0)),
                    // ONNX Runtime's words alone ("requested shape:{2,-1}")
                    // did not say what is wrong with the export.
                    Err(InferenceError::Run(e)) => Err(InferenceError::Run(format!(
                        "the model fails on one image ({e}): a batch size fixed inside the \
                         graph (a reshape to a constant size) fails so; export the model with \
                         its batch axis dynamic and no size fixed inside"
                    ))),
                    Err(e) => Err(e),
                })
                .collect()
        };
        let (flat_rows, patterned_rows) = (alone(&flat)?, alone(&patterned)?);
        let output = self.contract.output_name.clone();
        let output = output.as_str();
        let every_row: Vec<Vec<f32>> = flat_rows.iter().chain(&patterned_rows).cloned().collect();
        check_output_is_finite(&self.path, output, &every_row)?;
        check_output_is_not_a_distribution(&self.path, output, &flat_rows)?;
        // The largest batch of them the graph runs, up to three (a graph may
        // reorder only longer batches; one that runs only some sizes was
        // not probed at all), in their order and reversed (a graph sorting
        // its rows found them in order). A batch the graph cannot run at
        // all is the warm-up's to find (images then go one at a time).
        for n in (2..=max_batch.min(patterned.len())).rev() {
            let forward: Vec<&ImageInput> = patterned.iter().take(n).collect();
            let Ok(together) = self.run_logits(&forward) else {
                self.runs_batches.get_or_insert(false);
                continue;
            };
            self.runs_batches = Some(true);
            let alone = &patterned_rows[..n];
            check_rows_do_not_depend_on_the_batch(&self.path, output, alone, &together)?;
            let backward: Vec<&ImageInput> = forward.iter().rev().copied().collect();
            let mut together = self.run_logits(&backward)?;
            together.reverse();
            check_rows_do_not_depend_on_the_batch(&self.path, output, alone, &together)?;
            break;
        }
        Ok(())
    }

    /// A probe image of varied values, in the range a normalised image
    /// takes: 0, a ramp across; 1, a ramp down; 2, a fixed pseudo-random
    /// texture; each plane shifted by its own amount. Unlike one another in
    /// their channels' means (what a small head reads) and in their shapes
    /// (what survives a per-image standardisation).
    fn patterned_image(&self, which: usize) -> ImageInput {
        const SHIFT: [[f32; 3]; 3] = [[-1.0, 0.5, 0.2], [0.8, -0.6, 0.1], [0.3, 0.9, -0.9]];
        let s = self.contract.input_size as usize;
        let mut seed = 0x9e37_79b9_u32;
        let values = (0..self.contract.image_len()).map(|i| {
            let (x, y, plane) = ((i % s) as f32, ((i / s) % s) as f32, i / (s * s));
            let unit = match which {
                0 => x / s as f32,
                1 => y / s as f32,
                _ => {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1u32 << 24) as f32
                }
            };
            // [-3, 3]: as far as a normalised radiograph goes
            unit * 4.0 - 2.0 + SHIFT[which % 3][plane % 3]
        });
        match self.contract.input_dtype {
            InputDType::Float32 => ImageInput::F32(values.collect()),
            InputDType::Float16 => ImageInput::F16(values.map(f16::from_f32).collect()),
        }
    }

    /// An image of one value throughout, in the model's element type.
    pub fn constant_image(&self, value: f32) -> ImageInput {
        let len = self.contract.image_len();
        match self.contract.input_dtype {
            InputDType::Float32 => ImageInput::F32(vec![value; len]),
            InputDType::Float16 => ImageInput::F16(vec![f16::from_f32(value); len]),
        }
    }

    pub fn contract(&self) -> &ModelContract {
        &self.contract
    }

    /// Whether the load's probe ran a batch of several images: Some(false)
    /// when every batch it tried failed (a batch size fixed inside the
    /// graph); None when it tried none.
    pub fn runs_batches(&self) -> Option<bool> {
        self.runs_batches
    }

    /// The graph's inputs and outputs as the session reports them.
    pub fn signature(&self) -> &GraphSignature {
        &self.signature
    }

    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// The provider the session runs on (what `/readyz` reports).
    pub fn execution_provider(&self) -> ExecutionProvider {
        self.provider
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ONNX Runtime library file and its version.
    pub fn runtime(&self) -> (&Path, &str) {
        (&self.runtime.library, &self.runtime.version)
    }

    /// Runs one batch (blocking; call it from a worker thread, never from a
    /// tokio worker). One result per input, in order: a NaN/Inf row is an
    /// error for its own input only.
    pub fn run_batch(&mut self, inputs: &[&ImageInput]) -> Vec<Result<Prediction>> {
        let n = inputs.len();
        if n == 0 {
            return Vec::new();
        }
        let files = self.files.clone();
        let refused = |why: String| {
            (0..n)
                .map(|_| Err(InferenceError::ModelFilesChanged(why.clone())))
                .collect()
        };
        let before = match files.before_run() {
            Ok(look) => look,
            Err(why) => return refused(why),
        };
        let results = self.run_batch_unchecked(inputs);
        // a change during the run may have fed it a mix of two models
        match files.after_run(&before) {
            Ok(()) => results,
            Err(why) => refused(why),
        }
    }

    /// The files of the model, as stamped at load (shared with the engine,
    /// for `/readyz`).
    pub(crate) fn files(&self) -> std::sync::Arc<ModelFiles> {
        self.files.clone()
    }

    fn run_batch_unchecked(&mut self, inputs: &[&ImageInput]) -> Vec<Result<Prediction>> {
        let n = inputs.len();
        match self.run_logits(inputs) {
            Ok(rows) => rows
                .into_iter()
                .map(|logits| self.predict(logits))
                .collect(),
            // One image's failure (or a batch size the graph cannot take)
            // must not fail the others: each runs alone, and has its own
            // result.
            Err(e) if n > 1 => {
                tracing::warn!(batch = n, error = %e, "a batch failed; its images run one at a time");
                inputs
                    .iter()
                    .map(|input| self.run_batch_unchecked(&[*input]).remove(0))
                    .collect()
            }
            Err(e) => vec![Err(e)],
        }
    }

    /// The raw logits of a batch, one row per input.
    pub fn run_logits(&mut self, inputs: &[&ImageInput]) -> Result<Vec<Vec<f32>>> {
        let n = inputs.len();
        let len = self.contract.image_len();
        let s = self.contract.input_size as usize;
        if let Some(bad) = inputs.iter().find(|i| i.len() != len) {
            return Err(InferenceError::BadInput(format!(
                "{} values, the model takes {len} per image",
                bad.len()
            )));
        }
        let shape = [n, 3, s, s];
        let outputs = match self.contract.input_dtype {
            InputDType::Float32 => {
                let mut data = Vec::with_capacity(n * len);
                for i in inputs {
                    match i {
                        ImageInput::F32(v) => data.extend_from_slice(v),
                        ImageInput::F16(v) => data.extend(v.iter().map(|x| f32::from(*x))),
                    }
                }
                let t = TensorRef::from_array_view((shape, data.as_slice()))
                    .map_err(|e| InferenceError::Run(e.to_string()))?;
                self.session
                    .run(ort::inputs![self.contract.input_name.as_str() => t])
                    .map_err(|e| InferenceError::Run(e.to_string()))?
            }
            InputDType::Float16 => {
                let mut data = Vec::with_capacity(n * len);
                for i in inputs {
                    match i {
                        ImageInput::F16(v) => data.extend_from_slice(v),
                        ImageInput::F32(v) => data.extend(v.iter().map(|x| f16::from_f32(*x))),
                    }
                }
                let t = TensorRef::from_array_view((shape, data.as_slice()))
                    .map_err(|e| InferenceError::Run(e.to_string()))?;
                self.session
                    .run(ort::inputs![self.contract.input_name.as_str() => t])
                    .map_err(|e| InferenceError::Run(e.to_string()))?
            }
        };
        let out = outputs
            .get(self.contract.output_name.as_str())
            .ok_or_else(|| {
                InferenceError::BadOutput(format!("no output `{}`", self.contract.output_name))
            })?;
        let (oshape, values) = out
            .try_extract_tensor::<f32>()
            .map_err(|e| InferenceError::BadOutput(e.to_string()))?;
        let k = self.contract.labels.len();
        if oshape.len() != 2
            || oshape[0] as usize != n
            || oshape[1] as usize != k
            || values.len() != n * k
        {
            return Err(InferenceError::BadOutput(format!(
                "shape {:?}, expected [{n}, {k}]",
                &oshape[..]
            )));
        }
        Ok(values.chunks(k).map(|r| r.to_vec()).collect())
    }

    /// A graph that ends in its own softmax while its contract says
    /// logits gets a second one here: the probabilities squeezed towards
    /// 1/labels (with two labels into [0.27, 0.73]), so a threshold above
    /// that is never reached. Nothing refuses such a graph, but a row of
    /// values in [0, 1] summing to 1 is said once in the log.
    fn warn_if_already_probabilities(&self, row: &[f32]) {
        use std::sync::atomic::Ordering;
        let sum: f32 = row.iter().sum();
        let looks_like_probabilities = row.len() > 1
            && row.iter().all(|v| (0.0..=1.0).contains(v))
            && (sum - 1.0).abs() < 1e-4;
        if looks_like_probabilities && !self.warned_probabilities.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                output = ?row,
                "the model's output row lies in [0, 1] and sums to 1, as probabilities do; \
                 the contract says logits (pneumo.output_kind) and the node applies softmax \
                 to them: if the graph ends in a softmax, export it without"
            );
        }
    }

    fn predict(&self, logits: Vec<f32>) -> Result<Prediction> {
        if logits.iter().any(|x| !x.is_finite()) {
            return Err(InferenceError::NonFiniteOutput { logits });
        }
        self.warn_if_already_probabilities(&logits);
        let probabilities = softmax(&logits);
        let c = &self.contract;
        let p = probabilities[c.positive_index];
        Ok(Prediction {
            positive: p >= c.decision_threshold,
            p_positive: p,
            positive_label: c.positive_label.clone(),
            threshold: c.decision_threshold,
            labels: c.labels.clone(),
            logits,
            probabilities,
            execution_provider: self.provider,
            model: self.identity.clone(),
            warning: (c.weights_kind == WeightsKind::RandomDemo).then(|| DEMO_WARNING.to_string()),
        })
    }
}
