//! Text written with ISO 2022 code extensions (PS3.5 §6.1.2.5).
//!
//! A Specific Character Set such as `\ISO 2022 IR 87` (Japanese),
//! `\ISO 2022 IR 149` (Korean) or `\ISO 2022 IR 58` (Chinese, GB 2312)
//! switches character sets inside a value with escape sequences. dicom-rs
//! reads only the first value of the attribute and decodes the rest as the
//! default repertoire, so a name such as `Yamada^Tarou=山田^太郎` comes out
//! as escape bytes and mojibake. This decoder reads the raw bytes the way
//! PS3.5 Annexes H–K write them.

use dicom_encoding::text::SpecificCharacterSet;
use encoding::all;
use encoding::types::EncodingRef;
use encoding::DecoderTrap;

const ESC: u8 = 0x1B;

/// The set invoked in G0 (bytes 0x21–0x7E).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum G0 {
    Ascii,
    /// JIS X 0201 Romaji: ASCII with ¥ and ‾ in place of \ and ~.
    Romaji,
    /// JIS X 0208, two 7-bit bytes per character.
    Jis0208,
    /// JIS X 0212, two 7-bit bytes per character.
    Jis0212,
}

/// The set invoked in G1 (bytes 0xA1–0xFE).
#[derive(Clone, Copy)]
enum G1 {
    None,
    /// JIS X 0201 Katakana, one byte per character.
    Katakana,
    /// KS X 1001, two bytes per character.
    Ksx1001,
    /// GB 2312, two bytes per character.
    Gb2312,
    /// An ISO 8859 part (or its superset), one byte per character.
    Single(EncodingRef),
}

/// Whether `terms` (the values of Specific Character Set) use code
/// extensions, which dicom-rs does not decode.
pub fn uses_code_extensions(terms: &[String]) -> bool {
    terms.len() > 1 || terms.iter().any(|t| t.trim().starts_with("ISO 2022"))
}

/// Whether text written under `terms` is decoded here rather than by
/// dicom-rs: code extensions, and a single term the standard defines that
/// dicom-rs 0.10 does not know (ISO_IR 148 Turkish, ISO_IR 203 Latin-9),
/// which it read as ISO 8859-1 ("Şükrü" became "Þükrü").
pub fn decoded_here(terms: &[String]) -> bool {
    uses_code_extensions(terms)
        || terms.first().is_some_and(|t| {
            SpecificCharacterSet::from_code(t).is_none() && designation(t).1.is_some()
        })
}

/// What a defined term designates, as the escape sequence for it would.
fn designation(term: &str) -> (Option<G0>, Option<G1>) {
    let single = |e: EncodingRef| (Some(G0::Ascii), Some(G1::Single(e)));
    match term.trim() {
        "" | "ISO 2022 IR 6" | "ISO_IR 6" => (Some(G0::Ascii), None),
        "ISO 2022 IR 13" | "ISO_IR 13" => (Some(G0::Romaji), Some(G1::Katakana)),
        "ISO 2022 IR 87" => (Some(G0::Jis0208), None),
        "ISO 2022 IR 159" => (Some(G0::Jis0212), None),
        "ISO 2022 IR 149" => (None, Some(G1::Ksx1001)),
        "ISO 2022 IR 58" => (None, Some(G1::Gb2312)),
        "ISO 2022 IR 100" | "ISO_IR 100" => single(all::ISO_8859_1),
        "ISO 2022 IR 101" | "ISO_IR 101" => single(all::ISO_8859_2),
        "ISO 2022 IR 109" | "ISO_IR 109" => single(all::ISO_8859_3),
        "ISO 2022 IR 110" | "ISO_IR 110" => single(all::ISO_8859_4),
        "ISO 2022 IR 144" | "ISO_IR 144" => single(all::ISO_8859_5),
        "ISO 2022 IR 127" | "ISO_IR 127" => single(all::ISO_8859_6),
        "ISO 2022 IR 126" | "ISO_IR 126" => single(all::ISO_8859_7),
        "ISO 2022 IR 138" | "ISO_IR 138" => single(all::ISO_8859_8),
        "ISO 2022 IR 148" | "ISO_IR 148" => single(all::WINDOWS_1254),
        "ISO 2022 IR 166" | "ISO_IR 166" => single(all::WINDOWS_874),
        "ISO 2022 IR 203" | "ISO_IR 203" => single(all::ISO_8859_15),
        _ => (None, None),
    }
}

