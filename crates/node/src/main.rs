//! pneumo-node: a DICOM node that stores chest radiographs, runs the
//! PneumoLLM classifier and returns its result as a Structured Report.

mod cmd_infer;
mod cmd_model;
mod cmd_preprocess;
mod cmd_recover;
mod commitment;
mod config;
mod diskguard;
mod http;
mod ingest;
mod logline;
mod metrics;
mod notice;
mod outbox;
mod pipeline;
mod preflight;
mod repeated;
mod reportcfg;
mod retention;
mod routing;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pneumo_dimse::{scu, AeAddress, ScpServer, ScuOptions};
use pneumo_store::Store;
use tracing::{info, warn};

use crate::config::{Config, LogFormat};

/// The build: the package version and the commit it was built from.
pub(crate) const BUILD_COMMIT: &str = env!("PNEUMO_BUILD_COMMIT");
pub(crate) const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");
const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PNEUMO_BUILD_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "pneumo-node",
    version = VERSION_LINE,
    about = "DICOM node for the PneumoLLM pneumoconiosis classifier"
)]
struct Cli {
    /// Configuration file (TOML). Without it, the embedded defaults apply;
    /// PNEUMO__SECTION__KEY environment variables override either.
    #[arg(long, short, global = true, env = "PNEUMO_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// A `--calling-ae` value: 1 to 16 characters of the default repertoire,
/// as the configuration's (17 failed inside the association request with
/// an encoder's message).
fn ae_title_argument(ae: &str) -> std::result::Result<String, String> {
    match pneumo_dimse::ae_title_problem(ae) {
        Some(problem) => Err(format!("`{}` {problem}", ae.escape_debug())),
        None => Ok(ae.to_string()),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the node: receive instances over DICOM and keep them, analyse the
    /// chest radiographs, send the reports and forward what the routing
    /// rules say; health, metrics and the status API over HTTP.
    Serve,
    /// Check the configuration and print it as the node will use it.
    CheckConfig,
    /// C-ECHO a remote application entity.
    Echo {
        /// AE@host:port
        target: AeAddress,
        /// Our AE title (default: dicom.ae_title).
        #[arg(long, value_parser = ae_title_argument)]
        calling_ae: Option<String>,
    },
    /// C-STORE files (directories are searched recursively) to a remote AE.
    Store {
        /// AE@host:port
        target: AeAddress,
        /// DICOM Part-10 files, or directories (files in them without the
        /// DICM marker are skipped).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Our AE title (default: dicom.ae_title).
        #[arg(long, value_parser = ae_title_argument)]
        calling_ae: Option<String>,
    },
    /// Write the model input tensor of one DICOM file (.npy) and a JSON report.
    Preprocess(cmd_preprocess::PreprocessArgs),
    /// Run imaging and the model on one DICOM file; print the probabilities,
    /// the decision and the execution provider used.
    Infer(cmd_infer::InferArgs),
    /// Model tools.
    #[command(subcommand)]
    Model(cmd_model::ModelCommand),
    /// With the node stopped: record the files under instances/ that the
    /// database does not name (after restoring a database backup older than
    /// the files), so that the next `serve` analyses and forwards them.
    RecoverFiles {
        /// List them without recording anything.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    // Every command: `preprocess --grey-out` writes the radiograph itself.
    keep_data_from_other_accounts();
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Preprocess(_) | Command::Infer(_) | Command::Model(_) | Command::CheckConfig
    ) {
        end_quietly_on_closed_stdout();
    }
    let exits_78_when_misconfigured = matches!(
        cli.command,
        Command::Serve | Command::CheckConfig | Command::RecoverFiles { .. }
    );
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if LOGS_IN_JSON.load(std::sync::atomic::Ordering::Relaxed) {
                // one more line a JSON log pipeline can read, not plain text
                tracing::error!(error = %error_chain(&e), "the command failed");
            } else {
                eprintln!("error: {}", error_chain(&e));
            }
            if exits_78_when_misconfigured && is_misconfiguration(&e) {
                ExitCode::from(EXIT_MISCONFIGURED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Whether the logs are JSON lines (`log.format = "json"`): the error that
/// ends the process is then one of them.
static LOGS_IN_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The exit status of `serve` (and `check-config`, `recover-files`) when the configuration
/// makes a start impossible (sysexits' EX_CONFIG). The systemd unit does not restart on it
/// (`RestartPreventExitStatus`): starting again every few seconds would
/// repeat the same error for good. Other failures (a port still taken, a
/// data directory on a disk not yet mounted) exit 1 and are restarted.
const EXIT_MISCONFIGURED: u8 = 78;

/// What `serve` and `check-config` say of a lung-box model without a lung
/// segmentation model.
const LUNG_BOX_WITHOUT_SEGMENTATION: &str = "the model's contract asks for crop lung-box and \
     inference.lung_segmentation_model is not set: every analysis will fail";

/// An error only a change of the configuration can cure (see
/// [`EXIT_MISCONFIGURED`]); shown as the error it wraps.
#[derive(Debug)]
struct Misconfigured(anyhow::Error);

impl std::fmt::Display for Misconfigured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Misconfigured {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A port this account may not listen on (below 1024 without the
/// capability to), or a data directory it may not write (made by a first
/// run as root, or on a read-only file system), stays so at every restart:
/// a misconfiguration, not restarted every 5 s for good.
fn denied_is_misconfigured(e: anyhow::Error) -> anyhow::Error {
    let denied = e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            )
        }) || cause
            .to_string()
            .contains("attempt to write a readonly database")
    });
    if denied {
        Misconfigured(e).into()
    } else {
        e
    }
}

fn is_misconfiguration(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<Misconfigured>()
            || matches!(
                cause.downcast_ref::<pneumo_store::StoreError>(),
                Some(
                    pneumo_store::StoreError::MigrationDiffers(_)
                        | pneumo_store::StoreError::MigrationFailed(_)
                        | pneumo_store::StoreError::SpoolIsALink(_)
                )
            )
            || cause
                .downcast_ref::<pneumo_inference::InferenceError>()
                .is_some_and(pneumo_inference::InferenceError::is_configuration)
    })
}

