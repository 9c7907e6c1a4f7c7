//! `inspect_model` (the ONNX file read without a session) against
//! `Model::load` (an ONNX Runtime session): the same contract, the same
//! graph signature, the same refusals; a corrupt file is an error, never a
//! panic.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use pneumo_inference::{
    inspect_model, ContractError, GraphDim, GraphValueType, InferenceError, InputDType, Model,
};

fn bad(name: &str) -> PathBuf {
    models().join("bad").join(name)
}

/// Both paths agree on a good model; returns what the file says.
fn same_through_both(path: &Path) -> pneumo_inference::InspectedModel {
    let inspected = inspect_model(path).expect("inspection");
    let model = Model::load(&cpu_settings(path)).expect("session");
    assert_eq!(&inspected.contract, model.contract());
    assert_eq!(&inspected.signature, model.signature());
    assert_eq!(inspected.path, model.path());
    inspected
}

#[test]
fn the_fp32_demo_model_reads_the_same_without_a_session() {
    let i = same_through_both(&models().join("pneumollm-tiny.onnx"));
    assert_eq!(i.contract.model_name, "pneumollm-tiny");
    assert_eq!(i.contract.input_dtype, InputDType::Float32);
    let input = &i.signature.inputs[0];
    assert_eq!(input.name, "image");
    match &input.ty {
        GraphValueType::Tensor { shape, .. } => {
            let shape = shape.as_deref().expect("a declared shape");
            assert!(matches!(shape[0], GraphDim::Dynamic(_)), "{shape:?}");
            assert_eq!(
                shape[1..],
                [
                    GraphDim::Fixed(3),
                    GraphDim::Fixed(224),
                    GraphDim::Fixed(224)
                ]
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_fp16_demo_model_reads_the_same_without_a_session() {
    let i = same_through_both(&models().join("pneumollm-tiny-fp16.onnx"));
    assert_eq!(i.contract.input_dtype, InputDType::Float16);
}

/// The error of each path, for a model both must refuse.
fn both_refuse(path: &Path) -> (InferenceError, InferenceError) {
    let by_inspection = inspect_model(path).expect_err("inspection must refuse it");
    let by_session = Model::load(&cpu_settings(path)).expect_err("the session must refuse it");
    (by_inspection, by_session)
}

#[test]
fn a_missing_file_is_model_missing_for_both() {
    let (i, s) = both_refuse(&bad("no-such-model.onnx"));
    assert!(matches!(i, InferenceError::ModelMissing { .. }), "{i:?}");
    assert!(matches!(s, InferenceError::ModelMissing { .. }), "{s:?}");
    assert_eq!(i.to_string(), s.to_string());
}

#[test]
fn a_file_that_is_not_onnx_is_model_load_for_both() {
    let (i, s) = both_refuse(&bad("not-onnx.onnx"));
    assert!(matches!(s, InferenceError::ModelLoad { .. }), "{s:?}");
    assert!(matches!(i, InferenceError::ModelLoad { .. }), "{i:?}");
    let msg = i.to_string();
    assert!(msg.contains("cannot load model"), "{msg}");
    assert!(msg.contains("not-onnx.onnx"), "{msg}");
}

#[test]
fn no_contract_names_the_same_missing_key() {
    let (i, s) = both_refuse(&bad("no-contract.onnx"));
    let key = |e: &InferenceError| match e {
        InferenceError::Contract {
            problem: ContractError::MissingKey { key },
            ..
        } => *key,
        other => panic!("{other:?}"),
    };
    assert_eq!(key(&i), "pneumo.contract_version");
    assert_eq!(key(&s), "pneumo.contract_version");
    assert_eq!(i.to_string(), s.to_string());
}

#[test]
fn the_wrong_rank_gives_the_same_message() {
    let (i, s) = both_refuse(&bad("wrong-rank.onnx"));
    assert!(
        matches!(
            i,
            InferenceError::Contract {
                problem: ContractError::Graph(_),
                ..
            }
        ),
        "{i:?}"
    );
    assert_eq!(i.to_string(), s.to_string());
    assert!(i.to_string().contains("input `image` has rank 3"), "{i}");
}

#[test]
fn a_nan_output_model_passes_inspection() {
    // Only bad when it runs.
    let i = same_through_both(&bad("nan-output.onnx"));
    assert_eq!(i.contract.model_name, "test-nan-output");
}

/// A clear ModelLoad error naming the file, never a panic.
fn unreadable(path: &Path) -> String {
    match inspect_model(path) {
        Err(e @ InferenceError::ModelLoad { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("not a readable ONNX file"), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            msg
        }
        other => panic!("{}: {other:?}", path.display()),
    }
}

#[test]
fn a_truncated_model_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(models().join("pneumollm-tiny.onnx")).unwrap();
    // Cuts in the header, in the graph (the bulk of the file) and in the
    // last metadata entry (the contract follows the graph).
    for keep in [
        1,
        10,
        100,
        4096,
        full.len() / 2,
        full.len() - 2000,
        full.len() - 1,
    ] {
        let path = dir.path().join(format!("cut-{keep}.onnx"));
        std::fs::write(&path, &full[..keep]).unwrap();
        let msg = unreadable(&path);
        assert!(msg.contains("at byte"), "{msg}");
    }
}

#[test]
fn random_bytes_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed pseudo-random sequence (LCG): the same bytes on every run.
    let mut x: u64 = 0x5eed;
    for (n, len) in [16usize, 1000, 1 << 20].into_iter().enumerate() {
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (x >> 56) as u8
            })
            .collect();
        let path = dir.path().join(format!("random-{n}.onnx"));
        std::fs::write(&path, data).unwrap();
        unreadable(&path);
    }
}
