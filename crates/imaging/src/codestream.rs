//! What a frame's codestream says of its own size, read from its header
//! before a registry decoder runs. The dicom-rs adapters size their output
//! from Rows and Columns and check only the byte count: a JPEG 2000 or
//! JPEG-LS codestream of 230×244 under a header of 244×230 decoded into
//! stripes, one a few rows short was padded, a wider one sheared, and an
//! RLE frame longer than the header was cut; each was analysed as a chest.
//! (JPEG through libjpeg-turbo is checked in `decode_jpeg`.)

const JPEG_LS: [&str; 2] = ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"];
const JPEG_2000: [&str; 5] = [
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
];
const RLE: &str = "1.2.840.10008.1.2.5";

/// What a codestream header says of its image.
struct CodestreamHeader {
    width: u32,
    height: u32,
    components: u32,
    /// Bits per sample (of the first component).
    precision: u32,
}

/// The frame's codestream (all its fragments, in order) against the
/// header's Rows, Columns, samples per pixel and Bits Allocated: `Err` says
/// how they differ (or why the codestream header cannot be read). Syntaxes
/// not listed above pass.
pub(crate) fn check_frame_size(
    uid: &str,
    codestream: &[u8],
    rows: u32,
    cols: u32,
    bits_allocated: u16,
) -> Result<(), String> {
    let (name, header) = if JPEG_2000.contains(&uid) {
        ("JPEG 2000", jpeg2000_header(codestream)?)
    } else if JPEG_LS.contains(&uid) {
        ("JPEG-LS", jpeg_ls_header(codestream)?)
    } else if uid == RLE {
        return rle_frame_matches(codestream, rows, cols, usize::from(bits_allocated / 8));
    } else {
        return Ok(());
    };
    let CodestreamHeader {
        width,
        height,
        components,
        precision,
    } = header;
    // Decoded into Bits Allocated, wider samples lost their high bits: a
    // 15-bit image under Bits Allocated 8 was analysed, and forwarded
    // decompressed, as noise (PS3.5 8.2: the data set must describe the
    // codestream).
    if precision > u32::from(bits_allocated) {
        return Err(format!(
            "the {name} codestream has {precision}-bit samples, more than Bits Allocated \
             {bits_allocated}"
        ));
    }
    if (width, height) != (cols, rows) {
        return Err(format!(
            "the {name} codestream is {width}x{height}, the data set says {cols}x{rows}"
        ));
    }
    if components != 1 {
        return Err(format!(
            "the {name} codestream has {components} components, the data set 1 sample per pixel"
        ));
    }
    Ok(())
}

fn be16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_be_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Width, height, components and the first component's precision from the
/// SIZ marker segment (ITU-T T.800 A.5.1), which follows SOC; a JP2 file
/// (not allowed in DICOM, but written) is looked into for its contiguous
/// codestream box.
fn jpeg2000_header(data: &[u8]) -> Result<CodestreamHeader, String> {
    let unreadable = || "the JPEG 2000 codestream has no readable SIZ header".to_string();
    let cs = if data.starts_with(&[0xFF, 0x4F]) {
        data
    } else {
        jp2_codestream(data).ok_or_else(unreadable)?
    };
    if cs.get(2..4) != Some(&[0xFF, 0x51]) {
        return Err(unreadable());
    }
    // SIZ: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz
    let field = |at| be32(cs, at).ok_or_else(unreadable);
    let (xsiz, ysiz, xosiz, yosiz) = (field(8)?, field(12)?, field(16)?, field(20)?);
    let csiz = be16(cs, 40).ok_or_else(unreadable)?;
    // Ssiz: bit 7 the sign, bits 0-6 the precision less one.
    let ssiz = *cs.get(42).ok_or_else(unreadable)?;
    if xosiz >= xsiz || yosiz >= ysiz {
        return Err(unreadable());
    }
    Ok(CodestreamHeader {
        width: xsiz - xosiz,
        height: ysiz - yosiz,
        components: csiz,
        precision: u32::from(ssiz & 0x7F) + 1,
    })
}

/// The contents of a JP2 file's `jp2c` box.
fn jp2_codestream(data: &[u8]) -> Option<&[u8]> {
    let mut at = 0usize;
    while at + 8 <= data.len() {
        let len = be32(data, at)? as usize;
        let kind = &data[at + 4..at + 8];
        let (header, len) = match len {
            0 => (8, data.len() - at),
            1 => (
                16,
                usize::try_from(u64::from_be_bytes(
                    data.get(at + 8..at + 16)?.try_into().ok()?,
                ))
                .ok()?,
            ),
            n => (8, n),
        };
        if len < header {
            return None;
        }
        if kind == b"jp2c" {
            return data.get(at + header..at.checked_add(len)?.min(data.len()));
        }
        at = at.checked_add(len)?;
    }
    None
}

