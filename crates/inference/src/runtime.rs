//! Finding, checking and loading the ONNX Runtime shared library, and the
//! one ONNX Runtime environment of the process.

use std::ffi::CStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::{InferenceError, Result};

/// The ONNX Runtime minor version this build needs at least (the `api-NN`
/// feature of `ort`).
pub const MIN_ORT_MINOR: u32 = ort::MINOR_VERSION;

/// The loaded runtime: one per process.
pub struct Runtime {
    pub(crate) env: ort::environment::Environment,
    /// The library file loaded.
    pub library: PathBuf,
    /// Its version string, e.g. `1.31.1`.
    pub version: String,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.library)
            .field("version", &self.version)
            .finish()
    }
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// Where the library is looked for when nothing is configured: the
/// onnxruntime wheel in a `.venv` of the working directory, then of each
/// folder above the executable (target/release/pneumo-node → the repository).
pub fn default_search_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            if !roots.iter().any(|r| r == dir) {
                roots.push(dir.to_path_buf());
            }
        }
    }
    roots
}

/// The path of the library to load: `configured` if not empty, else
/// `ORT_DYLIB_PATH`, else the newest `libonnxruntime.so.X.Y.Z` of an
/// onnxruntime wheel under `<root>/.venv/lib/python3.*/site-packages/onnxruntime/capi/`.
pub fn resolve_library(configured: &Path) -> Result<PathBuf> {
    if !configured.as_os_str().is_empty() {
        return Ok(configured.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let roots = default_search_roots();
    for root in &roots {
        if let Some(found) = find_in_venv(&root.join(".venv")) {
            return Ok(found);
        }
    }
    Err(InferenceError::LibraryNotFound {
        looked: roots
            .iter()
            .map(|r| {
                r.join(".venv/lib/python3.*/site-packages/onnxruntime/capi")
                    .display()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// `1.31.1` from `libonnxruntime.so.1.31.1`.
fn wheel_version(name: &str) -> Option<Vec<u32>> {
    let v = name.strip_prefix("libonnxruntime.so.")?;
    v.split('.').map(|p| p.parse::<u32>().ok()).collect()
}

fn find_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for py in std::fs::read_dir(&lib).ok()?.flatten() {
        if !py.file_name().to_string_lossy().starts_with("python3") {
            continue;
        }
        let capi = py.path().join("site-packages/onnxruntime/capi");
        let Ok(entries) = std::fs::read_dir(&capi) else {
            continue;
        };
        for e in entries.flatten() {
            if let Some(v) = wheel_version(&e.file_name().to_string_lossy()) {
                if best.as_ref().is_none_or(|(bv, _)| v > *bv) {
                    best = Some((v, e.path()));
                }
            }
        }
    }
    best.map(|(_, p)| p)
}

/// Checks a library file before `ort` touches it: it exists, is an ELF
/// shared object (on Linux), exports `OrtGetApiBase`, and reports a version
/// 1.N with N ≥ [`MIN_ORT_MINOR`]. Returns the version string.
pub fn check_library(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|_| InferenceError::LibraryMissing {
        path: path.to_path_buf(),
    })?;
    let invalid = |reason: String| InferenceError::LibraryInvalid {
        path: path.to_path_buf(),
        reason,
    };
    if !meta.is_file() {
        return Err(invalid("not a file".into()));
    }
    #[cfg(target_os = "linux")]
    {
        let mut magic = [0u8; 4];
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .map_err(|e| invalid(format!("cannot read it: {e}")))?;
        if magic != *b"\x7fELF" {
            return Err(invalid("not an ELF shared library".into()));
        }
    }
    // SAFETY: loading a shared library runs its initialisers; the file is
    // the one the operator configured as ONNX Runtime.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
        // libloading's message is "dlopen failed"; the reason (a missing
        // dependency, an undefined symbol) is its source, dlerror's text.
        let why = std::error::Error::source(&e).map_or(e.to_string(), |s| format!("{e}: {s}"));
        invalid(format!("cannot load it: {why}"))
    })?;
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: the symbol's signature is ONNX Runtime's C API.
    let getter: libloading::Symbol<GetApiBase> = unsafe { lib.get(b"OrtGetApiBase") }
        .map_err(|_| invalid("it does not export OrtGetApiBase".into()))?;
    // SAFETY: OrtGetApiBase takes no argument and returns a static struct.
    let base = unsafe { getter() };
    if base.is_null() {
        return Err(invalid("OrtGetApiBase returned null".into()));
    }
    // SAFETY: base is non-null and points to ONNX Runtime's static OrtApiBase.
    let vptr = unsafe { ((*base).GetVersionString)() };
    if vptr.is_null() {
        return Err(invalid("GetVersionString returned null".into()));
    }
    // SAFETY: a NUL-terminated static string.
    let version = unsafe { CStr::from_ptr(vptr) }
        .to_str()
        .map_err(|_| invalid("its version string is not UTF-8".into()))?
        .to_string();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let (major, minor) = match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(invalid(format!("unreadable version {version:?}"))),
    };
    if major != 1 || minor < MIN_ORT_MINOR {
        return Err(InferenceError::LibraryTooOld {
            path: path.to_path_buf(),
            found: version,
            needed: MIN_ORT_MINOR,
        });
    }
    Ok(version)
}

/// The library [`init_runtime`] would load and its version, checked as it
/// checks it, without creating an ONNX Runtime environment (for tools that
/// only report it, such as `model info`).
pub fn library_info(configured: &Path) -> Result<(PathBuf, String)> {
    checked_library(resolve_library(configured)?)
}

/// [`check_library`], then the file's canonical path.
fn checked_library(requested: PathBuf) -> Result<(PathBuf, String)> {
    let version = check_library(&requested)?;
    let library = std::fs::canonicalize(&requested).unwrap_or(requested);
    Ok((library, version))
}

/// Loads ONNX Runtime (once per process) and creates the environment.
/// Later calls return the same runtime if they ask for the same library
/// (or for none in particular), and an error if they name another one.
pub fn init_runtime(configured: &Path) -> Result<&'static Runtime> {
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    let requested = resolve_library(configured)?;
    if let Some(rt) = RUNTIME.get() {
        if configured.as_os_str().is_empty() || same_file(&rt.library, &requested) {
            return Ok(rt);
        }
        return Err(InferenceError::LibraryAlreadyLoaded {
            loaded: rt.library.clone(),
            requested,
        });
    }
    let (library, version) = checked_library(requested)?;
    let env = ort::init_from(&library)
        .map_err(|e| InferenceError::LibraryInvalid {
            path: library.clone(),
            reason: e.to_string(),
        })?
        .with_name("pneumo-node")
        .with_telemetry(false)
        .build()
        .map_err(|e| InferenceError::Ort(format!("creating the environment: {e}")))?;
    // ONNX Runtime's own info messages are hundreds of lines per session.
    env.set_log_level(ort::logging::LogLevel::Warning);
    tracing::info!(library = %library.display(), %version, "ONNX Runtime loaded");
    Ok(RUNTIME.get_or_init(|| Runtime {
        env,
        library,
        version,
    }))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Resolves a relative data path (the model): the working directory first,
/// then each folder above the executable. Absolute paths are returned as is.
/// `path` resolved as `resolve_data_path` does, when it names a file;
/// otherwise the error says what is there instead, or where a relative path
/// was looked for.
pub fn locate_model_file(path: &Path) -> Result<PathBuf, crate::InferenceError> {
    let resolved = resolve_data_path(path);
    let why = if resolved.is_file() {
        return Ok(path_beside_the_weights(&resolved));
    } else if resolved.is_dir() {
        "is a directory, not a model file".to_string()
    } else {
        // There but not reachable (a folder the account cannot enter), or a
        // device, is said as it is, not "does not exist".
        match std::fs::metadata(&resolved) {
            Ok(_) => "is not a regular file".to_string(),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                format!("cannot be reached ({e})")
            }
            Err(_) if path.is_relative() => "does not exist (a relative path is looked up in \
                the working directory, then in the directories above the executable)"
                .to_string(),
            Err(_) => "does not exist".to_string(),
        }
    };
    Err(crate::InferenceError::ModelMissing {
        path: resolved,
        why,
    })
}

/// The path ONNX Runtime is to load `model` by: it looks for external
/// weights beside the path it is given and refuses any outside that
/// directory. Usually the real file, so that a link (`current.onnx ->
/// v2/model.onnx`) finds the weights beside its target; but the link itself
/// where the weights are beside it and not beside the target (a cache of
/// links to content-named files: `snapshot/model.onnx -> blobs/3f2a…`,
/// `snapshot/model.onnx.data -> blobs/9c1e…`).
fn path_beside_the_weights(model: &Path) -> PathBuf {
    let real = model.canonicalize().unwrap_or_else(|_| model.to_path_buf());
    let given = std::path::absolute(model).unwrap_or_else(|_| model.to_path_buf());
    if real == given {
        return real;
    }
    let Ok(header) = crate::onnx_proto::read_onnx_header(&real) else {
        return real;
    };
    let all_beside = |file: &Path| {
        let dir = file.parent().unwrap_or(Path::new("."));
        header.external_files.iter().all(|f| dir.join(f).is_file())
    };
    if !all_beside(&real) && all_beside(&given) {
        given
    } else {
        real
    }
}

pub fn resolve_data_path(path: &Path) -> PathBuf {
    if path.is_absolute() || path.exists() {
        return path.to_path_buf();
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            let candidate = dir.join(path);
            if candidate.exists() {
                return candidate;
            }
        }
    }
    path.to_path_buf()
}
