//! PDU framing over a byte stream.
//!
//! PDUs are read header first, so that a length field larger than what was
//! negotiated is refused before anything is allocated; P-DATA-TF bodies are
//! split into PDVs in place, so data fragments go straight to their file.
//! Every PDU is written with a single write: peers that answer in two writes
//! stall ~40 ms per message on delayed ACKs.

use bytes::Buf;
use dicom_ul::pdu::{
    read_pdu, write_pdu, AbortRQServiceProviderReason, AbortRQSource, Pdu, PDU_HEADER_SIZE,
};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const TYPE_ASSOCIATE_RQ: u8 = 0x01;
pub const TYPE_ASSOCIATE_AC: u8 = 0x02;
pub const TYPE_ASSOCIATE_RJ: u8 = 0x03;
pub const TYPE_P_DATA_TF: u8 = 0x04;
pub const TYPE_RELEASE_RQ: u8 = 0x05;
pub const TYPE_RELEASE_RP: u8 = 0x06;
pub const TYPE_ABORT: u8 = 0x07;

/// Largest non-P-DATA PDU accepted (association requests with many
/// presentation contexts or a user identity token stay far below).
pub const MAX_CONTROL_PDU: u32 = 1 << 20;

#[derive(Debug, Error)]
pub enum PduError {
    #[error("connection closed by peer")]
    Closed,
    #[error("connection closed in the middle of a PDU")]
    Truncated,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("unrecognised PDU type {0:#04x}")]
    UnknownType(u8),
    #[error("PDU of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("malformed PDU: {0}")]
    Malformed(String),
    #[error("could not encode PDU: {0}")]
    Encode(String),
}

impl PduError {
    /// The A-ABORT reason to send for this error, if one should be sent.
    pub fn abort_reason(&self) -> Option<AbortRQServiceProviderReason> {
        match self {
            PduError::UnknownType(_) => Some(AbortRQServiceProviderReason::UnrecognizedPdu),
            PduError::TooLarge { .. } | PduError::Malformed(_) => {
                Some(AbortRQServiceProviderReason::InvalidPduParameter)
            }
            _ => None,
        }
    }
}

/// One PDV of a P-DATA-TF body.
#[derive(Debug, Clone, Copy)]
pub struct Pdv<'a> {
    pub context_id: u8,
    pub is_command: bool,
    pub is_last: bool,
    pub data: &'a [u8],
}

/// Splits a P-DATA-TF body into its PDVs, checking every item length.
pub fn split_pdvs(body: &[u8]) -> Result<Vec<Pdv<'_>>, PduError> {
    let mut pdvs = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < 6 {
            return Err(PduError::Malformed("PDV item header truncated".into()));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < 2 || len > rest.len() - 4 {
            return Err(PduError::Malformed(format!(
                "PDV item length {len} does not fit its PDU"
            )));
        }
        let control = rest[5];
        pdvs.push(Pdv {
            context_id: rest[4],
            is_command: control & 0x01 != 0,
            is_last: control & 0x02 != 0,
            data: &rest[6..4 + len],
        });
        rest = &rest[4 + len..];
    }
    if pdvs.is_empty() {
        return Err(PduError::Malformed("P-DATA-TF without any PDV".into()));
    }
    Ok(pdvs)
}

/// Bytes before the first item of an A-ASSOCIATE-RQ/AC body: protocol
/// version, reserved, the two AE titles, reserved.
const ASSOCIATE_FIXED_FIELDS: usize = 68;
/// Application Context, Presentation Context (RQ), User Information.
const ASSOCIATE_RQ_ITEMS: [u8; 3] = [0x10, 0x20, 0x50];
/// Application Context, Presentation Context (AC), User Information.
const ASSOCIATE_AC_ITEMS: [u8; 3] = [0x10, 0x21, 0x50];

