//! `pneumo-node infer FILE.dcm [--json]`: imaging + inference on one file;
//! prints the probabilities, the decision and the execution provider used.
//! `pneumo-node infer --tensor T.npy`: the model alone on ready input
//! tensors (N×3×S×S, float32 or float16, e.g. from `preprocess`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use pneumo_imaging::{CropMode, Tensor, TensorData};
use pneumo_inference::{InferenceEngine, InferenceSettings, LungSegmenter, Prediction};

#[derive(Debug, Clone, clap::Args)]
pub struct InferArgs {
    /// DICOM Part-10 file (required unless --tensor is given).
    #[arg(required_unless_present = "tensor", conflicts_with = "tensor")]
    pub file: Option<PathBuf>,
    /// Run the model on the images of this .npy tensor (N×3×S×S, <f4 or
    /// <f2, C order) instead of a DICOM file.
    #[arg(long)]
    pub tensor: Option<PathBuf>,
    /// The ONNX model (default: inference.model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Lung box in image pixels, x0,y0,x1,y1 (half-open), for a model whose
    /// contract says crop_mode lung-box, instead of the one the lung
    /// segmentation model (inference.lung_segmentation_model) finds.
    #[arg(long)]
    pub lung_box: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &InferArgs, settings: &InferenceSettings) -> anyhow::Result<()> {
    let mut settings = settings.clone();
    if let Some(m) = &args.model {
        settings.model = m.clone();
    }
    // One image: no warm-up run, no waiting for a batch.
    settings.warmup = false;
    settings.max_wait_ms = 0;
    let lung_box = crate::cmd_preprocess::parse_lung_box(args.lung_box.as_deref())?;
    // The file first, in `store`'s words ("Could not read from file", and
    // after the model had loaded): a missing or non-DICOM file is said at once.
    if let Some(file) = &args.file {
        pneumo_dimse::FileToSend::inspect(file)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("reading {}", file.display()))?;
    }
    let engine = InferenceEngine::start(&settings)
        .with_context(|| format!("loading model {}", settings.model.display()))?;
    if let Some(path) = &args.tensor {
        return run_tensor(&engine, path, args.json);
    }
    let Some(file) = &args.file else {
        bail!("give a DICOM file or --tensor");
    };
    let spec = engine.contract().preprocess_spec();
    let obj = pneumo_store::open_instance(file, None)
        .map_err(|e| anyhow::anyhow!("its data set cannot be read (cut short?): {e}"))
        .with_context(|| format!("reading {}", file.display()))?;
    let (grey, grey_report, hdr) = pneumo_imaging::grey_image(&obj)
        .and_then(|g| pneumo_imaging::analysis_refusal(&g.0, &g.1).map(|()| g))
        .with_context(|| format!("preprocessing {}", file.display()))?;
    let lung_box = match (spec.crop, lung_box) {
        (CropMode::LungBox, None) => {
            let segmenter = LungSegmenter::from_settings(&settings).with_context(|| {
                format!(
                    "loading the lung segmentation model {}",
                    settings.lung_segmentation_model.display()
                )
            })?;
            let b = crate::pipeline::lung_box(segmenter.as_ref(), &grey)
                .map_err(|failure| anyhow::anyhow!("{}: {}", file.display(), failure.reason()))?;
            Some(b)
        }
        (CropMode::None, Some(_)) => bail!(
            "--lung-box given, but the model's contract says crop none (it reads the whole \
             image): leave --lung-box out, or use a model exported with --crop-mode lung-box"
        ),
        (_, given) => given,
    };
    if let Some(b) = &lung_box {
        pneumo_imaging::lung_box_refusal(&grey, b)
            .with_context(|| format!("preprocessing {}", file.display()))?;
    }
    let pre = pneumo_imaging::tensor_from_grey(&grey, grey_report, hdr, &spec, lung_box)
        .with_context(|| format!("preprocessing {}", file.display()))?;
    let p = engine
        .infer_blocking(pre.tensor)
        .with_context(|| format!("running the model on {}", file.display()))?;
    if args.json {
        // A struct, not json!: a Value would widen each f32 (0.485 printed
        // as 0.48500001430511475).
        #[derive(serde::Serialize)]
        struct Out<'a> {
            file: &'a std::path::Path,
            prediction: &'a Prediction,
            preprocess: &'a pneumo_imaging::PreprocessReport,
        }
        let out = Out {
            file,
            prediction: &p,
            preprocess: &pre.report,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if let Some(w) = &p.warning {
        println!("*** {w} ***");
    }
    println!("file                {}", file.display());
    print_prediction(&p);
    Ok(())
}

