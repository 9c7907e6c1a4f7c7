//! Images per second of a model, at given batch sizes, straight on the
//! session and through the batcher. Prints one JSON line per measurement
//! (the first names the execution provider the session got). Driven by
//! tests/inference/bench.py on the CPU and scripts/gpu/check.sh on a GPU
//! (both time Python onnxruntime in the same run).
//!
//!     cargo run --release -p pneumo-inference --example inference_bench -- MODEL THREADS SECONDS MODE BATCH...
//!
//! MODE: `session`, `batcher`, `both`, or `shapes` (every batch size up
//! to the largest, first run against second run). The provider is `cpu` unless
//! PNEUMO_BENCH_EP says `cuda` (strict: no node on the CPU, unless
//! PNEUMO_BENCH_ALLOW_CPU_FALLBACK=1) or `auto`. PNEUMO_BENCH_CONV_SEARCH
//! (`heuristic`, `exhaustive`, `default`) and PNEUMO_BENCH_WARMUP=0 (the
//! batcher started without the node's warm-up) are for comparisons on CUDA.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pneumo_inference::{
    ConvAlgoSearch, ExecutionProviderChoice, ImageInput, InferenceEngine, InferenceSettings, Model,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        return Err(
            "usage: bench MODEL THREADS SECONDS session|batcher|both|shapes BATCH...".into(),
        );
    }
    let mode = args[3].as_str();
    let execution_provider = match std::env::var("PNEUMO_BENCH_EP").as_deref() {
        Ok("cuda") => ExecutionProviderChoice::Cuda,
        Ok("auto") => ExecutionProviderChoice::Auto,
        Ok("cpu") | Err(_) => ExecutionProviderChoice::Cpu,
        Ok(other) => return Err(format!("PNEUMO_BENCH_EP={other}: cpu, cuda or auto").into()),
    };
    let settings = InferenceSettings {
        model: PathBuf::from(&args[0]),
        cpu_threads: args[1].parse()?,
        execution_provider,
        allow_cpu_fallback: std::env::var("PNEUMO_BENCH_ALLOW_CPU_FALLBACK").as_deref() == Ok("1"),
        cuda_conv_algo_search: match std::env::var("PNEUMO_BENCH_CONV_SEARCH").as_deref() {
            Ok("exhaustive") => ConvAlgoSearch::Exhaustive,
            Ok("default") => ConvAlgoSearch::Default,
            Ok("heuristic") | Err(_) => ConvAlgoSearch::Heuristic,
            Ok(other) => {
                return Err(format!(
                    "PNEUMO_BENCH_CONV_SEARCH={other}: heuristic, exhaustive or default"
                )
                .into())
            }
        },
        ..InferenceSettings::default()
    };
    let seconds: f64 = args[2].parse()?;
    let batches: Vec<usize> = args[4..]
        .iter()
        .map(|b| b.parse())
        .collect::<Result<_, _>>()?;
    let t_load = Instant::now();
    let mut model = Model::load(&settings)?;
    println!(
        "{{\"side\":\"rust\",\"execution_provider\":\"{}\",\"input_dtype\":\"{:?}\",\"load_seconds\":{:.1}}}",
        model.execution_provider().as_str(),
        model.contract().input_dtype,
        t_load.elapsed().as_secs_f64()
    );
    let len = model.contract().image_len();
    let size = model.contract().input_size as usize;
    // deterministic, varied inputs
    let image = |k: usize| -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + k * 104_729) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    };
    let contract = model.contract().clone();
    let input = |k: usize| -> Result<ImageInput, Box<dyn std::error::Error>> {
        let t = pneumo_imaging::Tensor {
            shape: [1, 3, size, size],
            data: pneumo_imaging::TensorData::F32(image(k)),
        };
        Ok(ImageInput::from_tensor(t, &contract)?)
    };
    if mode == "shapes" {
        // What a batch size costs the first time it is seen (kernel and
        // algorithm selection, arena growth) against its second run.
        let max = *batches.iter().max().unwrap_or(&1);
        let inputs: Vec<ImageInput> = (0..max).map(input).collect::<Result<_, _>>()?;
        let (mut first, mut second) = (0.0, 0.0);
        for b in 1..=max {
            let refs: Vec<&ImageInput> = inputs[..b].iter().collect();
            for total in [&mut first, &mut second] {
                let t = Instant::now();
                model.run_logits(&refs)?;
                *total += t.elapsed().as_secs_f64();
            }
        }
        println!(
            "{{\"side\":\"rust\",\"mode\":\"shapes\",\"batches\":\"1..={max}\",\"first_runs_ms\":{:.1},\"second_runs_ms\":{:.1}}}",
            first * 1e3,
            second * 1e3
        );
        return Ok(());
    }
    for &b in batches.iter().filter(|_| mode != "batcher") {
        let inputs: Vec<ImageInput> = (0..b).map(input).collect::<Result<_, _>>()?;
        let refs: Vec<&ImageInput> = inputs.iter().collect();
        model.run_logits(&refs)?; // warm-up for this shape
        let (mut n, t0) = (0usize, Instant::now());
        while t0.elapsed().as_secs_f64() < seconds {
            model.run_logits(&refs)?;
            n += 1;
        }
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "{{\"side\":\"rust\",\"mode\":\"session\",\"batch\":{b},\"images\":{},\"seconds\":{dt:.4},\"images_per_s\":{:.3}}}",
            n * b,
            (n * b) as f64 / dt
        );
    }
    if mode == "session" {
        return Ok(());
    }
    // through the batcher: 4 x max_batch concurrent requests per round
    let max_batch = *batches.iter().max().unwrap_or(&1);
    let engine = Arc::new(InferenceEngine::from_model(
        model,
        pneumo_inference::BatchConfig {
            max_batch,
            max_wait: Duration::from_millis(5),
        },
        // as the node starts it (PNEUMO_BENCH_WARMUP=0: without)
        std::env::var("PNEUMO_BENCH_WARMUP").as_deref() != Ok("0"),
    )?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let per_round = 4 * max_batch;
    let tensors: Vec<pneumo_imaging::Tensor> = (0..per_round)
        .map(|k| pneumo_imaging::Tensor {
            shape: [1, 3, size, size],
            data: pneumo_imaging::TensorData::F32(image(k)),
        })
        .collect();
    let (mut n, t0) = (0usize, Instant::now());
    while t0.elapsed().as_secs_f64() < seconds {
        rt.block_on(async {
            let tasks: Vec<_> = tensors
                .iter()
                .cloned()
                .map(|t| {
                    let e = engine.clone();
                    tokio::spawn(async move { e.infer(t).await })
                })
                .collect();
            for t in tasks {
                t.await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        })?;
        n += per_round;
    }
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "{{\"side\":\"rust\",\"mode\":\"batcher\",\"batch\":{max_batch},\"images\":{n},\"seconds\":{dt:.4},\"images_per_s\":{:.3}}}",
        n as f64 / dt
    );
    Ok(())
}
