//! Helpers of the integration tests: fixture paths, a small .npy reader,
//! and the ONNX Runtime library (found as the node finds it; a test FAILS
//! with a clear message when it is absent: `make deps` installs it).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use pneumo_inference::{ExecutionProviderChoice, InferenceSettings};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn models() -> PathBuf {
    repo().join("fixtures/models")
}

/// The ONNX Runtime library, or a failed test saying how to get it.
pub fn ort_library() -> PathBuf {
    // The tests run with the crate directory as working directory: look in
    // the repository's .venv first.
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv_lib = repo().join(".venv/lib");
    if let Ok(dirs) = std::fs::read_dir(&venv_lib) {
        for d in dirs.flatten() {
            let capi = d.path().join("site-packages/onnxruntime/capi");
            if let Ok(files) = std::fs::read_dir(&capi) {
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().to_string();
                    if name.starts_with("libonnxruntime.so.1.") {
                        return f.path();
                    }
                }
            }
        }
    }
    match pneumo_inference::runtime::resolve_library(Path::new("")) {
        Ok(p) => p,
        Err(e) => panic!(
            "these tests need ONNX Runtime and none was found ({e}). \
             Run `make deps` (installs the onnxruntime wheel into .venv) or set ORT_DYLIB_PATH."
        ),
    }
}

pub fn cpu_settings(model: &Path) -> InferenceSettings {
    InferenceSettings {
        model: model.to_path_buf(),
        ort_library: ort_library(),
        execution_provider: ExecutionProviderChoice::Cpu,
        cpu_threads: 2,
        ..InferenceSettings::default()
    }
}

/// A little-endian float32 .npy file: (shape, values).
pub fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&raw[..6], b"\x93NUMPY", "{}", path.display());
    let (hlen, start) = if raw[6] == 1 {
        (u16::from_le_bytes([raw[8], raw[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&raw[start..start + hlen]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_str
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let values: Vec<f32> = raw[start + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(values.len(), shape.iter().product::<usize>());
    (shape, values)
}

/// A [1,3,S,S] imaging tensor from values.
pub fn tensor(values: Vec<f32>, size: usize) -> pneumo_imaging::Tensor {
    assert_eq!(values.len(), 3 * size * size);
    pneumo_imaging::Tensor {
        shape: [1, 3, size, size],
        data: pneumo_imaging::TensorData::F32(values),
    }
}
