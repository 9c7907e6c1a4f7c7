//! Times DICOM file → model tensor: `cargo run --release --example imaging_bench --
//! [--runs N] FILE...`. Prints one JSON line per file with the median and
//! minimum milliseconds of reading the file plus `preprocess`, and of
//! `preprocess` alone (224×224, ImageNet mean/std, f32, no crop).

use std::time::Instant;

use pneumo_imaging::{preprocess, CropMode, OutputDType, PreprocessSpec};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 20usize;
    if let Some(i) = args.iter().position(|a| a == "--runs") {
        runs = args.get(i + 1).ok_or("--runs N")?.parse()?;
        args.drain(i..i + 2);
    }
    let spec = PreprocessSpec {
        width: 224,
        height: 224,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        crop: CropMode::None,
        dtype: OutputDType::F32,
    };
    for path in &args {
        let (mut total, mut pre) = (Vec::new(), Vec::new());
        for _ in 0..runs.max(1) {
            let t0 = Instant::now();
            let obj = dicom_object::open_file(path)?;
            let t1 = Instant::now();
            let out = preprocess(&obj, &spec, None)?;
            let t2 = Instant::now();
            std::hint::black_box(out);
            total.push((t2 - t0).as_secs_f64() * 1e3);
            pre.push((t2 - t1).as_secs_f64() * 1e3);
        }
        let min_total = total.iter().cloned().fold(f64::INFINITY, f64::min);
        println!(
            "{{\"file\": {path:?}, \"runs\": {runs}, \"total_ms_median\": {:.2}, \"total_ms_min\": {min_total:.2}, \"preprocess_ms_median\": {:.2}}}",
            median(&mut total),
            median(&mut pre)
        );
    }
    Ok(())
}
