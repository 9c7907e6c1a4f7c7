//! Write the SR (and optionally the companion Secondary Capture image) for a
//! source DICOM file and a given result, as the node would.
//!
//! ```text
//! cargo run --release --example write_sr -p pneumo-report -- \
//!     SOURCE.dcm OUTDIR --probability 0.87 --weights trained --sop-class 3d --companion
//! ```
//!
//! Prints one line per file written: `SR <path>` / `SC <path>`. Used by
//! `tests/report/test_sr_validity.py`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use dicom_core::value::PrimitiveValue;
use dicom_dictionary_std::tags;
use dicom_object::{open_file, InMemDicomObject};
use pneumo_report::{
    build_companion_sc, build_sr, AnalysisResult, GreyImage, ModelIdentity, NodeIdentity,
    PixelRegion, ReportOptions, ReportTime, SourceInstance, SrSopClass, WeightsKind,
};

#[derive(Clone, Copy, ValueEnum)]
enum SopClassArg {
    /// Comprehensive 3D SR
    #[value(name = "3d")]
    ThreeD,
    /// Comprehensive SR
    Comprehensive,
}

#[derive(Clone, Copy, ValueEnum)]
enum WeightsArg {
    Trained,
    RandomDemo,
}

#[derive(Parser)]
#[command(about = "Write the pneumoconiosis SR for a source image")]
struct Args {
    /// Source DICOM file (Part 10)
    source: PathBuf,
    /// Output directory
    out_dir: PathBuf,
    /// Probability of pneumoconiosis, in [0, 1]
    #[arg(long, default_value_t = 0.87)]
    probability: f64,
    /// Decision threshold, in [0, 1]
    #[arg(long, default_value_t = 0.5)]
    threshold: f64,
    /// Weights kind of the model
    #[arg(long, value_enum, default_value = "trained")]
    weights: WeightsArg,
    /// SR storage class
    #[arg(long, value_enum, default_value = "3d")]
    sop_class: SopClassArg,
    /// Also write the companion Secondary Capture image
    #[arg(long)]
    companion: bool,
    /// The region the model saw (a lung-box crop), `x0,y0,x1,y1` in pixels;
    /// default: the whole image
    #[arg(long, value_parser = parse_region)]
    region: Option<PixelRegion>,
    /// UID root (default: the 2.25 UUID form)
    #[arg(long)]
    uid_root: Option<String>,
    /// The node's AE title
    #[arg(long, default_value = "PNEUMO")]
    ae_title: String,
    /// Model SHA-256
    #[arg(
        long,
        default_value = "5f1e1a0e3c2b4d6f8a9b0c1d2e3f405162738495a6b7c8d9eaf0b1c2d3e4f506"
    )]
    sha256: String,
    /// The contract's SHA-256 (the report's UIDs derive from it)
    #[arg(
        long,
        default_value = "8c0d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d"
    )]
    contract_sha256: String,
}

