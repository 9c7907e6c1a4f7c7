//! `pneumo-node preprocess FILE --out tensor.npy`: the model input tensor of
//! one DICOM file, with a JSON sidecar saying what was done to it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use pneumo_imaging::{CropMode, LungBox, OutputDType, PreprocessSpec};

/// Arguments of `preprocess`. Defaults are the PneumoLLM contract's.
#[derive(Debug, Clone, clap::Args)]
pub struct PreprocessArgs {
    /// DICOM Part-10 file.
    pub file: PathBuf,
    /// Take size, mean, std, crop and element type from this model's
    /// contract (as `infer` and the node do) instead of the options below.
    #[arg(long, conflicts_with_all = ["size", "mean", "std", "crop", "dtype"])]
    pub model: Option<PathBuf>,
    /// Where to write the tensor (.npy, NCHW). The report goes beside it
    /// with the extension .json.
    #[arg(long, default_value = "tensor.npy")]
    pub out: PathBuf,
    /// Output size: N (square) or WxH.
    #[arg(long, default_value = "224")]
    pub size: String,
    /// Per-channel mean, three comma-separated values.
    #[arg(long, default_value = "0.485,0.456,0.406")]
    pub mean: String,
    /// Per-channel standard deviation, three comma-separated values.
    #[arg(long, default_value = "0.229,0.224,0.225")]
    pub std: String,
    /// Crop mode: none or lung-box (with the box given by --lung-box; `infer`
    /// and the node take it from the lung segmentation model).
    #[arg(long, default_value = "none")]
    pub crop: String,
    /// Lung box in image pixels, x0,y0,x1,y1 (half-open), for --crop lung-box.
    #[arg(long)]
    pub lung_box: Option<String>,
    /// Tensor element type: f32 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Also write the grey image (after the grey-level steps, before crop
    /// and resize; float32 in [0, 1], rows x columns) to this .npy file.
    #[arg(long)]
    pub grey_out: Option<PathBuf>,
}

fn floats<const N: usize>(s: &str, what: &str) -> anyhow::Result<[f32; N]> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--{what} {s:?}: not numbers"))?;
    v.try_into()
        .map_err(|_| anyhow::anyhow!("--{what} {s:?}: expected {N} values"))
}

fn size(s: &str) -> anyhow::Result<(u32, u32)> {
    let parse = |p: &str| {
        p.trim()
            .parse::<u32>()
            .with_context(|| format!("--size {s:?}"))
    };
    match s.split_once(['x', 'X']) {
        Some((w, h)) => Ok((parse(w)?, parse(h)?)),
        None => {
            let n = parse(s)?;
            Ok((n, n))
        }
    }
}

impl PreprocessArgs {
    pub fn spec(&self) -> anyhow::Result<PreprocessSpec> {
        if let Some(model) = &self.model {
            let inspected = pneumo_inference::inspect_model(model)?;
            return Ok(inspected.contract.preprocess_spec());
        }
        let (width, height) = size(&self.size)?;
        let crop: CropMode = self.crop.parse()?;
        let dtype = match self.dtype.as_str() {
            "f32" => OutputDType::F32,
            "f16" => OutputDType::F16,
            other => bail!("--dtype {other:?}: expected f32 or f16"),
        };
        Ok(PreprocessSpec {
            width,
            height,
            mean: floats::<3>(&self.mean, "mean")?,
            std: floats::<3>(&self.std, "std")?,
            crop,
            dtype,
        })
    }

    pub fn lung_box(&self) -> anyhow::Result<Option<LungBox>> {
        parse_lung_box(self.lung_box.as_deref())
    }
}

fn sidecar_path(out: &Path) -> PathBuf {
    out.with_extension("json")
}

/// `--lung-box x0,y0,x1,y1` (of `preprocess` and `infer`).
pub fn parse_lung_box(s: Option<&str>) -> anyhow::Result<Option<LungBox>> {
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

pub fn run(args: &PreprocessArgs) -> anyhow::Result<()> {
    let spec = args.spec()?;
    let lung_box = args.lung_box()?;
    let obj = pneumo_store::open_instance(&args.file, None)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let ctx = || format!("preprocessing {}", args.file.display());
    let (grey, grey_report, header) = pneumo_imaging::grey_image(&obj).with_context(ctx)?;
    if let Some(path) = &args.grey_out {
        let bytes: Vec<u8> = grey.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let npy = pneumo_imaging::encode_npy("<f4", &[grey.height, grey.width], &bytes);
        std::fs::write(path, npy).with_context(|| format!("writing {}", path.display()))?;
    }
    let result = pneumo_imaging::tensor_from_grey(&grey, grey_report, header, &spec, lung_box)
        .with_context(ctx)?;
    std::fs::write(&args.out, result.tensor.to_npy())
        .with_context(|| format!("writing {}", args.out.display()))?;
    let sidecar = sidecar_path(&args.out);
    let json = serde_json::to_string_pretty(&result.report)?;
    std::fs::write(&sidecar, json + "\n")
        .with_context(|| format!("writing {}", sidecar.display()))?;
    Ok(())
}