/// The error and its causes, "a: b: c", each cause once: many library
/// errors already print their source in their own message (sqlx, std::io
/// wrapped by thiserror), which `{:#}` would repeat.
fn error_chain(e: &anyhow::Error) -> String {
    joined_causes(e.chain())
}

/// Errors' messages joined "a: b: c", each once (see [`error_chain`]).
pub(crate) fn joined_causes<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut text = String::new();
    for cause in chain {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// glibc gives each thread that allocates its own arena; buffers of a MiB
/// handed between tokio's workers then keep several arenas' worth of memory
/// resident (measured: 28 MB peak for one association, 16 MB with two arenas).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called once, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Rust ignores SIGPIPE, so printing into a closed pipe
/// (`pneumo-node check-config | head`) panics. The commands that only print
/// and open no sockets (where an ignored SIGPIPE is what turns a vanished
/// peer into an error) end quietly instead, as other command-line tools do.
fn end_quietly_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: called once, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    // Offline tools that need neither configuration nor runtime.
    if let Command::Preprocess(args) = &cli.command {
        return cmd_preprocess::run(args).map(|_| ExitCode::SUCCESS);
    }
    let config = Config::load(cli.config.as_deref()).map_err(Misconfigured)?;
    init_logging(&config).map_err(Misconfigured)?;
    // One-shot inference tools: blocking, before (and without) the runtime.
    match &cli.command {
        Command::Infer(args) => {
            return cmd_infer::run(args, &config.inference).map(|_| ExitCode::SUCCESS)
        }
        Command::Model(cmd) => {
            return cmd_model::run(cmd, &config.inference).map(|_| ExitCode::SUCCESS)
        }
        _ => {}
    }
    // dicom-ul's writers and our tasks need the multi-thread runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(config).await.map(|_| ExitCode::SUCCESS),
            Command::CheckConfig => {
                // The files `serve` would load first, so that a wrong path is
                // found here and not at the next start: the model read as
                // `model info` reads it (readable by this account, ONNX, its
                // contract), without building a session.
                let model = &config.inference.model;
                let inspected = pneumo_inference::inspect_model(model)
                    .and_then(|inspected| inspected.check_weights().map(|()| inspected))
                    .with_context(|| format!("inference.model {}", model.display()))?;
                let no_segmentation_model = config
                    .inference
                    .lung_segmentation_model
                    .as_os_str()
                    .is_empty();
                if !no_segmentation_model {
                    pneumo_inference::inspect_segmentation_model(
                        &config.inference.lung_segmentation_model,
                    )
                    .context("inference.lung_segmentation_model")?;
                }
                // The ONNX Runtime library too (found, loadable, recent
                // enough), as `serve` checks it before loading it.
                pneumo_inference::runtime::library_info(&config.inference.ort_library)
                    .context("inference.ort_library")?;
                pneumo_inference::check_provider_built(&config.inference)
                    .context("inference.execution_provider")?;
                check_data_dir(&config)?;
                let mut problems = preflight::problems(&config);
                if let Err(
                    e @ (pneumo_store::StoreError::MigrationDiffers(_)
                    | pneumo_store::StoreError::MigrationFailed(_)),
                ) = pneumo_store::check_database_migrations(
                    &config.node.data_dir,
                    config.database_url(),
                )
                .await
                {
                    problems.push(format!("database: {e}"));
                }
                if !problems.is_empty() {
                    return Err(Misconfigured(anyhow::anyhow!(
                        "a start would fail: {}",
                        problems.join("; ")
                    ))
                    .into());
                }
                for warning in config
                    .warnings()
                    .into_iter()
                    .chain(preflight::warnings(&config))
                {
                    eprintln!("warning: {warning}");
                }
                if inspected.contract.crop_mode == pneumo_imaging::CropMode::LungBox
                    && no_segmentation_model
                {
                    eprintln!("warning: {LUNG_BOX_WITHOUT_SEGMENTATION}");
                }
                // TOML, so that what is printed can be kept as a config file.
                println!("{}", config.to_toml()?);
                println!("# configuration OK");
                Ok(ExitCode::SUCCESS)
            }
            Command::Echo { target, calling_ae } => echo(&config, &target, calling_ae).await,
            Command::RecoverFiles { dry_run } => {
                let store = if dry_run {
                    Store::open_to_read(&config.node.data_dir, config.database_url())
                        .await
                        .context("opening the database to read it")?
                } else {
                    Store::existing_database(&config.node.data_dir, config.database_url())?;
                    refuse_root_on_another_accounts_data(&config.node.data_dir, "recover-files")?;
                    open_store(&config).await?
                };
                cmd_recover::run(&config, store, dry_run)
                    .await
                    .map(|_| ExitCode::SUCCESS)
            }
            Command::Store {
                target,
                paths,
                calling_ae,
            } => store(&config, &target, &paths, calling_ae).await,
            Command::Preprocess(_) | Command::Infer(_) | Command::Model(_) => {
                unreachable!("handled before the runtime starts")
            }
        }
    })
}