/// The source's pixels as display values in [0, 1] (window, MONOCHROME1
/// inverted). Only native single-frame grey images; `None` otherwise. The
/// node uses the imaging crate for this.
fn display_pixels(obj: &InMemDicomObject) -> Option<(Vec<f32>, usize, usize)> {
    let int = |t| obj.get(t).and_then(|e| e.to_int::<i64>().ok());
    let rows = usize::try_from(int(tags::ROWS)?).ok()?;
    let cols = usize::try_from(int(tags::COLUMNS)?).ok()?;
    if int(tags::SAMPLES_PER_PIXEL).unwrap_or(1) != 1
        || int(tags::NUMBER_OF_FRAMES).unwrap_or(1) != 1
    {
        return None;
    }
    let bits = int(tags::BITS_ALLOCATED)?;
    let signed = int(tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1;
    let raw: Vec<f64> = match (obj.get(tags::PIXEL_DATA)?.value().primitive()?, bits) {
        (PrimitiveValue::U16(v), 16) => v
            .iter()
            .map(|x| {
                if signed {
                    f64::from(*x as i16)
                } else {
                    f64::from(*x)
                }
            })
            .collect(),
        (PrimitiveValue::U8(v), 16) => v
            .chunks_exact(2)
            .map(|c| {
                let x = u16::from_le_bytes([c[0], c[1]]);
                if signed {
                    f64::from(x as i16)
                } else {
                    f64::from(x)
                }
            })
            .collect(),
        (PrimitiveValue::U8(v), 8) => v.iter().map(|x| f64::from(*x)).collect(),
        _ => return None,
    };
    if raw.len() < rows * cols {
        return None;
    }
    let float = |t| obj.get(t).and_then(|e| e.to_float64().ok());
    let slope = float(tags::RESCALE_SLOPE).unwrap_or(1.0);
    let intercept = float(tags::RESCALE_INTERCEPT).unwrap_or(0.0);
    let values: Vec<f64> = raw[..rows * cols]
        .iter()
        .map(|x| x * slope + intercept)
        .collect();
    let (lo, hi) = match (float(tags::WINDOW_CENTER), float(tags::WINDOW_WIDTH)) {
        (Some(c), Some(w)) if w > 1.0 => (c - w / 2.0, c + w / 2.0),
        _ => {
            let lo = values.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            (lo, hi.max(lo + 1.0))
        }
    };
    let mono1 = obj
        .get(tags::PHOTOMETRIC_INTERPRETATION)
        .and_then(|e| e.to_str().ok())
        .is_some_and(|s| s.trim() == "MONOCHROME1");
    let px = values
        .iter()
        .map(|v| {
            let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0) as f32;
            if mono1 {
                1.0 - t
            } else {
                t
            }
        })
        .collect();
    Some((px, rows, cols))
}

fn parse_region(text: &str) -> Result<PixelRegion, String> {
    let v: Vec<u32> = text
        .split(',')
        .map(|n| n.trim().parse().map_err(|e| format!("{n}: {e}")))
        .collect::<Result<_, _>>()?;
    match v[..] {
        [x0, y0, x1, y1] => Ok(PixelRegion { x0, y0, x1, y1 }),
        _ => Err("expected x0,y0,x1,y1".into()),
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let file = open_file(&args.source)?;
    let source = SourceInstance::from_dataset(&file)?;
    let mut result = AnalysisResult::from_probabilities(
        vec![args.probability, 1.0 - args.probability],
        args.threshold,
        if args.region.is_some() {
            "lung-box"
        } else {
            "none"
        },
        "CPU",
    )?;
    result.analysed_region = args.region;
    let model = ModelIdentity {
        name: "PneumoLLM".into(),
        version: "0.1.0".into(),
        weights_kind: match args.weights {
            WeightsArg::Trained => WeightsKind::Trained,
            WeightsArg::RandomDemo => WeightsKind::RandomDemo,
        },
        sha256: args.sha256.clone(),
        contract_sha256: args.contract_sha256.clone(),
        lung_segmentation_sha256: None,
    };
    let mut node = NodeIdentity::new(
        args.ae_title.clone(),
        "2.25.329800735698586629295641978511506172918",
    );
    node.station_name = Some("PNEUMO1".into());
    node.uid_root = args.uid_root.clone();
    let options = ReportOptions {
        sop_class: match args.sop_class {
            SopClassArg::ThreeD => SrSopClass::Comprehensive3D,
            SopClassArg::Comprehensive => SrSopClass::Comprehensive,
        },
        companion_sc: args.companion,
        ..ReportOptions::default()
    };
    let now = ReportTime::now_utc();
    std::fs::create_dir_all(&args.out_dir)?;

    let sr = build_sr(&source, &result, &model, &node, &options, &now)?;
    let sr_path = args.out_dir.join(format!(
        "{}.dcm",
        sr.meta().media_storage_sop_instance_uid()
    ));
    sr.write_to_file(&sr_path)?;
    println!("SR {}", sr_path.display());

    if options.companion_sc {
        match display_pixels(&file) {
            Some((px, rows, columns)) => {
                let img = GreyImage {
                    pixels: &px,
                    rows,
                    columns,
                };
                let sc = build_companion_sc(&source, img, &result, &model, &node, &options, &now)?;
                let sc_path = args.out_dir.join(format!(
                    "{}.dcm",
                    sc.meta().media_storage_sop_instance_uid()
                ));
                sc.write_to_file(&sc_path)?;
                println!("SC {}", sc_path.display());
            }
            None => eprintln!("companion image skipped: pixel data not native grey single-frame"),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("write_sr: {e}");
            ExitCode::FAILURE
        }
    }
}
