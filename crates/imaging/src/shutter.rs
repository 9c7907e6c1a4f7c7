//! The Display Shutter (PS3.3 C.7.6.11): the part of a radiograph a viewer
//! shows. Outside it lies the collimated border, unexposed and so white in
//! the stored pixels; a viewer paints it black (or the Shutter Presentation
//! Value). The model is fed what the viewer shows: a bright frame it never
//! saw in training changed its answer on the same image.

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde::Serialize;

use crate::grey::GreyImage;
use crate::header::{get_multi_f64, get_multi_str, get_u16};

/// One shape of the shutter, in the standard's 1-based pixel coordinates.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    /// Columns `left..=right`, rows `upper..=lower` are shown.
    Rectangular {
        left: f64,
        right: f64,
        upper: f64,
        lower: f64,
    },
    /// Pixels within `radius` of the centre (row, column) are shown.
    Circular { row: f64, column: f64, radius: f64 },
    /// Pixels inside the polygon of (row, column) vertices are shown.
    Polygonal(Vec<(f64, f64)>),
}

/// What was applied, for the report.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ShutterReport {
    /// Shutter Shape as written (e.g. `RECTANGULAR\CIRCULAR`); None: no shutter.
    pub shutter_shape: Option<String>,
    /// Pixels outside the shutter, painted with the presentation value.
    pub shuttered_pixels: usize,
    /// Shutter Presentation Value (0-65535), when given; else black.
    pub shutter_presentation_value: Option<u16>,
    /// Shapes written but not applied, and why (a bitmap shutter, values
    /// that do not make a shape).
    pub shutter_not_applied: Vec<String>,
    /// The box of the pixels the shutter shows, [x0, y0, x1, y1] half-open
    /// (None: it shows none, or there is no shutter).
    pub shutter_shown_box: Option<[u32; 4]>,
}

/// The shutter of a data set: the shapes it describes and the grey value
/// outside them.
#[derive(Debug, Clone)]
pub(crate) struct DisplayShutter {
    written: String,
    shapes: Vec<Shape>,
    presentation_value: Option<u16>,
    not_applied: Vec<String>,
}

impl DisplayShutter {
    /// None when the data set has no Shutter Shape.
    pub(crate) fn from_obj(obj: &InMemDicomObject) -> Option<DisplayShutter> {
        let kinds = get_multi_str(obj, tags::SHUTTER_SHAPE);
        if kinds.is_empty() {
            return None;
        }
        let values = |tag| get_multi_f64(obj, tag);
        let mut shapes = Vec::new();
        let mut not_applied = Vec::new();
        for kind in &kinds {
            let shape = match kind.as_str() {
                "RECTANGULAR" => rectangular(
                    &values(tags::SHUTTER_LEFT_VERTICAL_EDGE),
                    &values(tags::SHUTTER_RIGHT_VERTICAL_EDGE),
                    &values(tags::SHUTTER_UPPER_HORIZONTAL_EDGE),
                    &values(tags::SHUTTER_LOWER_HORIZONTAL_EDGE),
                ),
                "CIRCULAR" => circular(
                    &values(tags::CENTER_OF_CIRCULAR_SHUTTER),
                    &values(tags::RADIUS_OF_CIRCULAR_SHUTTER),
                ),
                "POLYGONAL" => polygonal(&values(tags::VERTICES_OF_THE_POLYGONAL_SHUTTER)),
                "BITMAP" => Err("a bitmap shutter (an overlay plane) is not applied".to_string()),
                other => Err(format!("unknown shutter shape {other}")),
            };
            match shape {
                Ok(shape) => shapes.push(shape),
                Err(why) => not_applied.push(why),
            }
        }
        Some(DisplayShutter {
            written: kinds.join("\\"),
            shapes,
            presentation_value: get_u16(obj, tags::SHUTTER_PRESENTATION_VALUE),
            not_applied,
        })
    }

    /// Paints the pixels outside every shape (a viewer shows their
    /// intersection) with the presentation value; returns the report.
    pub(crate) fn apply(&self, img: &mut GreyImage) -> ShutterReport {
        let value = self
            .presentation_value
            .map_or(0.0, |v| f32::from(v) / f32::from(u16::MAX));
        let mut shuttered = 0;
        let mut shown_box: Option<[u32; 4]> = None;
        if img.width > 0 && !self.shapes.is_empty() {
            let mut shown = vec![true; img.width];
            for (r, row) in img.data.chunks_mut(img.width).enumerate() {
                shown.fill(true);
                for shape in &self.shapes {
                    shape.keep_shown(r as f64 + 1.0, &mut shown);
                }
                for (v, _) in row.iter_mut().zip(&shown).filter(|(_, s)| !**s) {
                    *v = value;
                    shuttered += 1;
                }
                let first = shown.iter().position(|s| *s);
                let last = shown.iter().rposition(|s| *s);
                if let (Some(first), Some(last)) = (first, last) {
                    let (x0, x1, y) = (first as u32, last as u32 + 1, r as u32);
                    shown_box = Some(match shown_box {
                        None => [x0, y, x1, y + 1],
                        Some([a, b, c, _]) => [a.min(x0), b, c.max(x1), y + 1],
                    });
                }
            }
        } else {
            shown_box = Some([0, 0, img.width as u32, img.height as u32]);
        }
        ShutterReport {
            shutter_shape: Some(self.written.clone()),
            shuttered_pixels: shuttered,
            shutter_presentation_value: self.presentation_value,
            shutter_not_applied: self.not_applied.clone(),
            shutter_shown_box: shown_box,
        }
    }
}