fn init_logging(config: &Config) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    // A bare level ("info") keeps the libraries' chatter out: ort's notes
    // on its own loading (the node logs the library and version it loaded),
    // OpenJPEG's progress lines, and dicom-rs's "unsupported character set"
    // for ISO 2022 code extensions, which the node decodes itself (its only
    // warning in `stateful`). Directives given in full are used as they are.
    let level = &config.log.level;
    let directives = if level.contains('=') || level.contains(',') {
        level.clone()
    } else {
        // A bare word that is no level ("inf") is a target name to the
        // filter: every line, WARN and ERROR included, would be dropped.
        level
            .trim()
            .parse::<tracing_subscriber::filter::LevelFilter>()
            .map_err(|_| {
                anyhow::anyhow!(
                    "log.level `{level}` is not a level (trace, debug, info, warn, error, off) \
                     nor a filter with `=` (`info,pneumo_node=debug`)"
                )
            })?;
        format!("{level},ort=warn,jpeg2k=warn,dicom_parser::stateful=error")
    };
    // An empty RUST_LOG (`RUST_LOG=` in a unit file) is no filter: it
    // silenced everything but errors.
    let from_env = std::env::var("RUST_LOG").is_ok_and(|v| !v.trim().is_empty());
    let filter = if from_env {
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&directives))
    } else {
        EnvFilter::try_new(&directives)
    }
    .with_context(|| format!("log.level `{}` is not a valid filter", config.log.level))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(move || logline::OneLine::stderr(ansi));
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => {
            builder.json().init();
            LOGS_IN_JSON.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Radiographs and the database name patients: what any command of the
/// node writes is not readable by other accounts (umask 027: files 0640,
/// folders 0750), whatever umask it was started with (0022 made them
/// world-readable; `preprocess` wrote the grey radiograph 0644).
fn keep_data_from_other_accounts() {
    #[cfg(unix)]
    // SAFETY: sets the process's file mode creation mask; no memory involved.
    unsafe {
        libc::umask(0o027);
    }
}

/// `recover-files` (or `serve`) as root on a data directory another
/// account owns (the service's) wrote the files it recorded, and the
/// study folders it made, as root: the service could not read them, and
/// exactly the instances acknowledged after the backup were never analysed
/// nor forwarded (a `serve` as root left study folders in which the
/// service then refused every new instance, A700, while ready).
fn refuse_root_on_another_accounts_data(data_dir: &Path, command: &str) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: reads the process's effective user ID; no memory involved.
        let euid = unsafe { libc::geteuid() };
        let owner = std::fs::metadata(data_dir).map(|m| m.uid()).ok();
        if let Some(owner) = owner.filter(|&o| euid == 0 && o != 0) {
            return Err(Misconfigured(anyhow::anyhow!(
                "{command} runs as root on data directory {}, owned by user ID {owner}: the \
                 files it would write and the folders it would make would be root's, and the \
                 node's account could not use them; run it as the node's account (sudo -u <account> \
                 pneumo-node --config ... {command})",
                data_dir.display()
            ))
            .into());
        }
    }
    Ok(())
}

