//! Refusals (one test each) and small end-to-end runs on synthetic objects.

use dicom_core::value::{PixelFragmentSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject};
use pneumo_imaging::{
    can_decode, preprocess, CropMode, ImagingError, LungBox, OutputDType, PreprocessSpec,
    TensorData,
};

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

fn el(tag: dicom_core::Tag, vr: VR, v: PrimitiveValue) -> InMemElement {
    DataElement::new(tag, vr, v)
}

/// A rows×cols 16-bit MONOCHROME2 image with values 0, 1, 2, …
fn image(rows: u16, cols: u16) -> InMemDicomObject {
    let px: Vec<u16> = (0..u32::from(rows) * u32::from(cols))
        .map(|i| (i % 4096) as u16)
        .collect();
    InMemDicomObject::from_element_iter([
        el(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE),
        ),
        el(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("2.25.1234"),
        ),
        el(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        el(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from("MONOCHROME2"),
        ),
        el(tags::ROWS, VR::US, PrimitiveValue::from(rows)),
        el(tags::COLUMNS, VR::US, PrimitiveValue::from(cols)),
        el(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
        el(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16)),
        el(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11u16)),
        el(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        el(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(px.into())),
    ])
}

fn file(obj: InMemDicomObject, ts: &str) -> DefaultDicomObject {
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
        .expect("meta")
}

fn spec(w: u32, h: u32) -> PreprocessSpec {
    PreprocessSpec {
        width: w,
        height: h,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        crop: CropMode::None,
        dtype: OutputDType::F32,
    }
}

fn run(obj: InMemDicomObject) -> Result<pneumo_imaging::Preprocessed, ImagingError> {
    preprocess(&file(obj, EXPLICIT_LE), &spec(8, 8), None)
}

#[test]
fn synthetic_image_gives_normalised_nchw() {
    let out = run(image(16, 20)).unwrap();
    assert_eq!(out.tensor.shape, [1, 3, 8, 8]);
    let TensorData::F32(v) = &out.tensor.data else {
        panic!("f32 expected")
    };
    assert_eq!(v.len(), 3 * 64);
    // No VOI: min-max over 0..319 → grey in [0, 1]; channel 0 normalised.
    let lo = (0.0 - 0.485) / 0.229;
    let hi = (1.0 - 0.485) / 0.229;
    assert!(v[..64].iter().all(|x| *x >= lo - 1e-5 && *x <= hi + 1e-5));
    // Same grey in all three channels.
    let g0 = v[5] * 0.229 + 0.485;
    let g1 = v[64 + 5] * 0.224 + 0.456;
    assert!((g0 - g1).abs() < 1e-5);
    assert_eq!(out.report.grey.voi, "min-max");
    assert_eq!(out.report.crop.mode, CropMode::None);
}

#[test]
fn f16_output() {
    let mut s = spec(4, 4);
    s.dtype = OutputDType::F16;
    let out = preprocess(&file(image(8, 8), EXPLICIT_LE), &s, None).unwrap();
    assert!(matches!(out.tensor.data, TensorData::F16(ref v) if v.len() == 48));
    assert_eq!(&out.tensor.to_npy()[..6], b"\x93NUMPY");
}

#[test]
fn lung_box_crop_is_used_and_reported() {
    let mut s = spec(4, 4);
    s.crop = CropMode::LungBox;
    let b = LungBox {
        x0: 2,
        y0: 3,
        x1: 10,
        y1: 12,
    };
    let out = preprocess(&file(image(16, 16), EXPLICIT_LE), &s, Some(b)).unwrap();
    assert_eq!(out.report.crop.mode, CropMode::LungBox);
    assert_eq!(out.report.crop.bbox, b);
}

#[test]
fn lung_box_mode_without_a_box_is_an_error() {
    let mut s = spec(4, 4);
    s.crop = CropMode::LungBox;
    let e = preprocess(&file(image(8, 8), EXPLICIT_LE), &s, None).unwrap_err();
    assert_eq!(e, ImagingError::LungBoxMissing);
    let bad = LungBox {
        x0: 0,
        y0: 0,
        x1: 9,
        y1: 8,
    };
    let e = preprocess(&file(image(8, 8), EXPLICIT_LE), &s, Some(bad)).unwrap_err();
    assert_eq!(e.kind(), "invalid-lung-box");
}

#[test]
fn a_lung_box_too_small_or_flat_to_hold_lungs_is_refused() {
    use pneumo_imaging::{lung_box_refusal, GreyImage};
    // 1000x800, a gradient with a black band in rows 0..100.
    let (w, h) = (1000usize, 800usize);
    let data = (0..w * h)
        .map(|i| if i / w < 100 { 0.0 } else { (i % w) as f32 })
        .collect();
    let grey = GreyImage {
        width: w,
        height: h,
        data,
    };
    let b = |x0, y0, x1, y1| LungBox { x0, y0, x1, y1 };
    // A speck: what a segmentation that found almost nothing gives.
    let e = lung_box_refusal(&grey, &b(500, 400, 501, 401)).unwrap_err();
    assert_eq!(e.kind(), "lung-box-too-small");
    assert!(e.to_string().contains("at least 100x80"), "{e}");
    // One side short of a tenth of the image is enough to refuse it...
    let e = lung_box_refusal(&grey, &b(100, 200, 200, 279)).unwrap_err();
    assert!(e.to_string().contains("(100x79 pixels)"), "{e}");
    // ...a tenth each way is read.
    lung_box_refusal(&grey, &b(100, 200, 200, 280)).unwrap();
    // Below 640 pixels a side, the floor is 64 pixels, not a tenth.
    let small = GreyImage {
        width: 300,
        height: 300,
        data: (0..300 * 300).map(|i| (i % 300) as f32).collect(),
    };
    let e = lung_box_refusal(&small, &b(0, 0, 63, 300)).unwrap_err();
    assert!(e.to_string().contains("at least 64x64"), "{e}");
    lung_box_refusal(&small, &b(0, 0, 64, 64)).unwrap();
    // One value everywhere inside the box.
    let e = lung_box_refusal(&grey, &b(0, 0, 500, 100)).unwrap_err();
    assert_eq!(e.kind(), "no-image-content");
    // Outside the image.
    let e = lung_box_refusal(&grey, &b(0, 0, 1001, 800)).unwrap_err();
    assert_eq!(e.kind(), "invalid-lung-box");
}