impl Shape {
    /// Clears `shown[c]` for each column of row `row` (1-based) outside
    /// the shape; `shown[0]` is column 1.
    fn keep_shown(&self, row: f64, shown: &mut [bool]) {
        let column = |i: usize| i as f64 + 1.0;
        match self {
            Shape::Rectangular {
                left,
                right,
                upper,
                lower,
            } => {
                let in_rows = row >= *upper && row <= *lower;
                for (i, s) in shown.iter_mut().enumerate() {
                    *s &= in_rows && column(i) >= *left && column(i) <= *right;
                }
            }
            Shape::Circular {
                row: cr,
                column: cc,
                radius,
            } => {
                let dy = row - cr;
                let half = (radius * radius - dy * dy).max(-1.0);
                for (i, s) in shown.iter_mut().enumerate() {
                    let dx = column(i) - cc;
                    *s &= half >= 0.0 && dx * dx <= half;
                }
            }
            Shape::Polygonal(vertices) => {
                // Crossings of this row with the edges, a vertex's row
                // counted on one side only; inside between pairs.
                let mut crossings: Vec<f64> = Vec::new();
                for (i, &(r0, c0)) in vertices.iter().enumerate() {
                    let (r1, c1) = vertices[(i + 1) % vertices.len()];
                    if (r0 <= row) != (r1 <= row) {
                        crossings.push(c0 + (row - r0) * (c1 - c0) / (r1 - r0));
                    }
                }
                crossings.sort_by(f64::total_cmp);
                for (i, s) in shown.iter_mut().enumerate() {
                    let c = column(i);
                    *s &= crossings
                        .chunks_exact(2)
                        .any(|pair| c >= pair[0] && c <= pair[1]);
                }
            }
        }
    }
}

fn single(values: &[f64], name: &str) -> Result<f64, String> {
    match values {
        [v] if v.is_finite() => Ok(*v),
        _ => Err(format!("{name} {values:?} is not one number")),
    }
}

fn rectangular(left: &[f64], right: &[f64], upper: &[f64], lower: &[f64]) -> Result<Shape, String> {
    let shape = Shape::Rectangular {
        left: single(left, "Shutter Left Vertical Edge")?,
        right: single(right, "Shutter Right Vertical Edge")?,
        upper: single(upper, "Shutter Upper Horizontal Edge")?,
        lower: single(lower, "Shutter Lower Horizontal Edge")?,
    };
    match shape {
        Shape::Rectangular {
            left,
            right,
            upper,
            lower,
        } if left > right || upper > lower => Err(format!(
            "a rectangular shutter with its edges crossed (columns {left} to {right}, rows {upper} to {lower})"
        )),
        shape => Ok(shape),
    }
}

fn circular(center: &[f64], radius: &[f64]) -> Result<Shape, String> {
    let radius = single(radius, "Radius of Circular Shutter")?;
    match center {
        [row, column] if row.is_finite() && column.is_finite() && radius > 0.0 => {
            Ok(Shape::Circular {
                row: *row,
                column: *column,
                radius,
            })
        }
        _ => Err(format!(
            "a circular shutter of centre {center:?} and radius {radius} is not a circle"
        )),
    }
}

