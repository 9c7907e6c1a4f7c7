//! The micro-batcher: requests from any thread or task go through a
//! channel to one dedicated worker thread that owns the session, gathers up
//! to `max_batch` requests (waiting at most `max_wait_ms` after the first),
//! runs them as one batch and answers each through its own oneshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::contract::ModelContract;
use crate::error::{InferenceError, Result};
use crate::model::{ExecutionProvider, ImageInput, Model};
use crate::prediction::{ModelIdentity, Prediction};
use crate::settings::InferenceSettings;

struct Request {
    input: ImageInput,
    reply: oneshot::Sender<Result<Prediction>>,
}

/// Batching parameters.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub max_wait: Duration,
}

impl From<&InferenceSettings> for BatchConfig {
    fn from(s: &InferenceSettings) -> Self {
        BatchConfig {
            max_batch: s.max_batch.max(1),
            max_wait: Duration::from_millis(s.max_wait_ms),
        }
    }
}

/// Counters of the worker (for metrics).
#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    images: AtomicU64,
    largest_batch: AtomicU64,
}

/// What the worker has run so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    /// Batches run (the warm-up not counted).
    pub batches: u64,
    /// Images run.
    pub images: u64,
    /// The largest batch run.
    pub largest_batch: u64,
}

/// The model served by a worker thread. Cheap to share (`Arc`); dropping
/// the last handle stops the worker after the requests already queued.
pub struct InferenceEngine {
    tx: Option<mpsc::Sender<Request>>,
    worker: Option<JoinHandle<()>>,
    contract: ModelContract,
    identity: ModelIdentity,
    provider: ExecutionProvider,
    batch: BatchConfig,
    counters: Arc<Counters>,
    files: Arc<crate::files::ModelFiles>,
}

impl std::fmt::Debug for InferenceEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceEngine")
            .field("identity", &self.identity)
            .field("provider", &self.provider)
            .field("batch", &self.batch)
            .finish()
    }
}

impl InferenceEngine {
    /// Loads the model (blocking: call it before the runtime starts or in
    /// `spawn_blocking`), runs the warm-up if configured, and starts the
    /// worker thread.
    pub fn start(settings: &InferenceSettings) -> Result<InferenceEngine> {
        let model = Model::load(settings)?;
        Self::from_model(model, settings.into(), settings.warmup)
    }

    /// Serves an already loaded model.
    pub fn from_model(
        mut model: Model,
        mut batch: BatchConfig,
        warmup: bool,
    ) -> Result<InferenceEngine> {
        if warmup {
            let t = Instant::now();
            let zeros = model.constant_image(0.0);
            model.run_logits(&[&zeros])?;
            // A batch too: on CUDA a full one (the memory arena grows to the
            // largest batch now rather than during the first busy minute),
            // on the CPU two images. A graph that declares a dynamic batch
            // but runs only one image (a batch size fixed inside it, out of
            // sight of the contract check) fails here, not on every batch.
            let mut warmed = 1;
            if batch.max_batch > 1 {
                let size = if model.execution_provider() == ExecutionProvider::Cuda {
                    batch.max_batch
                } else {
                    2
                };
                match model.run_logits(&vec![&zeros; size]) {
                    Ok(_) => warmed = size,
                    Err(e) => {
                        tracing::warn!(
                            batch = size,
                            error = %e,
                            "the model fails on a batch of {size} images but runs one: \
                             images run one at a time (inference.max_batch taken as 1)"
                        );
                        batch.max_batch = 1;
                    }
                }
            }
            tracing::info!(
                ms = t.elapsed().as_secs_f64() * 1e3,
                largest_batch = warmed,
                execution_provider = %model.execution_provider(),
                "inference warm-up done"
            );
        }
        // Without a warm-up, the load's probe tells the same (the batches
        // failed and were run again image by image, every one).
        if !warmup && batch.max_batch > 1 && model.runs_batches() == Some(false) {
            tracing::warn!(
                "the model fails on a batch of images but runs one: images run one at a time \
                 (inference.max_batch taken as 1)"
            );
            batch.max_batch = 1;
        }
        let contract = model.contract().clone();
        let identity = model.identity().clone();
        let provider = model.execution_provider();
        let files = model.files();
        hash_in_background(files.clone());
        let (tx, rx) = mpsc::channel::<Request>();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let worker = std::thread::Builder::new()
            .name("pneumo-inference".into())
            .spawn(move || worker_loop(model, rx, batch, &c))
            .map_err(|e| InferenceError::Ort(format!("starting the inference thread: {e}")))?;
        Ok(InferenceEngine {
            tx: Some(tx),
            worker: Some(worker),
            contract,
            identity,
            provider,
            batch,
            counters,
            files,
        })
    }

