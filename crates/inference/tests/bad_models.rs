//! Bad models, one test each: a clear error, never a panic.

mod common;

use common::*;
use pneumo_inference::{ContractError, ImageInput, InferenceEngine, InferenceError, Model};

fn bad(name: &str) -> std::path::PathBuf {
    models().join("bad").join(name)
}

fn load_err(path: &std::path::Path) -> InferenceError {
    Model::load(&cpu_settings(path)).expect_err("the model must be refused")
}

#[test]
fn missing_model_file() {
    let e = load_err(&bad("no-such-model.onnx"));
    assert!(matches!(e, InferenceError::ModelMissing { .. }), "{e:?}");
    assert!(e.to_string().contains("no-such-model.onnx"), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn a_file_that_is_not_onnx() {
    let e = load_err(&bad("not-onnx.onnx"));
    assert!(matches!(e, InferenceError::ModelLoad { .. }), "{e:?}");
    assert!(e.to_string().contains("cannot load model"), "{e}");
}

#[test]
fn a_model_without_contract_names_the_missing_key() {
    let e = load_err(&bad("no-contract.onnx"));
    match &e {
        InferenceError::Contract {
            problem: ContractError::MissingKey { key },
            ..
        } => assert_eq!(*key, "pneumo.contract_version"),
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string()
            .contains("`pneumo.contract_version` is missing"),
        "{e}"
    );
}

#[test]
fn an_input_of_the_wrong_rank() {
    let e = load_err(&bad("wrong-rank.onnx"));
    assert!(
        matches!(
            e,
            InferenceError::Contract {
                problem: ContractError::Graph(_),
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("input `image` has rank 3"), "{msg}");
    assert!(msg.contains("rank 4"), "{msg}");
}

#[test]
fn an_output_with_nan_is_an_error_for_that_request_only() {
    let s = 224;
    let ones = vec![1.0f32; 3 * s * s];
    let minus = vec![-1.0f32; 3 * s * s];
    let mut model = Model::load(&cpu_settings(&bad("nan-output.onnx"))).unwrap();
    // logits = sqrt(-channel means): finite for `minus`, NaN for `ones`
    let (a, b) = (
        ImageInput::F32(minus.clone()),
        ImageInput::F32(ones.clone()),
    );
    let r = model.run_batch(&[&a, &b]);
    assert!(r[0].is_ok(), "{:?}", r[0]);
    match &r[1] {
        Err(InferenceError::NonFiniteOutput { logits }) => assert!(logits[0].is_nan()),
        other => panic!("{other:?}"),
    }
    // through the batcher as well
    let engine = InferenceEngine::start(&cpu_settings(&bad("nan-output.onnx"))).unwrap();
    let e = engine.infer_blocking(tensor(ones, s)).unwrap_err();
    assert!(e.to_string().contains("not finite"), "{e}");
    assert!(engine.infer_blocking(tensor(minus, s)).is_ok());
}

#[test]
fn cuda_without_cuda_is_an_error_at_start_and_auto_says_cpu() {
    use pneumo_inference::{ExecutionProvider, ExecutionProviderChoice};
    let tiny = models().join("pneumollm-tiny.onnx");
    let mut s = cpu_settings(&tiny);
    s.execution_provider = ExecutionProviderChoice::Cuda;
    s.allow_cpu_fallback = true;
    match Model::load(&s) {
        // a CUDA build of ONNX Runtime on a GPU machine
        Ok(m) => assert_eq!(m.execution_provider(), ExecutionProvider::Cuda),
        // the CPU wheel (make deps), or no usable GPU
        Err(e) => {
            // ProviderNotBuilt for the CPU wheel (a configuration error:
            // no restart helps), ExecutionProvider for a GPU that failed.
            assert!(
                matches!(
                    e,
                    InferenceError::ProviderNotBuilt { .. }
                        | InferenceError::ExecutionProvider { .. }
                ),
                "{e:?}"
            );
            assert!(e.to_string().starts_with("execution provider cuda"), "{e}");
            s.execution_provider = ExecutionProviderChoice::Auto;
            let m = Model::load(&s).unwrap();
            assert_eq!(m.execution_provider(), ExecutionProvider::Cpu);
        }
    }
}

#[test]
fn a_graph_that_runs_one_image_only_still_answers_every_request() {
    // batch-one.onnx declares a dynamic batch and fixes it to one inside:
    // every batch of several images used to fail all of them.
    one_image_at_a_time(&bad("batch-one.onnx"));
}

#[test]
fn a_view_one_by_minus_one_export_is_served_one_image_at_a_time() {
    // A Reshape to the constant [1,-1]: ONNX Runtime infers the output
    // [1,2], and the load refused it ("export the model with its axis
    // `batch` dynamic") while `model info` took it.
    let path = bad("batch-one-constant.onnx");
    assert!(pneumo_inference::inspect_model(&path).is_ok());
    one_image_at_a_time(&path);
}

#[test]
fn an_output_the_file_declares_against_the_contract_is_refused_as_model_info_refuses_it() {
    // Declared [batch,3], computed [batch,2]: ONNX Runtime kept its own
    // inferred shape and the node served it, while `model info` and
    // `check-config` refused it.
    let path = bad("output-declared-wrong.onnx");
    let by_file = pneumo_inference::inspect_model(&path).unwrap_err();
    let by_load = load_err(&path);
    assert_eq!(by_file.to_string(), by_load.to_string());
    assert!(
        by_load
            .to_string()
            .contains("output `logits` dimension 1 is 3 in the graph, [2] in the contract"),
        "{by_load}"
    );
}

#[test]
fn a_batch_fixed_to_two_inside_the_graph_is_refused_saying_so() {
    let e = load_err(&bad("batch-two-constant.onnx")).to_string();
    assert!(
        e.contains("the model fails on one image") && e.contains("batch axis dynamic"),
        "{e}"
    );
}

fn one_image_at_a_time(path: &std::path::Path) {
    let s = 224;
    let images: Vec<Vec<f32>> = (0..6)
        .map(|i| vec![i as f32 * 0.2 - 0.5; 3 * s * s])
        .collect();
    let mut model = Model::load(&cpu_settings(path)).unwrap();
    let inputs: Vec<ImageInput> = images.iter().cloned().map(ImageInput::F32).collect();
    let alone: Vec<Vec<f32>> = inputs
        .iter()
        .map(|i| model.run_logits(&[i]).unwrap().remove(0))
        .collect();
    assert!(
        model.run_logits(&[&inputs[0], &inputs[1]]).is_err(),
        "the fixture must fail on two images"
    );
    // A batch that fails runs its images one at a time.
    let refs: Vec<&ImageInput> = inputs.iter().collect();
    let batched = model.run_batch(&refs);
    for (got, want) in batched.iter().zip(&alone) {
        assert_eq!(&got.as_ref().unwrap().logits, want);
    }
    // The warm-up finds it: the engine runs one image at a time, and
    // concurrent requests each get their own image's result.
    let mut settings = cpu_settings(path);
    settings.max_batch = 8;
    settings.max_wait_ms = 200;
    // Without a warm-up too: the load's probe found the batches failing
    // (they were all run again image by image).
    let mut cold = settings.clone();
    cold.warmup = false;
    assert_eq!(
        InferenceEngine::start(&cold)
            .unwrap()
            .batch_config()
            .max_batch,
        1
    );
    let engine = std::sync::Arc::new(InferenceEngine::start(&settings).unwrap());
    assert_eq!(engine.batch_config().max_batch, 1);
    let handles: Vec<_> = images
        .into_iter()
        .map(|v| {
            let engine = engine.clone();
            std::thread::spawn(move || engine.infer_blocking(tensor(v, s)).unwrap().logits)
        })
        .collect();
    for (h, want) in handles.into_iter().zip(&alone) {
        assert_eq!(&h.join().unwrap(), want);
    }
}
