//! The demo model under ONNX Runtime from Rust: the committed expected
//! logits, batched = one by one, 64 concurrent requests through the
//! batcher, the contract and the demo warning.

mod common;

use std::sync::Arc;

use common::*;
use pneumo_inference::{
    ExecutionProvider, ImageInput, InferenceEngine, Model, WeightsKind, DEMO_WARNING,
};

const TOL: f64 = 1e-5;
const S: usize = 224;

fn fixture_inputs() -> Vec<Vec<f32>> {
    let (shape, v) = read_npy_f32(&models().join("pneumollm-tiny.inputs.npy"));
    assert_eq!(shape, vec![2, 3, S, S]);
    v.chunks(3 * S * S).map(|c| c.to_vec()).collect()
}

fn expected_logits() -> Vec<Vec<f32>> {
    let (shape, v) = read_npy_f32(&models().join("pneumollm-tiny.expected-logits.npy"));
    assert_eq!(shape, vec![2, 2]);
    v.chunks(2).map(|c| c.to_vec()).collect()
}

fn close<T: Into<f64> + Copy>(a: &[T], b: &[T]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| ((*x).into() - (*y).into()).abs())
        .fold(0.0, f64::max)
}

fn load() -> Model {
    Model::load(&cpu_settings(&models().join("pneumollm-tiny.onnx"))).unwrap()
}

#[test]
fn tiny_model_gives_the_committed_logits_batched_and_one_by_one() {
    let mut model = load();
    assert_eq!(model.execution_provider(), ExecutionProvider::Cpu);
    let inputs: Vec<ImageInput> = fixture_inputs().into_iter().map(ImageInput::F32).collect();
    let expected = expected_logits();
    let refs: Vec<&ImageInput> = inputs.iter().collect();
    let batched = model.run_logits(&refs).unwrap();
    for (got, want) in batched.iter().zip(&expected) {
        assert!(close(got, want) <= TOL, "batched {got:?} vs {want:?}");
    }
    for (i, input) in inputs.iter().enumerate() {
        let one = model.run_logits(&[input]).unwrap();
        assert!(
            close(&one[0], &expected[i]) <= TOL,
            "{:?} vs {:?}",
            one[0],
            expected[i]
        );
    }
}