    /// Why the model no longer runs: one of its files changed on disk
    /// since it was loaded (see `files`).
    pub fn files_changed(&self) -> Option<String> {
        self.files.changed()
    }

    /// Batches and images run so far.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            images: self.counters.images.load(Ordering::Relaxed),
            largest_batch: self.counters.largest_batch.load(Ordering::Relaxed),
        }
    }

    pub fn contract(&self) -> &ModelContract {
        &self.contract
    }

    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// The provider actually used (for the log and `/readyz`).
    pub fn execution_provider(&self) -> ExecutionProvider {
        self.provider
    }

    pub fn batch_config(&self) -> BatchConfig {
        self.batch
    }

    fn submit(
        &self,
        tensor: pneumo_imaging::Tensor,
    ) -> Result<oneshot::Receiver<Result<Prediction>>> {
        let input = ImageInput::from_tensor(tensor, &self.contract)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or(InferenceError::WorkerGone)?
            .send(Request { input, reply })
            .map_err(|_| InferenceError::WorkerGone)?;
        Ok(rx)
    }

    /// Classifies one image (a [1,3,S,S] tensor from `pneumo_imaging`).
    /// Never blocks the calling task's thread: the work runs on the
    /// engine's worker thread.
    pub async fn infer(&self, tensor: pneumo_imaging::Tensor) -> Result<Prediction> {
        let rx = self.submit(tensor)?;
        rx.await.map_err(|_| InferenceError::WorkerGone)?
    }

    /// The same, blocking the calling thread (CLI, tests). Must not be
    /// called from inside an async task.
    pub fn infer_blocking(&self, tensor: pneumo_imaging::Tensor) -> Result<Prediction> {
        let rx = self.submit(tensor)?;
        rx.blocking_recv().map_err(|_| InferenceError::WorkerGone)?
    }
}

impl Drop for InferenceEngine {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn worker_loop(
    mut model: Model,
    rx: mpsc::Receiver<Request>,
    cfg: BatchConfig,
    counters: &Counters,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(cfg.max_batch);
    // Blocks until a request arrives; ends when every sender is gone.
    while let Ok(first) = rx.recv() {
        batch.push(first);
        let deadline = Instant::now() + cfg.max_wait;
        while batch.len() < cfg.max_batch {
            // Take what is already queued without waiting, then wait.
            match rx.try_recv() {
                Ok(r) => {
                    batch.push(r);
                    continue;
                }
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match rx.recv_timeout(deadline - now) {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // Requests whose caller has gone are not run.
        batch.retain(|r| !r.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let inputs: Vec<&ImageInput> = batch.iter().map(|r| &r.input).collect();
        let t = Instant::now();
        let results = model.run_batch(&inputs);
        let n = inputs.len() as u64;
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters.images.fetch_add(n, Ordering::Relaxed);
        counters.largest_batch.fetch_max(n, Ordering::Relaxed);
        tracing::debug!(
            batch = batch.len(),
            ms = t.elapsed().as_secs_f64() * 1e3,
            "inference batch"
        );
        for (req, res) in batch.drain(..).zip(results) {
            let _ = req.reply.send(res);
        }
    }
}

/// Hashes the model's files as loaded, off the start's path (a model of
/// gigabytes takes seconds): once the hash is known, a stamp moved by
/// `chmod`, `touch` or the same bytes copied over them no longer stops the
/// model (see `files`).
fn hash_in_background(files: Arc<crate::files::ModelFiles>) {
    let spawned = std::thread::Builder::new()
        .name("pneumo-model-hash".into())
        .spawn(move || match files.sha256() {
            Ok(sha256) => {
                // each file's as `sha256sum` prints it, to check against
                // a release's list; the first over them all, one after
                // the other
                let each: Vec<String> = files
                    .file_hashes()
                    .into_iter()
                    .map(|(path, hash)| format!("{}={}", path.display(), hash.unwrap_or_default()))
                    .collect();
                tracing::info!(%sha256, files = %each.join(" "), "model files hashed")
            }
            Err(e) => tracing::warn!(
                error = %e,
                "the model's files could not be hashed as loaded: the next change of their \
                 stamps (even a chmod or touch) stops analyses until a restart"
            ),
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the thread hashing the model's files");
    }
}