/// The body without its top-level items of types not in `known`, or None
/// when there are none to leave out (or the items do not parse: dicom-ul
/// then names the fault).
fn without_unknown_items(body: &[u8], known: &[u8]) -> Option<Vec<u8>> {
    let mut kept = body.get(..ASSOCIATE_FIXED_FIELDS)?.to_vec();
    let mut items = &body[ASSOCIATE_FIXED_FIELDS..];
    let mut left_out = false;
    while !items.is_empty() {
        let header = items.get(..4)?;
        let end = 4 + usize::from(u16::from_be_bytes([header[2], header[3]]));
        let item = items.get(..end)?;
        if matches!(item[0], 0x20 | 0x21) && known.contains(&item[0]) {
            // Inside a presentation context too (PS3.8 9.3.1): only its
            // abstract and transfer syntaxes are kept (an unknown sub-item
            // aborted the whole association).
            // (one that does not parse is kept as read: dicom-ul names it)
            match without_unknown_sub_items(item) {
                Some((context, dropped)) => {
                    left_out |= dropped;
                    kept.extend_from_slice(&context);
                }
                None => kept.extend_from_slice(item),
            }
        } else if known.contains(&item[0]) {
            kept.extend_from_slice(item);
        } else {
            tracing::debug!(
                item_type = item[0],
                "item of unknown type ignored in association PDU"
            );
            left_out = true;
        }
        items = &items[end..];
    }
    left_out.then_some(kept)
}

/// A presentation context item (its 4-byte header, 4 fixed bytes, then
/// sub-items) with only its Abstract Syntax (0x30) and Transfer Syntax
/// (0x40) sub-items, and whether any other was left out.
fn without_unknown_sub_items(item: &[u8]) -> Option<(Vec<u8>, bool)> {
    let mut kept = item.get(..8)?.to_vec();
    let mut subs = &item[8..];
    let mut dropped = false;
    while !subs.is_empty() {
        let header = subs.get(..4)?;
        let end = 4 + usize::from(u16::from_be_bytes([header[2], header[3]]));
        let sub = subs.get(..end)?;
        if matches!(sub[0], 0x30 | 0x40) {
            kept.extend_from_slice(sub);
        } else {
            tracing::debug!(
                item_type = sub[0],
                "sub-item of unknown type ignored in a presentation context"
            );
            dropped = true;
        }
        subs = &subs[end..];
    }
    let length = u16::try_from(kept.len() - 4).ok()?;
    kept[2..4].copy_from_slice(&length.to_be_bytes());
    Some((kept, dropped))
}

/// A connection that frames PDUs, with a reusable receive buffer.
pub struct PduStream<S> {
    stream: S,
    body: Vec<u8>,
    /// Longest wait for a write to be taken by the peer; None: no bound.
    write_timeout: Option<std::time::Duration>,
    /// A write failed, perhaps part-way through a PDU: the stream can
    /// carry no other PDU (an A-ABORT after it would be read as the rest
    /// of the cut one).
    write_broken: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> PduStream<S> {
    pub fn new(stream: S) -> Self {
        PduStream {
            stream,
            body: Vec::new(),
            write_timeout: None,
            write_broken: false,
        }
    }

    /// Bounds each write: a peer that stops reading (its receive window
    /// full) held the association, and its slot, for as long as it kept
    /// the connection open, past every read and idle timeout.
    pub fn with_write_timeout(mut self, limit: std::time::Duration) -> Self {
        self.write_timeout = Some(limit);
        self
    }

    /// Writes all of `bytes`; with a write timeout, fails when the peer
    /// takes nothing for that long (a peer reading slowly but steadily
    /// goes on: a 12 MB commitment result read at 200 KB/s was cut).
    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), PduError> {
        let written = self.write_all_within(bytes).await;
        self.write_broken |= written.is_err();
        written
    }