struct State {
    g0: G0,
    g1: G1,
}

impl State {
    fn initial(terms: &[String]) -> State {
        let (g0, g1) = designation(terms.first().map(String::as_str).unwrap_or(""));
        State {
            g0: g0.unwrap_or(G0::Ascii),
            g1: g1.unwrap_or(G1::None),
        }
    }
}

/// Decodes one element's value bytes (values separated by `\`) written
/// under Specific Character Set `terms`. `person_name`: the designations
/// also return to the initial ones at each `^` and `=`, as PN has them.
pub fn decode(bytes: &[u8], terms: &[String], person_name: bool) -> String {
    // A G1 set used before any escape designated it: some writers leave the
    // escape out; take the one 8-bit set the attribute declares.
    let declared_g1 = terms.iter().skip(1).filter_map(|t| designation(t).1).next();
    let mut state = State::initial(terms);
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == ESC {
            i += escape(&bytes[i..], &mut state);
            continue;
        }
        if b < 0x80 {
            match state.g0 {
                G0::Jis0208 | G0::Jis0212 if (0x21..=0x7E).contains(&b) => {
                    let Some(&b2) = bytes.get(i + 1) else {
                        out.push(char::REPLACEMENT_CHARACTER);
                        break;
                    };
                    let euc: &[u8] = if state.g0 == G0::Jis0208 {
                        &[b | 0x80, b2 | 0x80]
                    } else {
                        &[0x8F, b | 0x80, b2 | 0x80]
                    };
                    out.push_str(&decode_with(all::EUC_JP, euc));
                    i += 2;
                    continue;
                }
                G0::Romaji if b == 0x5C => out.push('¥'),
                G0::Romaji if b == 0x7E => out.push('‾'),
                _ => out.push(b as char),
            }
            let resets = matches!(b, b'\\' | b'\r' | b'\n' | b'\t' | 0x0C)
                || (person_name && matches!(b, b'^' | b'='));
            if resets {
                state = State::initial(terms);
            }
            i += 1;
            continue;
        }
        let g1 = match (state.g1, declared_g1) {
            (G1::None, Some(declared)) => declared,
            (g1, _) => g1,
        };
        match g1 {
            G1::Katakana if (0xA1..=0xDF).contains(&b) => {
                out.push(char::from_u32(0xFF61 + u32::from(b - 0xA1)).unwrap_or('\u{FFFD}'));
                i += 1;
            }
            G1::Ksx1001 | G1::Gb2312 => {
                let pair = &bytes[i..(i + 2).min(bytes.len())];
                let enc: EncodingRef = if matches!(g1, G1::Ksx1001) {
                    all::WINDOWS_949
                } else {
                    all::GBK
                };
                out.push_str(&decode_with(enc, pair));
                i += pair.len();
            }
            G1::Single(enc) => {
                out.push_str(&decode_with(enc, &[b]));
                i += 1;
            }
            _ => {
                out.push(char::REPLACEMENT_CHARACTER);
                i += 1;
            }
        }
    }
    out
}

fn decode_with(enc: EncodingRef, bytes: &[u8]) -> String {
    enc.decode(bytes, DecoderTrap::Replace)
        .unwrap_or_else(|_| "\u{FFFD}".into())
}

