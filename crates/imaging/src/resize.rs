//! Resampling with the arithmetic of Pillow's `Image.resize(size,
//! Image.BILINEAR)` on a mode "F" (32-bit float) image: a separable triangle
//! filter whose support grows with the reduction factor (antialiased),
//! coefficients in double precision normalised to sum 1, a horizontal pass
//! into a float image over the rows the vertical pass needs, then a vertical
//! pass. Written from the description of the algorithm; the parity test
//! compares it with Pillow itself.

/// Filter taps of one output sample: first input index and weights.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    /// `ksize` weights per output sample.
    weights: Vec<f64>,
    ksize: usize,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // triangle support 1.0, stretched
    let ksize = support.ceil() as usize * 2 + 1;
    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut weights = vec![0.0f64; out_size * ksize];
    let inv = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C-style truncation toward zero, then clamped to the image.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
        let n = xmax.saturating_sub(xmin);
        let k = &mut weights[xx * ksize..xx * ksize + n.min(ksize)];
        let mut sum = 0.0;
        for (x, w) in k.iter_mut().enumerate() {
            *w = triangle((x as f64 + xmin as f64 - center + 0.5) * inv);
            sum += *w;
        }
        if sum != 0.0 {
            for w in k.iter_mut() {
                *w /= sum;
            }
        }
        start.push(xmin);
        len.push(n.min(ksize));
    }
    Taps {
        start,
        len,
        weights,
        ksize,
    }
}

/// Sum of `px[i] * k[i]` in double precision, with four partial sums
/// (the order of additions differs from a single running sum by rounding
/// only, far below single precision).
#[inline]
fn dot(px: &[f32], k: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut pc = px.chunks_exact(4);
    let mut kc = k.chunks_exact(4);
    for (p, w) in (&mut pc).zip(&mut kc) {
        for j in 0..4 {
            acc[j] += f64::from(p[j]) * w[j];
        }
    }
    let mut tail = 0.0;
    for (p, w) in pc.remainder().iter().zip(kc.remainder()) {
        tail += f64::from(*p) * w;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Resizes the `w`×`h` window at (`x0`, `y0`) of a row-major image with row
/// stride `stride` to `out_w`×`out_h`.
#[allow(clippy::too_many_arguments)]
pub fn resize_bilinear(
    src: &[f32],
    stride: usize,
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<f32> {
    let need_h = out_w != w;
    let need_v = out_h != h;
    let vt = taps(h, out_h);
    // Rows of the (cropped) source the vertical pass reads.
    let (row_first, row_last) = if need_v {
        let last = out_h - 1;
        (vt.start[0], vt.start[last] + vt.len[last])
    } else {
        (0, h)
    };

    // Horizontal pass (or a copy of the needed rows).
    let tmp_w = out_w;
    let tmp_h = row_last - row_first;
    let mut tmp = vec![0.0f32; tmp_w * tmp_h];
    if need_h {
        let ht = taps(w, out_w);
        for (ty, trow) in tmp.chunks_exact_mut(tmp_w).enumerate() {
            let base = (y0 + row_first + ty) * stride + x0;
            let row = &src[base..base + w];
            for (xx, out) in trow.iter_mut().enumerate() {
                let s = ht.start[xx];
                let k = &ht.weights[xx * ht.ksize..xx * ht.ksize + ht.len[xx]];
                *out = dot(&row[s..s + k.len()], k) as f32;
            }
        }
    } else {
        for (ty, trow) in tmp.chunks_exact_mut(tmp_w).enumerate() {
            let base = (y0 + row_first + ty) * stride + x0;
            trow.copy_from_slice(&src[base..base + w]);
        }
    }
    if !need_v {
        return tmp;
    }

    // Vertical pass, accumulating whole rows for cache-friendly access.
    let mut out = vec![0.0f32; out_w * out_h];
    let mut acc = vec![0.0f64; out_w];
    for (yy, orow) in out.chunks_exact_mut(out_w).enumerate() {
        acc.iter_mut().for_each(|a| *a = 0.0);
        let s = vt.start[yy] - row_first;
        let k = &vt.weights[yy * vt.ksize..yy * vt.ksize + vt.len[yy]];
        for (dy, kw) in k.iter().enumerate() {
            let trow = &tmp[(s + dy) * tmp_w..(s + dy + 1) * tmp_w];
            for (a, p) in acc.iter_mut().zip(trow) {
                *a += f64::from(*p) * kw;
            }
        }
        for (o, a) in orow.iter_mut().zip(&acc) {
            *o = *a as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![0.25f32; 37 * 53];
        let out = resize_bilinear(&src, 37, 0, 0, 37, 53, 8, 5);
        assert_eq!(out.len(), 40);
        assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-7));
    }

    #[test]
    fn weights_sum_to_one_and_stay_inside() {
        for (i, o) in [(1000, 224), (224, 224), (100, 224), (2, 1), (5, 3)] {
            let t = taps(i, o);
            for xx in 0..o {
                let k = &t.weights[xx * t.ksize..xx * t.ksize + t.len[xx]];
                assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                assert!(t.start[xx] + t.len[xx] <= i);
            }
        }
    }

    #[test]
    fn halving_is_a_weighted_pair_average() {
        // 4 -> 2: scale 2, support 2, center 1.0 for the first output:
        // inputs 0..3 with weights (0.25, 0.75, 0.75, 0.25)/2 clipped to 0..3
        let src = [0.0f32, 1.0, 2.0, 3.0];
        let out = resize_bilinear(&src, 4, 0, 0, 4, 1, 2, 1);
        // x = 0,1,2 weights tri((x-1+0.5)/2): 0.75, 0.75, 0.25 -> /1.75
        let e0 = (0.0 * 0.75 + 1.0 * 0.75 + 2.0 * 0.25) / 1.75;
        assert!((out[0] - e0 as f32).abs() < 1e-6);
    }

    #[test]
    fn crop_window_is_respected() {
        let mut src = vec![0.0f32; 10 * 10];
        for y in 2..6 {
            for x in 3..7 {
                src[y * 10 + x] = 1.0;
            }
        }
        let out = resize_bilinear(&src, 10, 3, 2, 4, 4, 2, 2);
        assert!(out.iter().all(|v| (v - 1.0).abs() < 1e-7));
    }
}