    async fn write_all_within(&mut self, bytes: &[u8]) -> Result<(), PduError> {
        let Some(limit) = self.write_timeout else {
            return Ok(self.stream.write_all(bytes).await?);
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            let written = tokio::time::timeout(limit, self.stream.write(rest))
                .await
                .map_err(|_| {
                    PduError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "the peer took nothing of a write for {} s (not reading)",
                            limit.as_secs_f32()
                        ),
                    ))
                })??;
            if written == 0 {
                return Err(PduError::Io(std::io::ErrorKind::WriteZero.into()));
            }
            rest = &rest[written..];
        }
        Ok(())
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Reads the next PDU's type and body; the body stays in [`Self::body`].
    /// P-DATA-TF bodies may be up to `max_pdata` bytes, others up to
    /// [`MAX_CONTROL_PDU`].
    pub async fn read(&mut self, max_pdata: u32) -> Result<u8, PduError> {
        let first = self.first_byte().await?;
        self.rest_of_pdu(first, max_pdata).await
    }

    /// Waits for the first byte of the next PDU (its type). Cancel-safe:
    /// nothing is consumed unless it returns.
    pub async fn first_byte(&mut self) -> Result<u8, PduError> {
        let mut first = [0u8; 1];
        if self.stream.read(&mut first).await? == 0 {
            return Err(PduError::Closed);
        }
        Ok(first[0])
    }

    /// Reads the rest of the PDU whose first byte was `pdu_type`.
    pub async fn rest_of_pdu(&mut self, pdu_type: u8, max_pdata: u32) -> Result<u8, PduError> {
        let mut header = [0u8; PDU_HEADER_SIZE as usize - 1];
        self.read_exact(&mut header).await?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let max = match pdu_type {
            TYPE_P_DATA_TF => max_pdata,
            TYPE_ASSOCIATE_RQ..=TYPE_ABORT => MAX_CONTROL_PDU,
            other => return Err(PduError::UnknownType(other)),
        };
        if len > max {
            return Err(PduError::TooLarge { len, max });
        }
        // The buffer grows with the bytes that arrive, not with the length
        // announced: a peer that announces a large PDU and sends nothing
        // costs nothing (the allocation is kept for the next PDUs).
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        let read = self.read_body(&mut body, len as usize).await;
        self.body = body;
        read.map(|_| pdu_type)
    }

    /// Reads `len` bytes into `body` (empty), growing it geometrically
    /// (64 KiB, then doubling, never past `len`) only when it is full.
    async fn read_body(&mut self, body: &mut Vec<u8>, len: usize) -> Result<(), PduError> {
        while body.len() < len {
            let remaining = len - body.len();
            if body.capacity() == body.len() {
                body.reserve_exact(remaining.min(body.len().max(64 * 1024)));
            }
            let read = (&mut self.stream)
                .take(remaining as u64)
                .read_buf(body)
                .await?;
            if read == 0 {
                return Err(PduError::Truncated);
            }
        }
        Ok(())
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), PduError> {
        match self.stream.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(PduError::Truncated),
            Err(e) => Err(e.into()),
        }
    }

    /// The body of the PDU last read.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Takes the body of the PDU last read, to be given back with
    /// [`Self::put_body`] so that its allocation is reused.
    pub fn take_body(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body)
    }

    pub fn put_body(&mut self, body: Vec<u8>) {
        self.body = body;
    }

    /// Decodes the PDU last read (of type `pdu_type`) with dicom-ul's codec.
    /// Top-level items of an A-ASSOCIATE-RQ/AC of a type the standard does
    /// not define there are left out first: PS3.8 9.3.1 asks the receiver
    /// to ignore and skip them, where dicom-ul refuses the whole PDU.
    pub fn decode(&self, pdu_type: u8) -> Result<Pdu, PduError> {
        let known = match pdu_type {
            TYPE_ASSOCIATE_RQ => Some(&ASSOCIATE_RQ_ITEMS),
            TYPE_ASSOCIATE_AC => Some(&ASSOCIATE_AC_ITEMS),
            _ => None,
        };
        let kept = known.and_then(|known| without_unknown_items(&self.body, known));
        let body = kept.as_deref().unwrap_or(&self.body);
        let len = body.len() as u32;
        let mut header = [0u8; 6];
        header[0] = pdu_type;
        header[2..6].copy_from_slice(&len.to_be_bytes());
        let buf = Buf::chain(&header[..], body);
        match read_pdu(buf, MAX_CONTROL_PDU.max(len), false) {
            Ok(Some(pdu)) => Ok(pdu),
            Ok(None) => Err(PduError::Malformed("incomplete PDU".into())),
            Err(e) => Err(PduError::Malformed(e.to_string())),
        }
    }

    /// Encodes and writes a PDU in one write.
    pub async fn send(&mut self, pdu: &Pdu) -> Result<(), PduError> {
        let mut out = Vec::with_capacity(256);
        write_pdu(&mut out, pdu).map_err(|e| PduError::Encode(e.to_string()))?;
        self.write_all(&out).await
    }

    /// Writes pre-encoded PDU bytes in one write.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), PduError> {
        self.write_all(bytes).await
    }

    /// Sends an A-ABORT from the service provider, ignoring write errors
    /// (the peer may already be gone).
    pub async fn abort(&mut self, reason: AbortRQServiceProviderReason) {
        if self.write_broken {
            // Nothing more can be framed on this stream: closed (PS3.8
            // 9.1.6, the transport connection released).
            let _ = self.stream.shutdown().await;
            return;
        }
        let pdu = Pdu::AbortRQ {
            source: AbortRQSource::ServiceProvider(reason),
        };
        // A peer that stopped reading takes no A-ABORT either: its write
        // waits ARTIM at most, not the write timeout again.
        let limit = self.write_timeout;
        self.write_timeout = Some(limit.map_or(ARTIM, |l| l.min(ARTIM)));
        let _ = self.send(&pdu).await;
        self.write_timeout = limit;
        self.close_after(ARTIM).await;
    }

    /// Sends an A-ABORT as service user.
    pub async fn abort_as_user(&mut self) {
        let pdu = Pdu::AbortRQ {
            source: AbortRQSource::ServiceUser,
        };
        let _ = self.send(&pdu).await;
        let _ = self.stream.shutdown().await;
    }

    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// After an A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT, waits (the ARTIM
    /// timer of PS3.8, state Sta13) for the peer to close the connection,
    /// then closes it. Closing first can make the peer read a connection
    /// loss before it has taken in the last PDU (pynetdicom then reports an
    /// abort instead of the rejection).
    pub async fn close_after(&mut self, artim: Duration) {
        let drain = async {
            let mut scratch = [0u8; 4096];
            while let Ok(n) = self.stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(artim, drain).await;
        let _ = self.stream.shutdown().await;
    }
}