/// Applies the escape sequence at the start of `bytes`; returns its length
/// (1 for an unknown one: the ESC byte is dropped).
fn escape(bytes: &[u8], state: &mut State) -> usize {
    let seq = |s: &[u8]| bytes.starts_with(s);
    let single = |c: u8| -> Option<EncodingRef> {
        Some(match c {
            b'A' => all::ISO_8859_1,
            b'B' => all::ISO_8859_2,
            b'C' => all::ISO_8859_3,
            b'D' => all::ISO_8859_4,
            b'L' => all::ISO_8859_5,
            b'G' => all::ISO_8859_6,
            b'F' => all::ISO_8859_7,
            b'H' => all::ISO_8859_8,
            b'M' => all::WINDOWS_1254,
            b'T' => all::WINDOWS_874,
            b'b' => all::ISO_8859_15,
            _ => return None,
        })
    };
    if seq(b"\x1b(B") {
        state.g0 = G0::Ascii;
        3
    } else if seq(b"\x1b(J") {
        state.g0 = G0::Romaji;
        3
    } else if seq(b"\x1b$B") || seq(b"\x1b$@") {
        state.g0 = G0::Jis0208;
        3
    } else if seq(b"\x1b$(D") {
        state.g0 = G0::Jis0212;
        4
    } else if seq(b"\x1b)I") {
        state.g1 = G1::Katakana;
        3
    } else if seq(b"\x1b$)C") {
        state.g1 = G1::Ksx1001;
        4
    } else if seq(b"\x1b$)A") {
        state.g1 = G1::Gb2312;
        4
    } else if let (true, Some(enc)) = (seq(b"\x1b-"), bytes.get(2).and_then(|c| single(*c))) {
        state.g1 = G1::Single(enc);
        3
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn japanese_with_jis_x_0208_as_ps3_5_annex_h_writes_it() {
        // PS3.5 H.3.1: Yamada^Tarou=山田^太郎=やまだ^たろう
        let raw =
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
        let s = decode(raw, &terms(&["", "ISO 2022 IR 87"]), true);
        assert_eq!(s, "Yamada^Tarou=山田^太郎=やまだ^たろう");
    }

    #[test]
    fn japanese_katakana_with_jis_x_0201() {
        // PS3.5 H.3.2: ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう
        let raw = b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J";
        let s = decode(raw, &terms(&["ISO 2022 IR 13", "ISO 2022 IR 87"]), true);
        assert_eq!(s, "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう");
    }

    #[test]
    fn korean_with_ks_x_1001() {
        // PS3.5 I.2: Hong^Gildong=洪^吉洞=홍^길동
        let raw = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";
        let s = decode(raw, &terms(&["", "ISO 2022 IR 149"]), true);
        assert_eq!(s, "Hong^Gildong=洪^吉洞=홍^길동");
    }

    #[test]
    fn chinese_gb2312_with_and_without_its_escape() {
        // PS3.5 K.2 style: Zhang^XiaoDong=张^小东=
        let with = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab=";
        let without = b"Zhang^XiaoDong=\xd5\xc5^\xd0\xa1\xb6\xab=";
        for raw in [&with[..], &without[..]] {
            let s = decode(raw, &terms(&["", "ISO 2022 IR 58"]), true);
            assert_eq!(s, "Zhang^XiaoDong=张^小东=");
        }
    }

    #[test]
    fn latin_and_values_and_unknown_escapes() {
        let s = decode(
            b"M\x1b-A\xfcller\\Z\x1b-A\xfcrich",
            &terms(&["", "ISO 2022 IR 100"]),
            false,
        );
        assert_eq!(s, "Müller\\Zürich");
        assert_eq!(decode(b"A\x1b%GB", &terms(&[""]), false), "A%GB");
        assert!(uses_code_extensions(&terms(&["", "ISO 2022 IR 87"])));
        assert!(uses_code_extensions(&terms(&["ISO 2022 IR 100"])));
        assert!(!uses_code_extensions(&terms(&["ISO_IR 192"])));
    }

    #[test]
    fn single_terms_dicom_rs_does_not_know() {
        for (term, raw, text) in [
            (
                "ISO_IR 148",
                &b"\xd6zt\xfcrk^\xde\xfckr\xfc"[..],
                "Öztürk^Şükrü",
            ),
            ("ISO_IR 203", &b"\xbcuvre^Zo\xeb \xa4"[..], "Œuvre^Zoë €"),
        ] {
            assert!(decoded_here(&terms(&[term])), "{term}");
            assert_eq!(decode(raw, &terms(&[term]), true), text);
        }
        // dicom-rs decodes these itself.
        for term in [
            "ISO_IR 100",
            "ISO_IR 144",
            "ISO_IR 192",
            "GB18030",
            "GBK",
            "",
            "ISO_IR 999",
        ] {
            assert!(!decoded_here(&terms(&[term])), "{term}");
        }
        // Latin-9 designated by its escape sequence (ESC 2/13 6/2).
        let raw = b"Zo\x1b-b\xeb \xa4";
        assert_eq!(
            decode(raw, &terms(&["", "ISO 2022 IR 203"]), false),
            "Zoë €"
        );
    }
}
