//! One log event, one line: what a peer or an operator wrote into a value
//! the node logs (a UID, an AE title, an API parameter) cannot start a line
//! of its own. A newline in a refused SOP Instance UID wrote a forged
//! "instance stored" line into the text log.

use std::io::Write;

/// Writes each formatted event to stderr with its control characters
/// escaped (`\n`, `\r`, `\x1b`, ...), but for the newline that ends it (and
/// the escape sequences of the formatter's own colours, on a terminal).
pub struct OneLine {
    inner: std::io::Stderr,
    colours: bool,
}

impl OneLine {
    pub fn stderr(colours: bool) -> OneLine {
        OneLine {
            inner: std::io::stderr(),
            colours,
        }
    }
}

/// `event` (one formatted event, its final newline included) with the
/// control characters inside it escaped.
pub fn escaped(event: &[u8], colours: bool) -> Vec<u8> {
    let (body, end) = match event.split_last() {
        Some((b'\n', body)) => (body, &b"\n"[..]),
        _ => (event, &b""[..]),
    };
    let mut out = Vec::with_capacity(event.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b),
            0x1b if colours => out.push(b),
            b if b < 0x20 || b == 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            b => out.push(b),
        }
    }
    out.extend_from_slice(end);
    out
}

impl Write for OneLine {
    /// The formatter writes each event whole, in one call.
    fn write(&mut self, event: &[u8]) -> std::io::Result<usize> {
        self.inner.write_all(&escaped(event, self.colours))?;
        Ok(event.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::escaped;

    #[test]
    fn a_value_cannot_start_a_line_of_its_own() {
        let forged =
            b"INFO instance refused sop_instance_uid=1.2\n2026 INFO instance stored\r\x1b[31m\n";
        assert_eq!(
            escaped(forged, false),
            b"INFO instance refused sop_instance_uid=1.2\\n2026 INFO instance stored\\r\\x1b[31m\n"
        );
        // On a terminal the formatter's colours stay.
        assert_eq!(
            escaped(b"\x1b[32mINFO\x1b[0m a\tb\n", true),
            b"\x1b[32mINFO\x1b[0m a\tb\n"
        );
    }
}