#[test]
fn predictions_carry_probabilities_decision_identity_and_the_demo_warning() {
    let mut model = load();
    let c = model.contract().clone();
    assert_eq!(c.model_name, "pneumollm-tiny");
    assert_eq!(c.weights_kind, WeightsKind::RandomDemo);
    assert_eq!(c.labels, ["pneumoconiosis", "normal"]);
    let inputs: Vec<ImageInput> = fixture_inputs().into_iter().map(ImageInput::F32).collect();
    let refs: Vec<&ImageInput> = inputs.iter().collect();
    for (p, z) in model.run_batch(&refs).into_iter().zip(expected_logits()) {
        let p = p.unwrap();
        let sm = pneumo_inference::softmax(&z);
        assert!(close(&p.probabilities, &sm) <= 1e-5);
        assert!((p.probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        assert_eq!(p.p_positive, p.probabilities[0]);
        assert_eq!(p.positive, p.p_positive >= 0.5);
        assert_eq!(p.execution_provider, ExecutionProvider::Cpu);
        assert_eq!(p.model.name, "pneumollm-tiny");
        assert_eq!(p.model.weights_sha256, c.weights_sha256);
        assert_eq!(p.warning.as_deref(), Some(DEMO_WARNING));
    }
}

/// 64 different images: blends of the two fixture inputs.
fn sixty_four() -> Vec<Vec<f32>> {
    let f = fixture_inputs();
    (0..64)
        .map(|i| {
            let a = i as f32 / 63.0;
            f[0].iter()
                .zip(&f[1])
                .map(|(x, y)| a * x + (1.0 - a) * y)
                .collect()
        })
        .collect()
}

#[test]
fn sixty_four_concurrent_requests_match_one_by_one_runs() {
    let images = sixty_four();
    // one by one, without the batcher
    let mut model = load();
    let alone: Vec<Vec<f32>> = images
        .iter()
        .map(|v| {
            let input = ImageInput::F32(v.clone());
            model.run_logits(&[&input]).unwrap().remove(0)
        })
        .collect();
    // through the batcher, from 64 tokio tasks at once
    let mut settings = cpu_settings(&models().join("pneumollm-tiny.onnx"));
    settings.max_batch = 16;
    settings.max_wait_ms = 20;
    let engine = Arc::new(InferenceEngine::start(&settings).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let tasks: Vec<_> = images
            .iter()
            .cloned()
            .map(|v| {
                let engine = engine.clone();
                tokio::spawn(async move { engine.infer(tensor(v, S)).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap().unwrap());
        }
        out
    });
    assert_eq!(results.len(), 64);
    let stats = engine.stats();
    assert_eq!(stats.images, 64);
    assert!(
        stats.largest_batch > 1 && stats.largest_batch <= 16,
        "{stats:?}"
    );
    for (i, (p, want)) in results.iter().zip(&alone).enumerate() {
        assert!(
            close(&p.logits, want) <= TOL,
            "request {i}: {:?} vs {want:?}",
            p.logits
        );
        let sm = pneumo_inference::softmax(want);
        assert!(close(&p.probabilities, &sm) <= TOL);
    }
    // the blocking API gives the same
    let p = engine.infer_blocking(tensor(images[5].clone(), S)).unwrap();
    assert!(close(&p.logits, &alone[5]) <= TOL);
}

#[test]
fn a_tensor_of_the_wrong_shape_is_refused() {
    let settings = cpu_settings(&models().join("pneumollm-tiny.onnx"));
    let engine = InferenceEngine::start(&settings).unwrap();
    let t = pneumo_imaging::Tensor {
        shape: [1, 3, 100, 100],
        data: pneumo_imaging::TensorData::F32(vec![0.0; 30000]),
    };
    let err = engine.infer_blocking(t).unwrap_err().to_string();
    assert!(err.contains("[1, 3, 224, 224]"), "{err}");
}

#[test]
fn an_fp16_model_gets_float16_input_and_matches_pytorch_fp16() {
    // The fp16 export of the same weights: what a CUDA export looks like.
    let path = models().join("pneumollm-tiny-fp16.onnx");
    let mut model = Model::load(&cpu_settings(&path)).unwrap();
    assert_eq!(
        model.contract().input_dtype,
        pneumo_inference::InputDType::Float16
    );
    let (shape, expected) = read_npy_f32(&models().join("pneumollm-tiny-fp16.expected-logits.npy"));
    assert_eq!(shape, vec![2, 2]);
    let inputs: Vec<ImageInput> = fixture_inputs()
        .into_iter()
        .map(|v| {
            let t = pneumo_imaging::Tensor {
                shape: [1, 3, S, S],
                data: pneumo_imaging::TensorData::F32(v),
            };
            ImageInput::from_tensor(t, model.contract()).unwrap()
        })
        .collect();
    assert!(matches!(inputs[0], ImageInput::F16(_)));
    let refs: Vec<&ImageInput> = inputs.iter().collect();
    let got: Vec<f32> = model.run_logits(&refs).unwrap().concat();
    let largest = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
    // fp16 arithmetic: relative to the largest logit, as the model issue asks
    assert!(
        close(&got, &expected) / f64::from(largest) <= 1e-2,
        "{got:?} vs {expected:?}"
    );
    // and the probabilities the node reports come from those logits
    let preds = model.run_batch(&refs);
    let p0 = preds[0].as_ref().unwrap().probabilities[0];
    let softmax0 = 1.0 / (1.0 + f64::from(got[1] - got[0]).exp());
    assert!((p0 - softmax0).abs() < 1e-6, "{p0} vs {softmax0}");
}

#[test]
fn f16_tensors_are_converted_for_an_f32_model() {
    let mut model = load();
    let f = fixture_inputs();
    let t16 = pneumo_imaging::Tensor {
        shape: [1, 3, S, S],
        data: pneumo_imaging::TensorData::F16(
            f[0].iter().map(|x| half::f16::from_f32(*x)).collect(),
        ),
    };
    let input = ImageInput::from_tensor(t16, model.contract()).unwrap();
    assert!(matches!(input, ImageInput::F32(_)));
    let z = model.run_logits(&[&input]).unwrap();
    // fp16 rounding of the input moves the logits a little, not much
    assert!(close(&z[0], &expected_logits()[0]) < 0.05, "{:?}", z[0]);
}