/// How long the node waits for a peer to close the connection after the
/// last PDU of an association (PS3.8's ARTIM timer).
pub const ARTIM: Duration = Duration::from_secs(2);

/// Writes into `out` (cleared first) the PDU and PDV headers of a P-DATA-TF
/// PDU holding one PDV of `data_len` bytes; the caller appends the data.
pub fn pdata_header(
    out: &mut Vec<u8>,
    context_id: u8,
    is_command: bool,
    is_last: bool,
    data_len: usize,
) {
    out.clear();
    let item_len = (data_len + 2) as u32;
    out.push(TYPE_P_DATA_TF);
    out.push(0);
    out.extend_from_slice(&(item_len + 4).to_be_bytes());
    out.extend_from_slice(&item_len.to_be_bytes());
    out.push(context_id);
    out.push(u8::from(is_command) | (u8::from(is_last) << 1));
}

/// The P-DATA-TF PDUs of a command, back to back: one, or as many as the
/// peer's Maximum Length Received (`peer_max_pdu`, 0 for unlimited) needs.
pub fn command_pdus(context_id: u8, command: &[u8], peer_max_pdu: u32) -> Vec<u8> {
    message_pdus(context_id, true, command, peer_max_pdu)
}

/// The same for a data set held in memory.
pub fn data_set_pdus(context_id: u8, data_set: &[u8], peer_max_pdu: u32) -> Vec<u8> {
    message_pdus(context_id, false, data_set, peer_max_pdu)
}

fn message_pdus(context_id: u8, is_command: bool, bytes: &[u8], peer_max_pdu: u32) -> Vec<u8> {
    let fragments: Vec<&[u8]> = bytes.chunks(max_pdv_payload(peer_max_pdu)).collect();
    let mut out = Vec::with_capacity(bytes.len() + 12 * fragments.len());
    let mut header = Vec::with_capacity(12);
    for (n, fragment) in fragments.iter().enumerate() {
        pdata_header(
            &mut header,
            context_id,
            is_command,
            n + 1 == fragments.len(),
            fragment.len(),
        );
        out.extend_from_slice(&header);
        out.extend_from_slice(fragment);
    }
    out
}

/// The Maximum Length Received a peer announced (0, "unlimited", when absent).
pub fn announced_max_length(user_variables: &[dicom_ul::pdu::UserVariableItem]) -> u32 {
    user_variables
        .iter()
        .find_map(|v| match v {
            dicom_ul::pdu::UserVariableItem::MaxLength(l) => Some(*l),
            _ => None,
        })
        .unwrap_or(0)
}