/// A file where the data directory should be: every start would fail.
fn check_data_dir(config: &Config) -> Result<()> {
    let data_dir = &config.node.data_dir;
    if data_dir.exists() && !data_dir.is_dir() {
        return Err(Misconfigured(anyhow::anyhow!(
            "node.data_dir {} is not a directory",
            data_dir.display()
        ))
        .into());
    }
    pneumo_store::refuse_a_linked_spool(data_dir)?;
    if let Some(why) = pneumo_store::instances_elsewhere(data_dir) {
        return Err(Misconfigured(anyhow::anyhow!("node.data_dir: {why}")).into());
    }
    Ok(())
}

/// The store of `node.data_dir` and its database, locked for this process.
async fn open_store(config: &Config) -> Result<Store> {
    check_data_dir(config)?;
    Ok(Store::open(&config.node.data_dir, config.database_url())
        .await
        .with_context(|| {
            let database = match config.database_url() {
                Some(url) => url.to_string(),
                None => config
                    .node
                    .data_dir
                    .join("pneumo-node.sqlite")
                    .display()
                    .to_string(),
            };
            // SQLite says "disk I/O error" when it cannot grow its
            // shared-memory file on a full disk: name the likelier cause.
            let full = match diskguard::free_bytes(&config.node.data_dir) {
                Ok(free) if free < 16 * 1_000_000 => format!(
                    "; the file system of the data directory has {} MB free: a full disk?",
                    free / 1_000_000
                ),
                _ => String::new(),
            };
            format!(
                "opening the store in {} (database {database}{full})",
                config.node.data_dir.display()
            )
        })
        .map_err(denied_is_misconfigured)?
        .with_decompress(decompress_pixel_data))
}

