//! `pneumo-node model info MODEL.onnx [--json]`: the model's contract, as
//! the node reads and checks it, and the ONNX Runtime it would run on.
//! It reads the ONNX file itself (no session, no weights), so it is instant
//! even for a model of many gigabytes.

use std::path::PathBuf;

use anyhow::Context;
use pneumo_inference::{inspect_model, runtime, InferenceSettings, DEMO_WARNING};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ModelCommand {
    /// Print the contract of a model, read from the ONNX file and checked
    /// against its graph's input and output (no session: the weights are
    /// not read), and the ONNX Runtime library the node would use.
    Info {
        /// The ONNX file (default: inference.model).
        model: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: &ModelCommand, settings: &InferenceSettings) -> anyhow::Result<()> {
    let ModelCommand::Info { model, json } = cmd;
    let model = model.as_ref().unwrap_or(&settings.model);
    let inspected =
        inspect_model(model).with_context(|| format!("reading model {}", model.display()))?;
    // The library is checked as at load, but no environment or session is made.
    let (lib, version) = runtime::library_info(&settings.ort_library)
        .context("checking the ONNX Runtime library")?;
    let c = &inspected.contract;
    let path = &inspected.path;
    // The contract is read from the .onnx alone: shown, and the weights'
    // problem said, as `infer` and `serve` refuse the model for it.
    if let Some(problem) = &inspected.weights_problem {
        eprintln!("warning: {problem}: `infer` and `serve` refuse this model until it is fixed");
    }
    if *json {
        // A struct, not json!: a Value would widen each f32 (0.485 printed
        // as 0.48500001430511475).
        #[derive(serde::Serialize)]
        struct Runtime<'a> {
            library: &'a std::path::Path,
            version: &'a str,
        }
        #[derive(serde::Serialize)]
        struct Out<'a> {
            path: &'a std::path::Path,
            contract: &'a pneumo_inference::ModelContract,
            preprocess: pneumo_imaging::PreprocessSpec,
            warning: Option<&'a str>,
            weights_problem: Option<&'a str>,
            onnxruntime: Runtime<'a>,
        }
        let out = Out {
            path,
            contract: c,
            preprocess: c.preprocess_spec(),
            warning: c.is_demo().then_some(DEMO_WARNING),
            weights_problem: inspected.weights_problem.as_deref(),
            onnxruntime: Runtime {
                library: &lib,
                version: &version,
            },
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if c.is_demo() {
        println!("*** {DEMO_WARNING} (pneumo.weights_kind = random-demo) ***");
    }
    println!("model file        {}", path.display());
    println!(
        "model             {} {} ({})",
        // (escaped: a name's control characters drove the terminal)
        c.model_name.escape_debug(),
        c.model_version.escape_debug(),
        c.model_config.escape_debug()
    );
    println!(
        "weights           {} sha256 {} ({})",
        c.weights_kind.as_str(),
        c.weights_sha256,
        c.weights_sha256_method
    );
    println!("contract          sha256 {}", c.contract_sha256);
    println!("precision         {}", c.precision);
    println!(
        "input             {} {} {} {}",
        c.input_name.escape_debug(),
        serde_json::to_string(&c.input_dtype)?.trim_matches('"'),
        serde_json::to_string(&c.input_shape)?,
        c.input_layout
    );
    println!(
        "output            {} {} {} ({})",
        c.output_name.escape_debug(),
        c.output_dtype,
        serde_json::to_string(&c.output_shape)?,
        c.output_kind
    );
    println!("labels            {:?}", c.labels);
    println!(
        "decision          {}(output) -> P({}) >= {}",
        c.score_function,
        c.positive_label.escape_debug(),
        c.decision_threshold
    );
    println!(
        "size              {}x{} ({}, {})",
        c.input_size, c.input_size, c.resize_filter, c.resize_mode
    );
    println!("crop              {}", c.crop_mode.as_str());
    println!("colour / range    {} {:?}", c.color_mode, c.input_range);
    println!("mean              {:?}", c.mean);
    println!("std               {:?}", c.std);
    println!("onnxruntime       {} ({})", version, lib.display());
    Ok(())
}