fn print_prediction(p: &Prediction) {
    println!(
        "model               {} {} ({}, sha256 {})",
        p.model.name,
        p.model.version,
        p.model.weights_kind.as_str(),
        p.model.weights_sha256
    );
    println!("execution provider  {}", p.execution_provider);
    let width = p
        .labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    for ((label, prob), z) in p.labels.iter().zip(&p.probabilities).zip(&p.logits) {
        let pad = " ".repeat(width - label.chars().count());
        println!(
            "P({label}){pad} = {}   (logit {z:.6})",
            probability(*prob, p.threshold)
        );
    }
    println!(
        "decision            {} (P({}) = {} {} threshold {})",
        if p.positive { "POSITIVE" } else { "negative" },
        p.positive_label,
        probability(p.p_positive, p.threshold),
        if p.positive { ">=" } else { "<" },
        p.threshold
    );
}

/// Six decimals, or the value in full where they would read 0 or 1 (a
/// confident model's 1e-9 read "0.000000") or compare with the threshold
/// otherwise than the value does ("0.500000 < threshold 0.5").
fn probability(p: f64, threshold: f64) -> String {
    let six = format!("{p:.6}");
    let shown: f64 = six.parse().unwrap_or(p);
    if shown == 0.0 && p > 0.0 {
        format!("{p:e}")
    } else if (shown == 1.0 && p < 1.0) || (shown >= threshold) != (p >= threshold) {
        format!("{p}")
    } else {
        six
    }
}

/// The images of an N×C×H×W `.npy` file (`<f4` or `<f2`, C order).
fn read_npy(path: &std::path::Path) -> anyhow::Result<Vec<Tensor>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bad = |why: &str| anyhow::anyhow!("{}: {why}", path.display());
    if raw.len() < 10 || &raw[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (hlen, start) = match raw[6] {
        1 => (u16::from_le_bytes([raw[8], raw[9]]) as usize, 10),
        2 | 3 if raw.len() >= 12 => (
            u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unknown .npy version")),
    };
    let header = raw
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("bad .npy header"))?;
    if !header.contains("'fortran_order': False") {
        return Err(bad("only C-order arrays are supported"));
    }
    let f16 = if header.contains("'descr': '<f4'") {
        false
    } else if header.contains("'descr': '<f2'") {
        true
    } else {
        return Err(bad("element type must be <f4 or <f2"));
    };
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape in the .npy header"))?
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("bad shape in the .npy header"))?;
    let [n, c, h, w] = shape[..] else {
        return Err(bad("expected a 4-dimensional N×3×S×S array"));
    };
    let body = &raw[start + hlen..];
    let esize = if f16 { 2 } else { 4 };
    if body.len() != n * c * h * w * esize {
        return Err(bad("data length does not match the shape"));
    }
    let per = c * h * w * esize;
    Ok(body
        .chunks(per.max(1))
        .take(n)
        .map(|img| Tensor {
            shape: [1, c, h, w],
            data: if f16 {
                TensorData::F16(
                    img.chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                        .collect(),
                )
            } else {
                TensorData::F32(
                    img.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                )
            },
        })
        .collect())
}

/// The model on each image of a tensor file, one at a time.
fn run_tensor(engine: &InferenceEngine, path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let images = read_npy(path)?;
    if images.is_empty() {
        bail!(
            "{} holds no image (its batch dimension is 0)",
            path.display()
        );
    }
    let predictions: Vec<Prediction> = images
        .into_iter()
        .map(|t| engine.infer_blocking(t))
        .collect::<Result<_, _>>()
        .with_context(|| format!("running the model on {}", path.display()))?;
    if json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            tensor: &'a std::path::Path,
            predictions: &'a [Prediction],
        }
        let out = Out {
            tensor: path,
            predictions: &predictions,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if let Some(w) = predictions.first().and_then(|p| p.warning.as_ref()) {
        println!("*** {w} ***");
    }
    for (i, p) in predictions.iter().enumerate() {
        println!("image {i} of {}", path.display());
        print_prediction(p);
    }
    Ok(())
}
