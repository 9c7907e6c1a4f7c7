//! `pneumo-node infer FILE.dcm [--json]`: imaging + inference on one file;
//! prints the probabilities, the decision and the execution provider used.

use std::path::PathBuf;

use anyhow::{bail, Context};
use pneumo_imaging::LungBox;
use pneumo_inference::{InferenceEngine, InferenceSettings};

#[derive(Debug, Clone, clap::Args)]
pub struct InferArgs {
    /// DICOM Part-10 file.
    pub file: PathBuf,
    /// The ONNX model (default: inference.model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Lung box in image pixels, x0,y0,x1,y1 (half-open), for a model whose
    /// contract says crop_mode lung-box (until the segmentation model is wired in).
    #[arg(long)]
    pub lung_box: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn lung_box(s: &Option<String>) -> anyhow::Result<Option<LungBox>> {
    let Some(s) = s else { return Ok(None) };
    let v: Vec<u32> = s
        .split(',')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--lung-box {s:?}"))?;
    match v[..] {
        [x0, y0, x1, y1] => Ok(Some(LungBox { x0, y0, x1, y1 })),
        _ => bail!("--lung-box {s:?}: expected x0,y0,x1,y1"),
    }
}

pub fn run(args: &InferArgs, settings: &InferenceSettings) -> anyhow::Result<()> {
    let mut settings = settings.clone();
    if let Some(m) = &args.model {
        settings.model = m.clone();
    }
    // One image: no warm-up run, no waiting for a batch.
    settings.warmup = false;
    settings.max_wait_ms = 0;
    let lung_box = lung_box(&args.lung_box)?;
    let engine = InferenceEngine::start(&settings)
        .with_context(|| format!("loading model {}", settings.model.display()))?;
    let spec = engine.contract().preprocess_spec();
    let obj = dicom_object::open_file(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let pre = pneumo_imaging::preprocess(&obj, &spec, lung_box)
        .with_context(|| format!("preprocessing {}", args.file.display()))?;
    let p = engine
        .infer_blocking(pre.tensor)
        .with_context(|| format!("running the model on {}", args.file.display()))?;
    if args.json {
        let out = serde_json::json!({
            "file": args.file,
            "prediction": p,
            "preprocess": pre.report,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if let Some(w) = &p.warning {
        println!("*** {w} ***");
    }
    println!("file                {}", args.file.display());
    println!(
        "model               {} {} ({}, sha256 {})",
        p.model.name,
        p.model.version,
        p.model.weights_kind.as_str(),
        p.model.weights_sha256
    );
    println!("execution provider  {}", p.execution_provider);
    for ((label, prob), z) in p.labels.iter().zip(&p.probabilities).zip(&p.logits) {
        println!("P({label:<16}) = {prob:.6}   (logit {z:.6})");
    }
    println!(
        "decision            {} (P({}) = {:.6} {} threshold {})",
        if p.positive { "POSITIVE" } else { "negative" },
        p.positive_label,
        p.p_positive,
        if p.positive { ">=" } else { "<" },
        p.threshold
    );
    Ok(())
}