fn polygonal(vertices: &[f64]) -> Result<Shape, String> {
    if vertices.len() < 6
        || !vertices.len().is_multiple_of(2)
        || vertices.iter().any(|v| !v.is_finite())
    {
        return Err(format!(
            "a polygonal shutter needs at least three (row, column) vertices, got {} values",
            vertices.len()
        ));
    }
    Ok(Shape::Polygonal(
        vertices.chunks_exact(2).map(|p| (p[0], p[1])).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    fn image(width: usize, height: usize) -> GreyImage {
        GreyImage {
            width,
            height,
            data: vec![1.0; width * height],
        }
    }

    fn obj(elements: &[(dicom_core::Tag, VR, &str)]) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        for (tag, vr, value) in elements {
            o.put(DataElement::new(
                *tag,
                *vr,
                PrimitiveValue::from(value.to_string()),
            ));
        }
        o
    }

    /// The image as rows of '#' (shown, 1.0) and '.' (shuttered).
    fn picture(img: &GreyImage) -> Vec<String> {
        img.data
            .chunks(img.width)
            .map(|r| r.iter().map(|&v| if v > 0.5 { '#' } else { '.' }).collect())
            .collect()
    }

    #[test]
    fn no_shutter_shape_is_no_shutter() {
        assert!(DisplayShutter::from_obj(&obj(&[])).is_none());
    }

    #[test]
    fn a_rectangle_keeps_its_edges_inclusive() {
        let o = obj(&[
            (tags::SHUTTER_SHAPE, VR::CS, "RECTANGULAR"),
            (tags::SHUTTER_LEFT_VERTICAL_EDGE, VR::IS, "2"),
            (tags::SHUTTER_RIGHT_VERTICAL_EDGE, VR::IS, "4"),
            (tags::SHUTTER_UPPER_HORIZONTAL_EDGE, VR::IS, "2"),
            (tags::SHUTTER_LOWER_HORIZONTAL_EDGE, VR::IS, "3"),
        ]);
        let mut img = image(5, 4);
        let report = DisplayShutter::from_obj(&o).unwrap().apply(&mut img);
        assert_eq!(picture(&img), [".....", ".###.", ".###.", "....."]);
        assert_eq!(report.shuttered_pixels, 14);
        assert_eq!(report.shutter_shown_box, Some([1, 1, 4, 3]));
        assert_eq!(report.shutter_shape.as_deref(), Some("RECTANGULAR"));
        assert!(report.shutter_not_applied.is_empty());
    }

    #[test]
    fn shapes_together_show_their_intersection_in_the_presentation_value() {
        let o = obj(&[
            (tags::SHUTTER_SHAPE, VR::CS, "CIRCULAR\\RECTANGULAR"),
            (tags::CENTER_OF_CIRCULAR_SHUTTER, VR::IS, "4\\4"),
            (tags::RADIUS_OF_CIRCULAR_SHUTTER, VR::IS, "2"),
            (tags::SHUTTER_LEFT_VERTICAL_EDGE, VR::IS, "1"),
            (tags::SHUTTER_RIGHT_VERTICAL_EDGE, VR::IS, "4"),
            (tags::SHUTTER_UPPER_HORIZONTAL_EDGE, VR::IS, "1"),
            (tags::SHUTTER_LOWER_HORIZONTAL_EDGE, VR::IS, "7"),
        ]);
        let mut o = o;
        o.put(DataElement::new(
            tags::SHUTTER_PRESENTATION_VALUE,
            VR::US,
            PrimitiveValue::from(65535_u16),
        ));
        let mut img = image(7, 7);
        for v in img.data.iter_mut() {
            *v = 0.75;
        }
        let report = DisplayShutter::from_obj(&o).unwrap().apply(&mut img);
        let shown: Vec<String> = img
            .data
            .chunks(7)
            .map(|r| {
                r.iter()
                    .map(|&v| if v == 0.75 { '#' } else { 'w' })
                    .collect()
            })
            .collect();
        assert_eq!(
            shown,
            ["wwwwwww", "www#www", "ww##www", "w###www", "ww##www", "www#www", "wwwwwww"]
        );
        assert_eq!(report.shutter_presentation_value, Some(65535));
        assert_eq!(img.data[0], 1.0, "white outside: presentation value 65535");
    }

    #[test]
    fn a_polygon_keeps_its_inside() {
        // a triangle: apex at row 1 column 4, base on row 5 from column 1 to
        // 7 (a row on an edge's end counts on one side only: the base row
        // is outside)
        let o = obj(&[
            (tags::SHUTTER_SHAPE, VR::CS, "POLYGONAL"),
            (
                tags::VERTICES_OF_THE_POLYGONAL_SHUTTER,
                VR::IS,
                "1\\4\\5\\7\\5\\1",
            ),
        ]);
        let mut img = image(7, 6);
        DisplayShutter::from_obj(&o).unwrap().apply(&mut img);
        assert_eq!(
            picture(&img),
            ["...#...", "...#...", "..###..", ".#####.", ".......", "......."]
        );
    }

    #[test]
    fn shapes_that_cannot_be_drawn_are_named_and_not_applied() {
        let o = obj(&[
            (
                tags::SHUTTER_SHAPE,
                VR::CS,
                "RECTANGULAR\\BITMAP\\POLYGONAL",
            ),
            (tags::SHUTTER_LEFT_VERTICAL_EDGE, VR::IS, "9"),
            (tags::SHUTTER_RIGHT_VERTICAL_EDGE, VR::IS, "2"),
            (tags::SHUTTER_UPPER_HORIZONTAL_EDGE, VR::IS, "1"),
            (tags::SHUTTER_LOWER_HORIZONTAL_EDGE, VR::IS, "3"),
            (tags::VERTICES_OF_THE_POLYGONAL_SHUTTER, VR::IS, "1\\2\\3"),
        ]);
        let mut img = image(4, 3);
        let report = DisplayShutter::from_obj(&o).unwrap().apply(&mut img);
        assert_eq!(report.shuttered_pixels, 0);
        assert_eq!(report.shutter_not_applied.len(), 3, "{report:?}");
        assert!(report.shutter_not_applied[1].contains("bitmap"));
        assert!(img.data.iter().all(|&v| v == 1.0));
    }
}
