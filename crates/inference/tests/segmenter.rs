//! The lung segmentation model (fixtures/models/lung-seg-synthetic.onnx:
//! "grey > 0.5 inside a central window", made by make_synthetic_seg.py).

mod common;

use common::*;
use pneumo_imaging::{GreyImage, LungBox};
use pneumo_inference::{ContractError, InferenceError, LungSegmenter};

fn segmenter() -> LungSegmenter {
    let path = models().join("lung-seg-synthetic.onnx");
    LungSegmenter::load(&path, &cpu_settings(&path)).expect("the synthetic model loads")
}

/// A dark `w`×`h` image with a bright rectangle.
fn image_with(w: usize, h: usize, r: LungBox) -> GreyImage {
    let mut data = vec![0.1f32; w * h];
    for y in r.y0 as usize..r.y1 as usize {
        for x in r.x0 as usize..r.x1 as usize {
            data[y * w + x] = 0.9;
        }
    }
    GreyImage {
        width: w,
        height: h,
        data,
    }
}

#[test]
fn a_bright_rectangle_gives_its_box() {
    let seg = segmenter();
    assert_eq!(seg.contract().input_size, 256);
    // At the model's own size the box is exact.
    let r = LungBox {
        x0: 40,
        y0: 30,
        x1: 200,
        y1: 180,
    };
    assert_eq!(seg.lung_box(&image_with(256, 256, r)).unwrap(), Some(r));

    // At another size the box is in the image's coordinates, within one
    // mask pixel (2 and 1.5 image pixels here).
    let r = LungBox {
        x0: 100,
        y0: 60,
        x1: 400,
        y1: 300,
    };
    let b = seg
        .lung_box(&image_with(512, 384, r))
        .unwrap()
        .expect("a box");
    for (got, want) in [(b.x0, r.x0), (b.y0, r.y0), (b.x1, r.x1), (b.y1, r.y1)] {
        assert!(got.abs_diff(want) <= 2, "box {b}, rectangle {r}");
    }
}

#[test]
fn an_empty_mask_gives_no_box() {
    let seg = segmenter();
    let dark = GreyImage {
        width: 300,
        height: 200,
        data: vec![0.2; 300 * 200],
    };
    assert_eq!(seg.lung_box(&dark).unwrap(), None);
}

#[test]
fn a_model_without_the_seg_contract_is_refused_naming_the_key() {
    // The classifier has its own contract, not this one.
    let path = models().join("pneumollm-tiny.onnx");
    let e = LungSegmenter::load(&path, &cpu_settings(&path)).expect_err("must be refused");
    match &e {
        InferenceError::Contract {
            problem: ContractError::MissingSegKey { key },
            ..
        } => assert_eq!(*key, "pneumo.seg.contract_version"),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("pneumo.seg.contract_version"), "{e}");
}

#[test]
fn a_missing_file_is_named() {
    let path = models().join("no-such-seg.onnx");
    let e = LungSegmenter::load(&path, &cpu_settings(&path)).expect_err("must be refused");
    assert!(matches!(e, InferenceError::ModelMissing { .. }), "{e:?}");
}