async fn serve(config: Config) -> Result<()> {
    for warning in config.warnings() {
        warn!("{warning}");
    }
    refuse_root_on_another_accounts_data(&config.node.data_dir, "serve")?;
    let store = Arc::new(open_store(&config).await?);
    store.start_integrity_check(&config.dicom.ae_title);
    // The model first: a wrong model or runtime is an error at start.
    let settings = config.inference.clone();
    let engine =
        tokio::task::spawn_blocking(move || pneumo_inference::InferenceEngine::start(&settings))
            .await
            .context("loading the model")?
            .context("loading the model (inference.model, inference.ort_library)")?;
    let engine = Arc::new(engine);
    let settings = config.inference.clone();
    let segmenter = tokio::task::spawn_blocking(move || {
        pneumo_inference::LungSegmenter::from_settings(&settings)
    })
    .await
    .context("loading the lung segmentation model")?
    .context("loading the lung segmentation model (inference.lung_segmentation_model)")?
    .map(Arc::new);
    let mut model_status = http::ModelStatus::of(&engine);
    model_status.detail["lung_segmentation"] = match &segmenter {
        Some(seg) => serde_json::json!({
            "path": seg.path().display().to_string(),
            "sha256": seg.sha256(),
            "input_size": seg.contract().input_size,
            "threshold": seg.contract().threshold,
            "execution_provider": seg.execution_provider().as_str(),
            "used": engine.contract().crop_mode == pneumo_imaging::CropMode::LungBox,
        }),
        None => serde_json::Value::Null,
    };
    match (engine.contract().crop_mode, &segmenter) {
        (pneumo_imaging::CropMode::LungBox, None) => {
            tracing::warn!("{LUNG_BOX_WITHOUT_SEGMENTATION}");
            model_status.unusable = Some(LUNG_BOX_WITHOUT_SEGMENTATION.to_string());
        }
        (pneumo_imaging::CropMode::None, Some(_)) => info!(
            "inference.lung_segmentation_model is set but the model's contract says crop none: \
             it is not used"
        ),
        _ => {}
    }
    if engine.contract().is_demo() {
        tracing::warn!(
            model = %engine.identity().name,
            "{}: this model has random demonstration weights; its results mean nothing",
            pneumo_inference::DEMO_WARNING
        );
    }
    info!(model = %engine.identity().name, version = %engine.identity().version,
        execution_provider = engine.execution_provider().as_str(), "model loaded");

    // SQLite: this process alone uses the database, so jobs left `analysing`
    // belong to a process that died; take them back now rather than after
    // their lease.
    let released = store.release_all_leases().await?;
    if released > 0 {
        info!(
            jobs = released,
            "jobs left analysing by a previous process queued again"
        );
    }
    let wake_outbox = Arc::new(tokio::sync::Notify::new());
    let wake_router = Arc::new(tokio::sync::Notify::new());
    let wake_pipeline = Arc::new(tokio::sync::Notify::new());
    let wake_commitment = Arc::new(tokio::sync::Notify::new());
    let metrics = Arc::new(metrics::Metrics::default());
    let disk = Arc::new(diskguard::DiskGuard {
        data_dir: config.node.data_dir.clone(),
        floor_bytes: config.node.min_free_mb * 1_000_000,
    });
    let handler = Arc::new(ingest::IngestHandler {
        store: store.clone(),
        metrics: metrics.clone(),
        disk: disk.clone(),
        routing: config.routing.clone(),
        wake_outbox: wake_outbox.clone(),
        results: config.routing.result_routing(&config.destinations),
        wake_router: wake_router.clone(),
        commitment_requesters: config
            .dicom
            .commitment_requesters
            .iter()
            .map(|r| r.ae_title.clone())
            .collect(),
        wake_commitment: wake_commitment.clone(),
    });
    tokio::spawn(ingest::run_router(
        store.clone(),
        config.routing.clone(),
        wake_router.clone(),
        wake_pipeline.clone(),
    ));
    let segmenter_in_use = segmenter
        .clone()
        .filter(|_| engine.contract().crop_mode == pneumo_imaging::CropMode::LungBox);
    let pipeline = Arc::new(pipeline::Pipeline {
        store: store.clone(),
        engine: engine.clone(),
        segmenter,
        node: config.report.node_identity(&config.dicom.ae_title),
        report: config.report.options(),
        results: config.routing.result_routing(&config.destinations),
        settings: config.pipeline.clone(),
        metrics: metrics.clone(),
        wake: wake_pipeline,
        wake_outbox: wake_outbox.clone(),
        owner: format!("{}-{}", config.dicom.ae_title, uuid::Uuid::new_v4()),
        report_locks: Default::default(),
    });
    // Set once the listener has drained: the pipeline and the outbox then
    // finish what they are doing and stop before the database closes.
    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    let grace = std::time::Duration::from_secs(config.dicom.shutdown_grace_s);
    let pipeline_done = tokio::spawn(pipeline.run(stopping_rx.clone(), grace));
    let outbox_done = tokio::spawn(
        outbox::OutboxWorker {
            store: store.clone(),
            destinations: config.destinations.clone(),
            settings: config.outbox.clone(),
            scu: ScuOptions {
                connect_timeout: std::time::Duration::from_secs(config.outbox.connect_timeout_s),
                response_timeout: std::time::Duration::from_secs(config.outbox.response_timeout_s),
                ..scu_options(&config, None)
            },
            wake: wake_outbox.clone(),
            metrics: metrics.clone(),
            stopping: stopping_rx.clone(),
            delivered_unrecorded: Default::default(),
            failures_in_a_row: Default::default(),
            out_of_resources_on: Default::default(),
            lost_before_any_answer: Default::default(),
            take_comprehensive_sr: Default::default(),
            report_uid_root: config.report.node_identity(&config.dicom.ae_title).uid_root,
        }
        .run(),
    );
    let commitment_done = tokio::spawn(
        Arc::new(commitment::CommitmentSender {
            store: store.clone(),
            requesters: config.dicom.commitment_requesters.clone(),
            scu: scu_options(&config, None),
            wake: wake_commitment,
            stopping: stopping_rx.clone(),
        })
        .run(),
    );
    let retention_done = tokio::spawn(
        retention::Retention {
            store: store.clone(),
            settings: config.retention.clone(),
            metrics: metrics.clone(),
            stopping: stopping_rx,
        }
        .run(),
    );
    let scp = ScpServer::bind(
        config.listen_addr(),
        config.scp_config(store.spool_dir()),
        handler,
    )
    .await
    .context("the DICOM listener (dicom.bind, dicom.port)")
    .map_err(denied_is_misconfigured)?;
    if config.http.enabled {
        let state = http::HttpState {
            store: store.clone(),
            metrics: metrics.clone(),
            disk: disk.clone(),
            active_associations: scp.active_counter(),
            model: Arc::new(std::sync::RwLock::new(model_status)),
            engine: Some(engine.clone()),
            segmenter: segmenter_in_use,
            wake_router,
            wake_outbox,
            destinations: config.destinations.iter().map(|d| d.name.clone()).collect(),
        };
        let addr = std::net::SocketAddr::new(config.http.bind, config.http.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for HTTP on {addr} (http.port)"))
            .map_err(denied_is_misconfigured)?;
        tokio::spawn(async move {
            if let Err(e) = http::serve(listener, state).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
    }
    info!(
        ae_title = %config.dicom.ae_title,
        addr = %scp.local_addr()?,
        data_dir = %config.node.data_dir.display(),
        version = %BUILD_VERSION,
        commit = %BUILD_COMMIT,
        "pneumo-node listening"
    );
    scp.serve(shutdown_signal()).await;
    info!("shutting down");
    stopping.send_replace(true);
    // The pipeline bounds its own wait by `grace`, and puts back what it
    // still holds; a delivery still waiting for its answer after that is
    // sent again after the restart.
    let limit = grace + std::time::Duration::from_secs(2);
    if tokio::time::timeout(limit, async {
        let _ = pipeline_done.await;
        let _ = outbox_done.await;
        let _ = commitment_done.await;
        let _ = retention_done.await;
    })
    .await
    .is_err()
    {
        tracing::warn!(
            grace_s = grace.as_secs(),
            "analyses or deliveries still running at the end of the shutdown grace; stopping \
             anyway: they run again after the restart (a destination may receive a cut delivery \
             twice; raise dicom.shutdown_grace_s where forwards take longer)"
        );
    }
    store.close().await;
    info!("stopped: the database is closed");
    Ok(())
}

/// SIGTERM, SIGINT, or SIGHUP (a closed terminal: its default action
/// killed the node at once, without the drain) start the clean stop. A
/// SIGHUP ignored when the node started (`nohup`) stays ignored.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let hangup = async {
            // asked before the handler below replaces the disposition
            if hangup_ignored_at_start() {
                return std::future::pending::<()>().await;
            }
            match signal(SignalKind::hangup()) {
                Ok(mut hup) => {
                    hup.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                    _ = hangup => info!("SIGHUP: stopping (the configuration is read at start only)"),
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Whether SIGHUP was ignored when the process started (as `nohup` does),
/// asked before anything handles it.
#[cfg(unix)]
fn hangup_ignored_at_start() -> bool {
    static IGNORED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IGNORED.get_or_init(|| {
        // SAFETY: reads the current disposition only (no new action).
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction == libc::SIG_IGN
        }
    })
}

/// The data set with native pixel data, by the analysis decoders: for a
/// destination that takes no compressed syntax, and to compare a copy
/// re-sent in another syntax with the stored one.
fn decompress_pixel_data(
    obj: dicom_object::DefaultDicomObject,
) -> Result<dicom_object::DefaultDicomObject, String> {
    pneumo_imaging::decompress(obj).map_err(|e| e.to_string())
}

fn scu_options(config: &Config, calling_ae: Option<String>) -> ScuOptions {
    ScuOptions {
        calling_ae: calling_ae.unwrap_or_else(|| config.dicom.ae_title.clone()),
        max_pdu: config.dicom.max_pdu,
        // the outbox's, as the same peers answer both
        connect_timeout: std::time::Duration::from_secs(config.outbox.connect_timeout_s),
        response_timeout: std::time::Duration::from_secs(config.outbox.response_timeout_s),
        open_file: |path| pneumo_store::open_instance(path, None),
        decompress: Some(scu::Decompressor {
            can_decompress: pneumo_imaging::can_decompress,
            decompress: decompress_pixel_data,
        }),
    }
}

async fn echo(config: &Config, target: &AeAddress, calling_ae: Option<String>) -> Result<ExitCode> {
    let outcome = scu::echo(target, &scu_options(config, calling_ae)).await?;
    println!("C-ECHO {target}: status {}", outcome.status);
    Ok(if outcome.status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn store(
    config: &Config,
    target: &AeAddress,
    paths: &[PathBuf],
    calling_ae: Option<String>,
) -> Result<ExitCode> {
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, &mut files).with_context(|| format!("reading {}", p.display()))?;
    }
    let outcomes = scu::store_files(target, &scu_options(config, calling_ae), &files).await?;
    let (mut ok, mut warned, mut failed) = (0, 0, 0);
    for o in &outcomes {
        let comment = o
            .error_comment
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        match &o.result {
            Ok(s) if s.is_success() => {
                ok += 1;
                println!(
                    "OK       {} {}{comment}",
                    o.path.display(),
                    o.sop_instance_uid
                );
            }
            Ok(s) if s.is_warning() => {
                warned += 1;
                println!(
                    "WARNING  {} {} status {s}{comment}",
                    o.path.display(),
                    o.sop_instance_uid
                );
            }
            Ok(s) => {
                failed += 1;
                println!(
                    "FAILED   {} {} status {s}{comment}",
                    o.path.display(),
                    o.sop_instance_uid
                );
            }
            Err(e) => {
                failed += 1;
                println!("FAILED   {} {e}", o.path.display());
            }
        }
    }
    println!("{ok} stored, {warned} with warnings, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Files under `path` (itself if a file), in a stable order.
/// The files to send: `path` itself, or the DICOM Part-10 files under a
/// directory (found by their `DICM` marker; other files there, notes or
/// exports, are listed as skipped, not failed). A file named explicitly is
/// always tried, so that a wrong one is reported.
fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    collect(path, out, true)
}

fn collect(path: &Path, out: &mut Vec<PathBuf>, named: bool) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            collect(&e, out, false)?;
        }
    } else {
        std::fs::metadata(path)?;
        if named || has_part10_marker(path) {
            out.push(path.to_path_buf());
        } else {
            println!("SKIPPED  {} (not a DICOM Part-10 file)", path.display());
        }
    }
    Ok(())
}

fn has_part10_marker(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut marker = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(128))?;
            f.read_exact(&mut marker)
        })
        .is_ok()
        && &marker == b"DICM"
}