/// Width, height, components and precision from the JPEG-LS frame header
/// (SOF55, ITU-T T.87 5.1), found by walking the marker segments after SOI.
fn jpeg_ls_header(data: &[u8]) -> Result<CodestreamHeader, String> {
    let unreadable = || "the JPEG-LS codestream has no readable frame header".to_string();
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err(unreadable());
    }
    let mut at = 2usize;
    loop {
        // Fill bytes (0xFF) may precede a marker.
        while data.get(at) == Some(&0xFF) && data.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (data.get(at), data.get(at + 1)) else {
            return Err(unreadable());
        };
        let length = be16(data, at + 2).ok_or_else(unreadable)? as usize;
        if marker == 0xF7 {
            // Lf, P, Y, X, Nf
            let precision = u32::from(*data.get(at + 4).ok_or_else(unreadable)?);
            let height = be16(data, at + 5).ok_or_else(unreadable)?;
            let width = be16(data, at + 7).ok_or_else(unreadable)?;
            let components = u32::from(*data.get(at + 9).ok_or_else(unreadable)?);
            return Ok(CodestreamHeader {
                width,
                height,
                components,
                precision,
            });
        }
        // SOS before a frame header, or a standalone marker: no frame header.
        if marker == 0xDA || length < 2 {
            return Err(unreadable());
        }
        at += 2 + length;
    }
}

/// An RLE frame (PS3.5 G) holds one segment per byte of a sample, each
/// PackBits-decoding to Rows × Columns bytes. A segment short of that is a
/// taller or wider header; one longer by a row or more a shorter or
/// narrower one (less than a row over is padding some encoders write).
fn rle_frame_matches(
    data: &[u8],
    rows: u32,
    cols: u32,
    bytes_per_sample: usize,
) -> Result<(), String> {
    let bad = |why: String| Err(format!("the RLE frame {why}"));
    // 64 bytes of header: the segment count, then 15 offsets
    let Some(header) = data.get(..64) else {
        return bad("has no header".into());
    };
    let word = |i: usize| u32::from_le_bytes(header[4 * i..4 * i + 4].try_into().unwrap());
    let count = word(0);
    if count as usize != bytes_per_sample {
        return bad(format!(
            "has {count} segment(s), the data set's samples have {bytes_per_sample} byte(s)"
        ));
    }
    let offsets: Vec<usize> = (1..=count as usize).map(|i| word(i) as usize).collect();
    let expected = rows as usize * cols as usize;
    for (i, &start) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(data.len());
        let Some(segment) = data.get(start..end).filter(|_| start >= 64) else {
            return bad(format!("has a segment offset {start} outside the frame"));
        };
        let decoded = packbits_length(segment);
        if decoded < expected || decoded >= expected + cols as usize {
            return bad(format!(
                "decodes to {decoded} bytes a segment, the data set's {cols}x{rows} need {expected}"
            ));
        }
    }
    Ok(())
}