#[test]
fn refuses_rgb() {
    let mut obj = image(4, 4);
    obj.put(el(
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        PrimitiveValue::from(3u16),
    ));
    obj.put(el(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        PrimitiveValue::from("RGB"),
    ));
    let e = run(obj).unwrap_err();
    assert_eq!(e.kind(), "colour");
    assert!(e.to_string().contains("RGB"), "{e}");
}

#[test]
fn refuses_ybr() {
    let mut obj = image(4, 4);
    obj.put(el(
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        PrimitiveValue::from(3u16),
    ));
    obj.put(el(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        PrimitiveValue::from("YBR_FULL_422"),
    ));
    let e = run(obj).unwrap_err();
    assert!(
        matches!(e, ImagingError::Colour { ref photometric, samples_per_pixel: 3 } if photometric == "YBR_FULL_422"),
        "{e}"
    );
}

#[test]
fn refuses_palette_colour() {
    let mut obj = image(4, 4);
    obj.put(el(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        PrimitiveValue::from("PALETTE COLOR"),
    ));
    assert_eq!(run(obj).unwrap_err().kind(), "colour");
}

#[test]
fn refuses_multi_frame() {
    let mut obj = image(4, 4);
    obj.put(el(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from("2"),
    ));
    let e = run(obj).unwrap_err();
    assert_eq!(e, ImagingError::MultiFrame { frames: 2 });
}

#[test]
fn refuses_bits_allocated_32() {
    let mut obj = image(4, 4);
    obj.put(el(
        tags::BITS_ALLOCATED,
        VR::US,
        PrimitiveValue::from(32u16),
    ));
    obj.put(el(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(vec![0u8; 64]),
    ));
    let e = run(obj).unwrap_err();
    assert_eq!(e, ImagingError::UnsupportedBitsAllocated { bits: 32 });
}

#[test]
fn refuses_no_pixel_data() {
    let mut obj = image(4, 4);
    obj.remove_element(tags::PIXEL_DATA);
    assert_eq!(run(obj).unwrap_err(), ImagingError::NoPixelData);
}

#[test]
fn refuses_short_pixel_data() {
    let mut obj = image(4, 4);
    obj.put(el(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(vec![0u16; 15].into()),
    ));
    let e = run(obj).unwrap_err();
    assert_eq!(
        e,
        ImagingError::PixelDataLength {
            expected: 32,
            actual: 30
        }
    );
}

#[test]
fn refuses_long_pixel_data() {
    let mut obj = image(4, 4);
    obj.put(el(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(vec![0u16; 20].into()),
    ));
    let e = run(obj).unwrap_err();
    assert_eq!(
        e,
        ImagingError::PixelDataLength {
            expected: 32,
            actual: 40
        }
    );
}

#[test]
fn accepts_odd_length_padding_byte() {
    // 3x3 8-bit = 9 bytes, stored padded to 10.
    let mut obj = image(3, 3);
    obj.put(el(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(8u16)));
    obj.put(el(tags::BITS_STORED, VR::US, PrimitiveValue::from(8u16)));
    obj.put(el(tags::HIGH_BIT, VR::US, PrimitiveValue::from(7u16)));
    obj.put(el(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(vec![1u8; 10]),
    ));
    assert!(run(obj).is_ok());
}

#[test]
fn refuses_undecodable_transfer_syntax() {
    let mut obj = image(4, 4);
    let frag = PixelFragmentSequence::new(vec![0u32], vec![vec![0u8; 16]]);
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        Value::from(frag),
    ));
    let mpeg2 = "1.2.840.10008.1.2.4.100";
    assert!(!can_decode(mpeg2));
    let e = preprocess(&file(obj, mpeg2), &spec(8, 8), None).unwrap_err();
    assert_eq!(e.kind(), "unsupported-transfer-syntax");
    assert!(e.to_string().contains(mpeg2), "{e}");
}

#[test]
fn refuses_missing_photometric() {
    let mut obj = image(4, 4);
    obj.remove_element(tags::PHOTOMETRIC_INTERPRETATION);
    assert_eq!(
        run(obj).unwrap_err(),
        ImagingError::MissingAttribute("PhotometricInterpretation")
    );
}

#[test]
fn rejects_bad_spec() {
    let mut s = spec(8, 8);
    s.std = [0.0, 1.0, 1.0];
    let e = preprocess(&file(image(4, 4), EXPLICIT_LE), &s, None).unwrap_err();
    assert_eq!(e.kind(), "invalid-spec");
}

#[test]
fn an_unreadable_second_window_leaves_the_first_in_use() {
    for widths in ["1500\\abc", "1500\\"] {
        let mut obj = image(16, 20);
        obj.put(el(
            tags::WINDOW_CENTER,
            VR::DS,
            PrimitiveValue::from("1800\\40"),
        ));
        obj.put(el(tags::WINDOW_WIDTH, VR::DS, PrimitiveValue::from(widths)));
        let out = run(obj).unwrap();
        assert_eq!(out.report.grey.voi, "window", "{widths}");
    }
}
