//! The crop step: `none`, or `lung-box`, the bounding box of a lung mask.
//!
//! Running the segmentation model belongs to the inference crate; this
//! module takes its output (a mask, or a box already computed) as input.

use serde::{Deserialize, Serialize};

use crate::error::ImagingError;

/// Crop mode, from the model contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CropMode {
    /// The whole image.
    #[default]
    None,
    /// The bounding rectangle of the lung mask.
    LungBox,
}

impl CropMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            CropMode::None => "none",
            CropMode::LungBox => "lung-box",
        }
    }
}

impl std::str::FromStr for CropMode {
    type Err = ImagingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(CropMode::None),
            "lung-box" => Ok(CropMode::LungBox),
            other => Err(ImagingError::InvalidSpec(format!(
                "crop mode {other:?} (expected none or lung-box)"
            ))),
        }
    }
}

/// A box in the pixel coordinates of the image (columns x, rows y),
/// half-open: `x0 <= x < x1`, `y0 <= y < y1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LungBox {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

impl std::fmt::Display for LungBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}) x [{}, {})", self.x0, self.x1, self.y0, self.y1)
    }
}

impl LungBox {
    /// The bounding box of the non-zero pixels of a `mask_w`×`mask_h`
    /// row-major mask, scaled to an image of `image_w`×`image_h` pixels (the
    /// mask may have been computed at another resolution, e.g. the
    /// segmentation model's input size), grown by `margin` (a fraction of the
    /// box's width and height on each side) and clipped to the image.
    /// `None` when the mask is empty or its size does not match.
    pub fn from_mask(
        mask: &[u8],
        mask_w: usize,
        mask_h: usize,
        image_w: u32,
        image_h: u32,
        margin: f64,
    ) -> Option<LungBox> {
        if mask_w == 0 || mask_h == 0 || mask.len() != mask_w * mask_h {
            return None;
        }
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0usize, 0usize);
        for (y, row) in mask.chunks_exact(mask_w).enumerate() {
            if let (Some(first), Some(last)) = (
                row.iter().position(|&m| m != 0),
                row.iter().rposition(|&m| m != 0),
            ) {
                x0 = x0.min(first);
                x1 = x1.max(last + 1);
                y0 = y0.min(y);
                y1 = y + 1;
            }
        }
        if x0 == usize::MAX {
            return None;
        }
        let sx = f64::from(image_w) / mask_w as f64;
        let sy = f64::from(image_h) / mask_h as f64;
        let (fx0, fx1) = (x0 as f64 * sx, x1 as f64 * sx);
        let (fy0, fy1) = (y0 as f64 * sy, y1 as f64 * sy);
        let mx = (fx1 - fx0) * margin.max(0.0);
        let my = (fy1 - fy0) * margin.max(0.0);
        let clip = |v: f64, max: u32| v.clamp(0.0, f64::from(max)) as u32;
        let b = LungBox {
            x0: clip((fx0 - mx).floor(), image_w),
            y0: clip((fy0 - my).floor(), image_h),
            x1: clip((fx1 + mx).ceil(), image_w),
            y1: clip((fy1 + my).ceil(), image_h),
        };
        (b.x1 > b.x0 && b.y1 > b.y0).then_some(b)
    }

    /// Checks the box lies inside a `w`×`h` image and is not empty.
    pub fn validate(&self, w: u32, h: u32) -> Result<(), ImagingError> {
        if self.x0 < self.x1 && self.y0 < self.y1 && self.x1 <= w && self.y1 <= h {
            Ok(())
        } else {
            Err(ImagingError::InvalidLungBox(format!(
                "{self} in a {w}x{h} image"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_of_a_synthetic_two_lung_mask() {
        // 20x10 mask, two "lungs" at columns 2..6 and 12..17, rows 3..8.
        let (w, h) = (20usize, 10usize);
        let mut mask = vec![0u8; w * h];
        for y in 3..8 {
            for x in (2..6).chain(12..17) {
                mask[y * w + x] = 1;
            }
        }
        let b = LungBox::from_mask(&mask, w, h, 20, 10, 0.0).unwrap();
        assert_eq!(
            b,
            LungBox {
                x0: 2,
                y0: 3,
                x1: 17,
                y1: 8
            }
        );
        // Scaled to a 200x100 image.
        let b = LungBox::from_mask(&mask, w, h, 200, 100, 0.0).unwrap();
        assert_eq!(
            b,
            LungBox {
                x0: 20,
                y0: 30,
                x1: 170,
                y1: 80
            }
        );
        // A margin grows the box and is clipped to the image.
        let b = LungBox::from_mask(&mask, w, h, 200, 100, 0.5).unwrap();
        assert_eq!(
            b,
            LungBox {
                x0: 0,
                y0: 5,
                x1: 200,
                y1: 100
            }
        );
    }

    #[test]
    fn empty_or_mismatched_mask_gives_no_box() {
        assert_eq!(LungBox::from_mask(&[0; 12], 4, 3, 40, 30, 0.0), None);
        assert_eq!(LungBox::from_mask(&[1; 11], 4, 3, 40, 30, 0.0), None);
    }

    #[test]
    fn validate_rejects_outside_and_empty() {
        let b = LungBox {
            x0: 0,
            y0: 0,
            x1: 10,
            y1: 10,
        };
        assert!(b.validate(10, 10).is_ok());
        assert!(b.validate(9, 10).is_err());
        let e = LungBox {
            x0: 5,
            y0: 0,
            x1: 5,
            y1: 10,
        };
        assert!(e.validate(10, 10).is_err());
    }

    #[test]
    fn crop_mode_parses() {
        assert_eq!("none".parse::<CropMode>().unwrap(), CropMode::None);
        assert_eq!("lung-box".parse::<CropMode>().unwrap(), CropMode::LungBox);
        assert!("lungs".parse::<CropMode>().is_err());
    }
}