/// The largest PDV data payload that fits a PDU of `max_pdu` bytes
/// (the peer's Maximum Length Received; 0 means unlimited).
pub fn max_pdv_payload(max_pdu: u32) -> usize {
    const CAP: u32 = 4 << 20;
    let max = if max_pdu == 0 { CAP } else { max_pdu.min(CAP) };
    (max as usize).saturating_sub(6).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_a_abort_follows_a_pdu_a_write_time_out_cut() {
        use tokio::io::AsyncReadExt;
        // A peer that reads nothing: the 64 KiB P-DATA goes in part, the
        // write times out, and the A-ABORT after it would be read as the
        // rest of the cut PDU.
        let (near, mut far) = tokio::io::duplex(1024);
        let mut conn =
            PduStream::new(near).with_write_timeout(std::time::Duration::from_millis(50));
        let mut pdata = vec![0x04, 0];
        pdata.extend_from_slice(&65_536u32.to_be_bytes());
        pdata.resize(6 + 65_536, 0x55);
        assert!(conn.send_raw(&pdata).await.is_err());
        // The peer reads again, late: there is room for an A-ABORT now.
        let mut got = vec![0; 1024];
        far.read_exact(&mut got).await.unwrap();
        conn.abort(AbortRQServiceProviderReason::ReasonNotSpecified)
            .await;
        drop(conn);
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 1024, "only what the cut write put through");
        assert!(got.starts_with(&pdata[..6]) && got[6..].iter().all(|&b| b == 0x55));
    }

    #[test]
    fn items_of_unknown_type_are_left_out_of_an_associate_pdu() {
        let item = |t: u8, v: &[u8]| {
            let mut i = vec![t, 0];
            i.extend_from_slice(&(v.len() as u16).to_be_bytes());
            i.extend_from_slice(v);
            i
        };
        let fixed = vec![7u8; ASSOCIATE_FIXED_FIELDS];
        let known = [item(0x10, b"ctx"), item(0x20, b"pc"), item(0x50, b"user")].concat();
        let mut body = fixed.clone();
        body.extend(item(0x10, b"ctx"));
        body.extend(item(0x15, b"odd"));
        body.extend(item(0x20, b"pc"));
        body.extend(item(0x50, b"user"));
        body.extend(item(0x7F, b""));
        let kept = without_unknown_items(&body, &ASSOCIATE_RQ_ITEMS).unwrap();
        assert_eq!(kept, [fixed.clone(), known.clone()].concat());
        // nothing to leave out, or items that do not parse: the body as read
        let clean = [fixed.clone(), known].concat();
        assert_eq!(without_unknown_items(&clean, &ASSOCIATE_RQ_ITEMS), None);
        assert_eq!(
            without_unknown_items(&body[..body.len() - 2], &ASSOCIATE_RQ_ITEMS),
            None
        );
        assert_eq!(
            without_unknown_items(&fixed[..10], &ASSOCIATE_RQ_ITEMS),
            None
        );
    }

    #[test]
    fn pdvs_split_and_check_lengths() {
        let mut pdu = Vec::new();
        pdata_header(&mut pdu, 3, false, true, 4);
        pdu.extend_from_slice(b"abcd");
        let body = &pdu[6..];
        let pdvs = split_pdvs(body).unwrap();
        assert_eq!(pdvs.len(), 1);
        assert_eq!(pdvs[0].context_id, 3);
        assert!(!pdvs[0].is_command && pdvs[0].is_last);
        assert_eq!(pdvs[0].data, b"abcd");

        let mut two = body.to_vec();
        two.extend_from_slice(body);
        assert_eq!(split_pdvs(&two).unwrap().len(), 2);

        assert!(split_pdvs(&body[..body.len() - 1]).is_err());
        assert!(split_pdvs(&[]).is_err());
        assert!(split_pdvs(&[0, 0, 0, 1, 1, 0]).is_err());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn oversized_length_is_refused_before_allocation() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0x04, 0, 0xFF, 0xFF, 0xFF, 0xFF])
            .await
            .unwrap();
        let mut s = PduStream::new(b);
        match s.read(16384).await {
            Err(PduError::TooLarge { len, max }) => {
                assert_eq!(len, u32::MAX);
                assert_eq!(max, 16384);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn garbage_and_truncation_are_errors() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut s = PduStream::new(b);
        assert!(matches!(
            s.read(16384).await,
            Err(PduError::UnknownType(b'G'))
        ));

        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0x04, 0, 0, 0, 0, 10, 1, 2]).await.unwrap();
        drop(a);
        let mut s = PduStream::new(b);
        assert!(matches!(s.read(16384).await, Err(PduError::Truncated)));
    }
}