/// How many bytes a PackBits segment decodes to, counting only what it
/// holds (a run cut short by the segment's end counts what is there).
fn packbits_length(segment: &[u8]) -> usize {
    let (mut at, mut out) = (0usize, 0usize);
    while let Some(&n) = segment.get(at) {
        let n = n as i8;
        at += 1;
        if n >= 0 {
            let literal = (n as usize + 1).min(segment.len() - at);
            out += literal;
            at += literal;
        } else if n != -128 {
            if at < segment.len() {
                out += 1 - n as isize as usize;
            }
            at += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn siz_of_precision(width: u32, height: u32, components: u16, precision: u8) -> Vec<u8> {
        let mut cs = vec![0xFF, 0x4F, 0xFF, 0x51, 0, 41, 0, 0];
        for v in [width, height, 0, 0, width, height, 0, 0] {
            cs.extend(v.to_be_bytes());
        }
        cs.extend(components.to_be_bytes());
        cs.extend([precision - 1, 1, 1]); // Ssiz, XRsiz, YRsiz
        cs
    }

    fn siz(width: u32, height: u32, components: u16) -> Vec<u8> {
        siz_of_precision(width, height, components, 12)
    }

    fn size_of(h: CodestreamHeader) -> (u32, u32, u32) {
        (h.width, h.height, h.components)
    }

    #[test]
    fn jpeg2000_size_and_precision_are_read_from_siz_and_compared() {
        let j2k = "1.2.840.10008.1.2.4.90";
        assert_eq!(
            check_frame_size(j2k, &siz(230, 244, 1), 244, 230, 16),
            Ok(())
        );
        let swapped = check_frame_size(j2k, &siz(244, 230, 1), 244, 230, 16).unwrap_err();
        assert_eq!(
            swapped,
            "the JPEG 2000 codestream is 244x230, the data set says 230x244"
        );
        assert!(check_frame_size(j2k, &siz(230, 244, 3), 244, 230, 16).is_err());
        assert!(check_frame_size(j2k, b"not a codestream", 244, 230, 16).is_err());
        // 15-bit samples under Bits Allocated 8: their high bits would be lost
        let wide = check_frame_size(j2k, &siz_of_precision(230, 244, 1, 15), 244, 230, 8);
        assert_eq!(
            wide.unwrap_err(),
            "the JPEG 2000 codestream has 15-bit samples, more than Bits Allocated 8"
        );
        assert_eq!(
            check_frame_size(j2k, &siz_of_precision(230, 244, 1, 8), 244, 230, 8),
            Ok(())
        );
    }

    #[test]
    fn a_jp2_file_is_read_through_its_codestream_box() {
        let cs = siz(16, 8, 1);
        let mut jp2 = vec![0, 0, 0, 12, b'j', b'P', b' ', b' ', 13, 10, 0x87, 10];
        jp2.extend(((cs.len() + 8) as u32).to_be_bytes());
        jp2.extend(b"jp2c");
        jp2.extend(&cs);
        assert_eq!(jpeg2000_header(&jp2).map(size_of), Ok((16, 8, 1)));
    }

    #[test]
    fn jpeg_ls_size_and_precision_are_read_from_its_frame_header() {
        // SOI, an APP segment, SOF55 (Lf 11, P 16, Y 244, X 230, Nf 1, ...)
        let ls = [
            0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 1, 2, 0xFF, 0xF7, 0, 11, 16, 0, 244, 0, 230, 1, 1, 0x11,
            0,
        ];
        assert_eq!(jpeg_ls_header(&ls).map(size_of), Ok((230, 244, 1)));
        assert_eq!(jpeg_ls_header(&ls).map(|h| h.precision), Ok(16));
        assert!(check_frame_size("1.2.840.10008.1.2.4.80", &ls, 230, 244, 16).is_err());
        let wide = check_frame_size("1.2.840.10008.1.2.4.80", &ls, 244, 230, 8).unwrap_err();
        assert!(
            wide.contains("16-bit samples, more than Bits Allocated 8"),
            "{wide}"
        );
        assert!(jpeg_ls_header(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]).is_err());
    }

    fn rle(segments: &[Vec<u8>]) -> Vec<u8> {
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(&(segments.len() as u32).to_le_bytes());
        let mut at = 64u32;
        for (i, s) in segments.iter().enumerate() {
            header[4 + 4 * i..8 + 4 * i].copy_from_slice(&at.to_le_bytes());
            at += s.len() as u32;
        }
        header.extend(segments.concat());
        header
    }

    #[test]
    fn rle_segments_must_decode_to_the_header_size() {
        // 4x3 = 12 bytes: a run of 12, and literal runs
        let run12 = vec![(1i8 - 12) as u8, 7];
        let frame = rle(&[
            run12.clone(),
            vec![11, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        ]);
        assert_eq!(check_frame_size(RLE, &frame, 3, 4, 16), Ok(()));
        // padding (a zero byte with nothing after it) counts nothing
        let padded = rle(&[[run12.clone(), vec![0]].concat(), run12.clone()]);
        assert_eq!(check_frame_size(RLE, &padded, 3, 4, 16), Ok(()));
        // header taller (short segments) or shorter by a row (long ones)
        assert!(check_frame_size(RLE, &frame, 4, 4, 16).is_err());
        assert!(check_frame_size(RLE, &frame, 2, 4, 16).is_err());
        assert!(check_frame_size(RLE, &rle(&[run12]), 3, 4, 16).is_err());
        assert!(check_frame_size(RLE, &[1, 0], 3, 4, 16).is_err());
    }
}
