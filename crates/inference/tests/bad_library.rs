//! Bad ONNX Runtime libraries, one test each. This test binary never loads
//! the real library (ONNX Runtime is loaded once per process), so every
//! test here goes through the same checks as a node starting up.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use pneumo_inference::runtime::check_library;
use pneumo_inference::{InferenceError, InferenceSettings, Model};

/// A shared library that exports `OrtGetApiBase` and says it is ONNX
/// Runtime `version` (built with the system C compiler).
fn fake_ort(dir: &Path, version: &str) -> PathBuf {
    let src = dir.join("fake_ort.c");
    std::fs::write(
        &src,
        format!(
            r#"#include <stddef.h>
typedef struct {{ const void *(*GetApi)(unsigned); const char *(*GetVersionString)(void); }} OrtApiBase;
static const void *get_api(unsigned v) {{ (void)v; return NULL; }}
static const char *version(void) {{ return "{version}"; }}
static const OrtApiBase base = {{ get_api, version }};
const OrtApiBase *OrtGetApiBase(void) {{ return &base; }}
"#
        ),
    )
    .unwrap();
    let out = dir.join(format!("libonnxruntime.so.{version}"));
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("these tests need a C compiler (`cc`) to build a fake ONNX Runtime");
    assert!(status.success());
    out
}

fn settings_with(lib: &Path) -> InferenceSettings {
    InferenceSettings {
        ort_library: lib.to_path_buf(),
        model: models().join("pneumollm-tiny.onnx"),
        ..InferenceSettings::default()
    }
}

#[test]
fn a_missing_library() {
    let e = Model::load(&settings_with(Path::new(
        "/nonexistent/libonnxruntime.so.1.31.1",
    )))
    .unwrap_err();
    assert!(matches!(e, InferenceError::LibraryMissing { .. }), "{e:?}");
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn a_file_that_is_not_a_library() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&p, "not a library").unwrap();
    let e = Model::load(&settings_with(&p)).unwrap_err();
    assert!(matches!(e, InferenceError::LibraryInvalid { .. }), "{e:?}");
    assert!(e.to_string().contains("not an ELF shared library"), "{e}");
}

#[test]
fn a_library_that_is_not_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("other.c");
    std::fs::write(&src, "int something(void) { return 1; }\n").unwrap();
    let lib = dir.path().join("libother.so");
    let ok = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .expect("these tests need a C compiler (`cc`)");
    assert!(ok.success());
    let e = check_library(&lib).unwrap_err();
    assert!(
        e.to_string().contains("does not export OrtGetApiBase"),
        "{e}"
    );
}

#[test]
fn a_too_old_library() {
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_ort(dir.path(), "1.16.3");
    let e = Model::load(&settings_with(&lib)).unwrap_err();
    match &e {
        InferenceError::LibraryTooOld { found, needed, .. } => {
            assert_eq!(found, "1.16.3");
            assert_eq!(*needed, pneumo_inference::runtime::MIN_ORT_MINOR);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("too old"), "{e}");
    // a new enough version passes the check (the real load is elsewhere)
    let lib = fake_ort(dir.path(), "1.31.1");
    assert_eq!(check_library(&lib).unwrap(), "1.31.1");
}

#[test]
fn the_venv_library_is_found_and_passes_the_check() {
    let lib = ort_library();
    let v = check_library(&lib).unwrap();
    assert!(v.starts_with("1."), "{v}");
}
