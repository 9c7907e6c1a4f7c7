//! JPEG (DCT processes 1, 2 and 4, and lossless process 14) decoded with
//! libjpeg-turbo 3.
//!
//! Why not the registry's decoder: `jpeg-decoder` has no 12-bit DCT, which is
//! what CR/DX send as JPEG Extended, and its IDCT rounds differently from the
//! IJG integer IDCT that DCMTK, Pillow and libjpeg-turbo share, so its output
//! drifts from theirs by one grey level (see docs/decisions.md). libjpeg-turbo
//! (built statically from the `turbojpeg-sys` crate's bundled source) decodes
//! 8- and 12-bit DCT with the accurate integer IDCT (`TJPARAM_FASTDCT` 0),
//! and lossless JPEG of 2 to 16 bits, point transform included (which
//! `jpeg-decoder` 0.3 decodes wrongly: it predicts from shifted samples).

use std::ffi::CStr;

use turbojpeg_sys as tj;

/// Samples of one greyscale JPEG image, exactly as the codestream holds them.
pub(crate) struct JpegImage {
    pub width: usize,
    pub height: usize,
    /// Bits per sample of the codestream (8 or 12 for DCT, up to 16 lossless).
    pub precision: u32,
    pub samples: Samples,
}

pub(crate) enum Samples {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

/// A TurboJPEG decompressor, destroyed on drop.
struct Decompressor(tj::tjhandle);

impl Decompressor {
    fn new() -> Result<Self, String> {
        // SAFETY: tj3Init has no preconditions; a null return is checked.
        let handle = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as i32) };
        if handle.is_null() {
            return Err("cannot create a libjpeg-turbo decompressor".into());
        }
        Ok(Self(handle))
    }

    fn get(&self, param: tj::TJPARAM) -> i32 {
        // SAFETY: the handle is live for as long as self.
        unsafe { tj::tj3Get(self.0, param as i32) }
    }

    fn set(&self, param: tj::TJPARAM, value: i32) -> Result<(), String> {
        // SAFETY: the handle is live for as long as self.
        self.check(unsafe { tj::tj3Set(self.0, param as i32, value) })
    }

    /// Turns TurboJPEG's -1 into its message. Warnings are errors here (see
    /// `decode`), so a warning's text is reported like any other.
    fn check(&self, rc: i32) -> Result<(), String> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by
        // the handle, valid until the next call on it.
        let msg = unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.0)) };
        Err(format!("libjpeg-turbo: {}", msg.to_string_lossy()))
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { tj::tj3Destroy(self.0) }
    }
}

/// Decodes one greyscale JPEG codestream (a whole frame: all fragments of
/// the frame concatenated). `max_pixels` bounds the allocation before the
/// codestream's own dimensions are trusted.
pub(crate) fn decode_grey(codestream: &[u8], max_pixels: usize) -> Result<JpegImage, String> {
    let d = Decompressor::new()?;
    // A warning (corrupt data, premature end) would otherwise leave grey
    // filler in the image; an analysis must not run on that.
    d.set(tj::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
    d.set(tj::TJPARAM_TJPARAM_FASTDCT, 0)?;
    // SAFETY: pointer and length describe the borrowed slice.
    d.check(unsafe {
        tj::tj3DecompressHeader(d.0, codestream.as_ptr(), codestream.len() as tj::size_t)
    })?;
    let width = d.get(tj::TJPARAM_TJPARAM_JPEGWIDTH);
    let height = d.get(tj::TJPARAM_TJPARAM_JPEGHEIGHT);
    let precision = d.get(tj::TJPARAM_TJPARAM_PRECISION);
    let colorspace = d.get(tj::TJPARAM_TJPARAM_COLORSPACE);
    if width <= 0 || height <= 0 {
        return Err(format!("JPEG header gives a {width}x{height} image"));
    }
    if colorspace != tj::TJCS_TJCS_GRAY as i32 {
        return Err("the JPEG codestream has colour components, not one grey one".into());
    }
    let (width, height) = (width as usize, height as usize);
    let pixels = width * height;
    if pixels > max_pixels {
        return Err(format!(
            "the JPEG codestream is {width}x{height}, larger than the image it belongs to"
        ));
    }
    let len = codestream.len() as tj::size_t;
    let gray = tj::TJPF_TJPF_GRAY;
    let samples = match precision {
        2..=8 => {
            let mut out = vec![0u8; pixels];
            // SAFETY: `out` holds width*height samples, the size TurboJPEG
            // writes for a greyscale image with pitch 0 (= width).
            d.check(unsafe {
                tj::tj3Decompress8(d.0, codestream.as_ptr(), len, out.as_mut_ptr(), 0, gray)
            })?;
            Samples::U8(out)
        }
        9..=12 => {
            let mut out = vec![0i16; pixels];
            // SAFETY: as above, one i16 per sample.
            d.check(unsafe {
                tj::tj3Decompress12(d.0, codestream.as_ptr(), len, out.as_mut_ptr(), 0, gray)
            })?;
            Samples::U16(out.into_iter().map(|s| s as u16).collect())
        }
        13..=16 => {
            let mut out = vec![0u16; pixels];
            // SAFETY: as above, one u16 per sample (lossless only).
            d.check(unsafe {
                tj::tj3Decompress16(d.0, codestream.as_ptr(), len, out.as_mut_ptr(), 0, gray)
            })?;
            Samples::U16(out)
        }
        p => return Err(format!("JPEG sample precision {p} is not 2 to 16 bits")),
    };
    Ok(JpegImage {
        width,
        height,
        precision: precision as u32,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_a_jpeg_is_an_error_with_libjpeg_turbo_s_reason() {
        let err = decode_grey(b"\xff\xd8\xff\xe0 definitely not a JPEG", 1 << 20)
            .err()
            .unwrap();
        assert!(err.starts_with("libjpeg-turbo:"), "{err}");
        let err = decode_grey(b"", 1 << 20).err().unwrap();
        assert!(err.starts_with("libjpeg-turbo:"), "{err}");
    }
}
