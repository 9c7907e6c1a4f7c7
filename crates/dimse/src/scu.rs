//! The SCU: C-ECHO and C-STORE to a remote application entity.
//!
//! Each file is offered in its own transfer syntax, with Explicit and
//! Implicit VR Little Endian as a fallback for native (unencapsulated) data
//! and for compressed data the caller can decompress; the data set is
//! streamed from the file when the peer takes the file's syntax, and
//! re-encoded (decompressed first) only for that fallback.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::meta::FileMetaTable;
use dicom_object::DefaultDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{
    AssociationRJ, AssociationRQ, Pdu, PresentationContextProposed,
    PresentationContextResultReason, RequestorRoles, UserVariableItem,
};
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::command::Command;
use crate::pdu::{self, PduError, PduStream};
use crate::sop;
use crate::status::Status;

/// A remote application entity: `AE@host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AeAddress {
    pub ae_title: String,
    pub host: String,
    pub port: u16,
}

impl FromStr for AeAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // At the last '@': an AE title may hold one, a host never does.
        let (ae, rest) = s
            .rsplit_once('@')
            .ok_or_else(|| format!("`{s}` is not AE@host:port"))?;
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not AE@host:port"))?;
        let port = port
            .parse()
            .map_err(|_| format!("`{port}` is not a port number"))?;
        if ae.is_empty() || ae.len() > 16 || host.is_empty() {
            return Err(format!(
                "`{s}`: the AE title must have 1 to 16 characters, and a host is needed"
            ));
        }
        if let Some(problem) = crate::scp::ae_title_problem(ae) {
            return Err(format!("`{}`: the AE title {problem}", s.escape_debug()));
        }
        Ok(AeAddress {
            ae_title: ae.to_string(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }
}

impl std::fmt::Display for AeAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.ae_title, self.host, self.port)
    }
}

/// Reads a Part-10 file into an object, for the rare send that must
/// re-encode it (the peer accepted another native transfer syntax).
pub type OpenFile = fn(&Path) -> Result<DefaultDicomObject, String>;

/// Makes compressed pixel data native, for a peer that accepted none of a
/// file's compressed transfer syntax (the node gives pneumo-imaging's
/// decoders). Without one, such a file fails with "no presentation context".
#[derive(Debug, Clone, Copy)]
pub struct Decompressor {
    /// Whether files in this transfer syntax can be decompressed.
    pub can_decompress: fn(&str) -> bool,
    /// The data set with native pixel data.
    pub decompress: fn(DefaultDicomObject) -> Result<DefaultDicomObject, String>,
}

#[derive(Debug, Clone)]
pub struct ScuOptions {
    pub calling_ae: String,
    /// Maximum Length Received we announce.
    pub max_pdu: u32,
    pub connect_timeout: Duration,
    /// Longest wait for any PDU from the peer (association and responses).
    pub response_timeout: Duration,
    /// How a file to re-encode is read: dicom-rs by default; the node gives
    /// its reader that also takes CP-246 sequences (pneumo-store).
    pub open_file: OpenFile,
    /// Decompresses a file for a peer that takes no compressed syntax of it.
    pub decompress: Option<Decompressor>,
}

fn open_with_dicom_rs(path: &Path) -> Result<DefaultDicomObject, String> {
    dicom_object::open_file(path).map_err(|e| e.to_string())
}

impl Default for ScuOptions {
    fn default() -> Self {
        ScuOptions {
            calling_ae: "PNEUMO".into(),
            max_pdu: 1 << 20,
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            open_file: open_with_dicom_rs,
            decompress: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum ScuError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("association rejected by {addr}: {reason}")]
    Rejected { addr: String, reason: String },
    #[error("association aborted by the peer")]
    Aborted,
    #[error("no presentation context accepted by the peer")]
    NoAcceptedContext,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The peer asked to release while an operation was outstanding
    /// (answered with A-RELEASE-RP; the operation is unanswered).
    #[error("the peer released the association before answering")]
    ReleasedByPeer,
    #[error("the peer stopped reading: nothing could be written for {0:?}")]
    WriteTimeout(Duration),
    #[error(transparent)]
    Pdu(#[from] PduError),
}

impl ScuError {
    /// Whether trying again later may succeed (the peer was down, busy or
    /// broke off), as opposed to a refusal that will not change by itself.
    pub fn is_transient(&self) -> bool {
        match self {
            ScuError::Rejected { reason, .. } => reason.starts_with("transient"),
            ScuError::NoAcceptedContext => false,
            _ => true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EchoOutcome {
    pub status: Status,
}

/// The result of sending one file.
#[derive(Debug, Clone)]
pub struct StoreOutcome {
    pub path: PathBuf,
    pub sop_instance_uid: String,
    /// The peer's status (success, warning or failure), or why nothing could
    /// be sent for this file.
    pub result: Result<Status, String>,
    pub error_comment: Option<String>,
    /// The class and UID it went as, when not its own ([`FileToSend::also_as`]).
    pub sent_as: Option<SendAs>,
}

/// Another SOP class, with its own SOP Instance UID (an instance of another
/// class is another instance), that a file may be sent as when the peer
/// accepts no context of its own class: the same data set, those two
/// attributes changed. The node gives it for its own Comprehensive 3D SR
/// reports (as Comprehensive SR, for a PACS without 3D SR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendAs {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// UIDs it references renamed too, (from, to), wherever a UI value
    /// holds one: a report naming an earlier document that went to the
    /// same peer as the other class, under that class's UID.
    pub renamed_references: Vec<(String, String)>,
}

impl StoreOutcome {
    pub fn succeeded(&self) -> bool {
        matches!(self.result, Ok(s) if s.is_success() || s.is_warning())
    }
}

/// Deflated Explicit VR Little Endian.
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

/// What is needed of a Part-10 file to send it.
#[derive(Debug, Clone)]
pub struct FileToSend {
    pub path: PathBuf,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax: String,
    pub dataset_offset: u64,
    /// Source Application Entity Title of its File Meta (for a file the
    /// node stored, the AE title that sent it); empty when absent.
    pub source_ae_title: String,
    /// The class it may go as where its own is not accepted (proposed too).
    pub also_as: Option<SendAs>,
    /// Send as `also_as` where that is accepted, before its own class (a
    /// peer that accepted its own class and refused it at C-STORE, 0122).
    pub prefer_also_as: bool,
}

impl FileToSend {
    /// Reads the File Meta Information of a Part-10 file.
    pub fn inspect(path: &Path) -> Result<FileToSend, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        let mut reader = std::io::BufReader::new(file);
        reader
            .seek(SeekFrom::Start(128))
            .map_err(|e| format!("cannot read: {e}"))?;
        let meta = FileMetaTable::from_reader(&mut reader).map_err(|e| match e {
            // dicom-rs's own wording names no UID and no rule.
            dicom_object::meta::Error::InvalidUid { .. } => "a UID of its File Meta \
                Information has characters other than digits and dots (PS3.5 9.1)"
                .to_string(),
            e => format!("not a DICOM Part-10 file: {e}"),
        })?;
        let dataset_offset = reader
            .stream_position()
            .map_err(|e| format!("cannot read: {e}"))?;
        Ok(FileToSend {
            path: path.to_path_buf(),
            sop_class_uid: sop::trim_uid(meta.media_storage_sop_class_uid()).to_string(),
            sop_instance_uid: sop::trim_uid(meta.media_storage_sop_instance_uid()).to_string(),
            transfer_syntax: sop::trim_uid(meta.transfer_syntax()).to_string(),
            dataset_offset,
            source_ae_title: meta
                .source_application_entity_title()
                .map(|ae| ae.trim().to_string())
                .unwrap_or_default(),
            also_as: None,
            prefer_also_as: false,
        })
    }

    fn has_native_pixel_data(&self) -> bool {
        TransferSyntaxRegistry
            .get(&self.transfer_syntax)
            .is_some_and(|ts| !ts.is_encapsulated_pixel_data())
    }

    /// Whether the file can go in Explicit or Implicit VR Little Endian:
    /// re-encoded if native, decompressed first if `decompress` takes it.
    fn can_go_native(&self, decompress: Option<&Decompressor>) -> bool {
        self.has_native_pixel_data()
            || decompress.is_some_and(|d| (d.can_decompress)(&self.transfer_syntax))
    }
}

struct AcceptedContext {
    id: u8,
    abstract_syntax: String,
    transfer_syntax: String,
}

/// An open association as requestor.
pub struct ClientAssociation {
    conn: PduStream<TcpStream>,
    accepted: Vec<AcceptedContext>,
    /// Contexts the peer accepted in a transfer syntax not proposed for
    /// them (against PS3.8 9.3.3.2): never used, named when a file finds
    /// no other context.
    accepted_unproposed: Vec<AcceptedContext>,
    peer_max_pdu: u32,
    max_pdu: u32,
    next_message_id: u16,
    response_timeout: Duration,
    open_file: OpenFile,
    decompress: Option<Decompressor>,
    /// The peer released the association and was answered: nothing more
    /// is sent on it (no A-ABORT after the A-RELEASE-RP).
    released_by_peer: bool,
}

const NATIVE_FALLBACK: [&str; 2] = [sop::EXPLICIT_VR_LE, sop::IMPLICIT_VR_LE];

impl ClientAssociation {
    /// Connects and negotiates `proposals` (abstract syntax, transfer syntaxes).
    pub async fn open(
        addr: &AeAddress,
        options: &ScuOptions,
        proposals: &[(String, Vec<String>)],
    ) -> Result<Self, ScuError> {
        Self::open_as(addr, options, proposals, &[]).await
    }

    /// Connects and negotiates `proposals`, asking to act as SCP (not SCU)
    /// of each SOP class in `scp_role_for` (SCP/SCU Role Selection, PS3.7
    /// D.3.3.4): how a Storage Commitment result goes on an association
    /// the node opens. A peer that refuses that role refuses its context.
    pub async fn open_as(
        addr: &AeAddress,
        options: &ScuOptions,
        proposals: &[(String, Vec<String>)],
        scp_role_for: &[&str],
    ) -> Result<Self, ScuError> {
        let target = format!("{}:{}", addr.host, addr.port);
        let stream = tokio::time::timeout(options.connect_timeout, TcpStream::connect(&target))
            .await
            .map_err(|_| ScuError::Connect {
                addr: addr.to_string(),
                reason: "timed out".into(),
            })?
            .map_err(|e| ScuError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        let mut conn = PduStream::new(stream);
        let presentation_contexts: Vec<_> = proposals
            .iter()
            .enumerate()
            .map(|(i, (abstract_syntax, ts))| PresentationContextProposed {
                id: (2 * i + 1) as u8,
                abstract_syntax: abstract_syntax.clone(),
                transfer_syntaxes: ts.clone(),
            })
            .collect();
        let rq = AssociationRQ {
            protocol_version: 1,
            calling_ae_title: options.calling_ae.clone(),
            called_ae_title: addr.ae_title.clone(),
            application_context_name: sop::APPLICATION_CONTEXT.to_string(),
            presentation_contexts: presentation_contexts.clone(),
            user_variables: vec![
                UserVariableItem::MaxLength(options.max_pdu),
                UserVariableItem::ImplementationClassUID(
                    crate::IMPLEMENTATION_CLASS_UID.to_string(),
                ),
                UserVariableItem::ImplementationVersionName(
                    crate::IMPLEMENTATION_VERSION_NAME.to_string(),
                ),
            ]
            .into_iter()
            .chain(scp_role_for.iter().map(|class| {
                UserVariableItem::ScuScpRoleSelectionSubItem(
                    class.to_string(),
                    RequestorRoles {
                        scu: false,
                        scp: true,
                    },
                )
            }))
            .collect(),
        };
        conn.send(&Pdu::AssociationRQ(rq)).await?;
        let pdu_type = read_timed(&mut conn, options.response_timeout, options.max_pdu)
            .await
            .map_err(|e| match e {
                // The classic mistake: the PACS's web port for its DICOM
                // port ("unrecognised PDU type 0x48" named neither).
                ScuError::Pdu(PduError::UnknownType(first)) => ScuError::Protocol(format!(
                    "{addr} answered with something that is no DICOM (its first byte {first:#04x}{}): \
                     is {} the peer's DICOM port?",
                    if first == b'H' { ", 'H' as an HTTP answer begins" } else { "" },
                    addr.port
                )),
                other => other,
            })?;
        match conn.decode(pdu_type)? {
            Pdu::AssociationAC(ac) => {
                let (accepted, accepted_unproposed): (Vec<_>, Vec<_>) = ac
                    .presentation_contexts
                    .iter()
                    .filter(|r| r.reason == PresentationContextResultReason::Acceptance)
                    .filter_map(|r| {
                        let proposed = presentation_contexts.iter().find(|p| p.id == r.id)?;
                        let context = AcceptedContext {
                            id: r.id,
                            abstract_syntax: proposed.abstract_syntax.clone(),
                            transfer_syntax: sop::trim_uid(&r.transfer_syntax).to_string(),
                        };
                        let was_proposed = proposed
                            .transfer_syntaxes
                            .iter()
                            .any(|ts| sop::trim_uid(ts) == context.transfer_syntax);
                        Some((context, was_proposed))
                    })
                    .partition(|(_, was_proposed)| *was_proposed);
                // The role asked is ours only where the answer grants it;
                // a peer that answers no role item keeps the default roles
                // (PS3.7 D.3.3.4), which many that take the message anyway
                // do: their context is kept.
                let role_refused = |class: &str| {
                    scp_role_for.contains(&class)
                        && ac.user_variables.iter().any(|v| {
                            matches!(v, UserVariableItem::ScuScpRoleSelectionSubItem(c, roles)
                                if sop::trim_uid(c) == class && !roles.scp)
                        })
                };
                let accepted: Vec<AcceptedContext> = accepted
                    .into_iter()
                    .map(|(c, _)| c)
                    .filter(|c| {
                        let refused = role_refused(&c.abstract_syntax);
                        if refused {
                            warn!(peer = %addr, sop_class = %c.abstract_syntax,
                                "the peer refused the node the SCP role for this SOP class");
                        }
                        !refused
                    })
                    .collect();
                let accepted_unproposed: Vec<_> =
                    accepted_unproposed.into_iter().map(|(c, _)| c).collect();
                for c in &accepted_unproposed {
                    warn!(peer = %addr, context = c.id, sop_class = %c.abstract_syntax,
                        transfer_syntax = %c.transfer_syntax,
                        "the peer accepted a presentation context in a transfer syntax that was \
                         not proposed for it (PS3.8 9.3.3.2): it is not used");
                }
                let peer_max_pdu = pdu::announced_max_length(&ac.user_variables);
                Ok(ClientAssociation {
                    conn,
                    accepted,
                    accepted_unproposed,
                    peer_max_pdu,
                    max_pdu: options.max_pdu,
                    next_message_id: 1,
                    response_timeout: options.response_timeout,
                    open_file: options.open_file,
                    decompress: options.decompress,
                    released_by_peer: false,
                })
            }
            Pdu::AssociationRJ(rj) => Err(ScuError::Rejected {
                addr: addr.to_string(),
                reason: describe_rejection(&rj, &options.calling_ae),
            }),
            Pdu::AbortRQ { .. } => Err(ScuError::Aborted),
            other => Err(ScuError::Protocol(format!(
                "unexpected answer to A-ASSOCIATE-RQ: {other:?}"
            ))),
        }
    }

    fn context_for(
        &self,
        abstract_syntax: &str,
        transfer_syntax: Option<&str>,
    ) -> Option<&AcceptedContext> {
        self.accepted.iter().find(|c| {
            c.abstract_syntax == abstract_syntax
                && transfer_syntax.is_none_or(|ts| c.transfer_syntax == ts)
        })
    }

    /// The accepted context `file` can go in as `sop_class`: in its own
    /// transfer syntax (`None`), or else in a native one it is re-encoded to.
    fn context_as(&self, sop_class: &str, file: &FileToSend) -> Option<(u8, Option<String>)> {
        if let Some(c) = self.context_for(sop_class, Some(&file.transfer_syntax)) {
            return Some((c.id, None));
        }
        self.accepted
            .iter()
            .find(|c| {
                c.abstract_syntax == sop_class
                    && NATIVE_FALLBACK.contains(&c.transfer_syntax.as_str())
            })
            .filter(|_| file.can_go_native(self.decompress.as_ref()))
            .map(|c| (c.id, Some(c.transfer_syntax.clone())))
    }

    /// Why `file` has no context to be sent in.
    fn why_no_context(&self, file: &FileToSend) -> String {
        // Not "no presentation context": the peer did accept one, wrongly,
        // and only its own configuration can change that.
        let classes = [
            Some(&file.sop_class_uid),
            file.also_as.as_ref().map(|a| &a.sop_class_uid),
        ];
        if let Some(c) = self
            .accepted_unproposed
            .iter()
            .find(|c| classes.contains(&Some(&c.abstract_syntax)))
        {
            return format!(
                "the peer accepted presentation context {} (SOP class {}) in transfer syntax {}, \
                 which was not proposed for it (PS3.8 9.3.3.2: an acceptor chooses one of the \
                 syntaxes proposed); nothing is sent in it: the peer's configuration must change",
                c.id, c.abstract_syntax, c.transfer_syntax
            );
        }
        let fallback = if file.can_go_native(self.decompress.as_ref()) {
            " (nor in Explicit or Implicit VR Little Endian)"
        } else {
            ""
        };
        let also = match &file.also_as {
            Some(alt) => format!(", nor for SOP class {}", alt.sop_class_uid),
            None => String::new(),
        };
        format!(
            "the peer accepted no presentation context for SOP class {} in transfer syntax \
             {}{fallback}{also}",
            file.sop_class_uid, file.transfer_syntax
        )
    }

    fn message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1).max(1);
        id
    }

    /// Writes one PDU, within the response timeout: a peer that accepted
    /// the association and stopped reading would otherwise hold the write,
    /// and its delivery loop, for good.
    async fn send_timed(&mut self, bytes: &[u8]) -> Result<(), ScuError> {
        match tokio::time::timeout(self.response_timeout, self.conn.send_raw(bytes)).await {
            Ok(sent) => Ok(sent?),
            Err(_) => Err(ScuError::WriteTimeout(self.response_timeout)),
        }
    }

    pub async fn echo(&mut self) -> Result<Status, ScuError> {
        let context = self
            .context_for(sop::VERIFICATION, None)
            .ok_or(ScuError::NoAcceptedContext)?
            .id;
        let rq = Command::c_echo_rq(self.message_id());
        self.send_timed(&pdu::command_pdus(context, &rq.encode(), self.peer_max_pdu))
            .await?;
        let rsp = self.read_response(&rq).await?;
        Ok(rsp.status.unwrap_or(Status::SUCCESS))
    }

    /// Sends an N-EVENT-REPORT-RQ of `sop_class`'s `sop_instance` with its
    /// Event Information `data` (in Explicit VR Little Endian; re-encoded
    /// when the context took another syntax); the peer's status.
    pub async fn event_report(
        &mut self,
        sop_class: &str,
        sop_instance: &str,
        event_type_id: u16,
        data: &[u8],
    ) -> Result<Status, ScuError> {
        let context = self
            .context_for(sop_class, None)
            .ok_or(ScuError::NoAcceptedContext)?;
        let (context, ts) = (context.id, context.transfer_syntax.clone());
        let data = if ts == sop::EXPLICIT_VR_LE {
            data.to_vec()
        } else {
            crate::commitment::reencode(data, &ts).map_err(ScuError::Protocol)?
        };
        let rq =
            Command::n_event_report_rq(self.message_id(), sop_class, sop_instance, event_type_id);
        let mut pdus = pdu::command_pdus(context, &rq.encode(), self.peer_max_pdu);
        pdus.extend(pdu::data_set_pdus(context, &data, self.peer_max_pdu));
        self.send_timed(&pdus).await?;
        let rsp = self.read_response(&rq).await?;
        Ok(rsp.status.unwrap_or(Status::SUCCESS))
    }

    /// Sends one file; a failure of this instance alone is in the outcome,
    /// an error of the association is an `Err`.
    pub async fn store(&mut self, file: &FileToSend) -> Result<StoreOutcome, ScuError> {
        let outcome = |result, error_comment, sent_as| StoreOutcome {
            path: file.path.clone(),
            sop_instance_uid: file.sop_instance_uid.clone(),
            result,
            error_comment,
            sent_as,
        };
        let own = || {
            self.context_as(&file.sop_class_uid, file)
                .map(|c| (c, None))
        };
        let other = || {
            let alt = file.also_as.as_ref()?;
            let (context, ts) = self.context_as(&alt.sop_class_uid, file)?;
            // Two attributes change: the data set is written again.
            let ts = ts.unwrap_or_else(|| file.transfer_syntax.clone());
            Some(((context, Some(ts)), Some(alt.clone())))
        };
        let chosen = if file.prefer_also_as {
            other().or_else(own)
        } else {
            own().or_else(other)
        };
        let Some(((context, reencode_to), sent_as)) = chosen else {
            return Ok(outcome(Err(self.why_no_context(file)), None, None));
        };
        let (sop_class_uid, sop_instance_uid) = match &sent_as {
            Some(alt) => (&alt.sop_class_uid, &alt.sop_instance_uid),
            None => (&file.sop_class_uid, &file.sop_instance_uid),
        };
        let rq = Command::c_store_rq(self.message_id(), sop_class_uid, sop_instance_uid);
        let dataset = match &reencode_to {
            None => None,
            // Decoding a large image takes CPU time: off the async threads.
            Some(ts) => {
                let (open_file, decompress) = (self.open_file, self.decompress);
                let (file, ts, as_class) = (file.clone(), ts.clone(), sent_as.clone());
                let reencoded = tokio::task::spawn_blocking(move || {
                    reencode(
                        open_file,
                        decompress.as_ref(),
                        &file,
                        &ts,
                        as_class.as_ref(),
                    )
                })
                .await
                .unwrap_or_else(|e| Err(format!("re-encoding failed: {e}")));
                match reencoded {
                    Ok(bytes) => Some(bytes),
                    Err(e) => return Ok(outcome(Err(e), None, None)),
                }
            }
        };
        // Open the file before the command goes out: once it has, the data
        // must follow or the association is lost.
        let source = match &dataset {
            Some(_) => None,
            None => match tokio::fs::File::open(&file.path).await {
                Ok(f) => Some(f),
                Err(e) => return Ok(outcome(Err(format!("cannot open: {e}")), None, None)),
            },
        };
        self.send_timed(&pdu::command_pdus(context, &rq.encode(), self.peer_max_pdu))
            .await?;
        match (dataset, source) {
            (Some(bytes), _) => {
                self.send_data(context, &mut &bytes[..], bytes.len() as u64)
                    .await?
            }
            (None, Some(mut f)) => {
                let len = f
                    .metadata()
                    .await
                    .map_err(PduError::Io)?
                    .len()
                    .saturating_sub(file.dataset_offset);
                tokio::io::AsyncSeekExt::seek(&mut f, SeekFrom::Start(file.dataset_offset))
                    .await
                    .map_err(PduError::Io)?;
                if file.transfer_syntax == DEFLATED && len % 2 == 1 {
                    // A deflate stream may end on an odd byte; a PDV must
                    // not (DCMTK aborts: "Odd Fragment Length"). PS3.5 A.5
                    // pads it with one trailing NUL, which inflating ignores.
                    let mut padded = f.chain(&[0u8][..]);
                    self.send_data(context, &mut padded, len + 1).await?
                } else {
                    self.send_data(context, &mut f, len).await?
                }
            }
            (None, None) => unreachable!("either re-encoded bytes or the file"),
        }
        let rsp = self.read_response(&rq).await?;
        let status = rsp
            .status
            .ok_or_else(|| ScuError::Protocol("C-STORE-RSP without a status".into()))?;
        // Callers report it (the outbox logs it, `store` prints it): debug
        // here, or every warning was logged twice.
        if status.is_warning() {
            debug!(sop_instance_uid = %sop_instance_uid, %status, "peer stored with a warning");
        }
        // A response naming another instance: crossed answers at the peer.
        // Kept in the comment (and so in the outbox's last status).
        let mut comment = rsp.error_comment;
        if let Some(other) = rsp
            .affected_sop_instance_uid
            .as_deref()
            .map(sop::trim_uid)
            .filter(|uid| uid != sop_instance_uid)
        {
            warn!(sop_instance_uid = %sop_instance_uid, answered_for = %other,
                "the peer's C-STORE response names another instance");
            let note = format!("the response names another instance, {other}");
            comment = Some(match comment {
                Some(c) => format!("{c}; {note}"),
                None => note,
            });
        }
        Ok(outcome(Ok(status), comment, sent_as))
    }

    /// Streams `len` bytes of data set as PDUs no larger than the peer takes.
    async fn send_data<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        context: u8,
        source: &mut R,
        len: u64,
    ) -> Result<(), ScuError> {
        let payload = pdu::max_pdv_payload(self.peer_max_pdu) as u64;
        let mut remaining = len;
        let mut buf = Vec::with_capacity(payload.min(len.max(1)) as usize + 12);
        loop {
            let chunk = remaining.min(payload) as usize;
            let is_last = remaining == chunk as u64;
            pdu::pdata_header(&mut buf, context, false, is_last, chunk);
            let start = buf.len();
            buf.resize(start + chunk, 0);
            source
                .read_exact(&mut buf[start..])
                .await
                .map_err(|e| ScuError::Protocol(format!("file shorter than expected: {e}")))?;
            self.send_timed(&buf).await?;
            remaining -= chunk as u64;
            if is_last {
                return Ok(());
            }
        }
    }

    async fn read_response(&mut self, request: &Command) -> Result<Command, ScuError> {
        let mut bytes = Vec::new();
        loop {
            let pdu_type =
                match read_timed(&mut self.conn, self.response_timeout, self.max_pdu).await {
                    Ok(t) => t,
                    // Given up on: the peer is told with an A-ABORT, not
                    // left with a closed connection to make sense of.
                    Err(e @ ScuError::Timeout(_)) => {
                        self.conn.abort_as_user().await;
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                };
            match pdu_type {
                pdu::TYPE_P_DATA_TF => {
                    let mut complete = false;
                    for pdv in pdu::split_pdvs(self.conn.body())? {
                        if pdv.is_command {
                            bytes.extend_from_slice(pdv.data);
                            complete = pdv.is_last;
                        }
                    }
                    if !complete {
                        continue;
                    }
                    let rsp =
                        Command::decode(&bytes).map_err(|e| ScuError::Protocol(e.to_string()))?;
                    bytes.clear();
                    if rsp.command_field != request.command_field | 0x8000
                        || rsp.message_id_being_responded_to != request.message_id
                    {
                        let id = |id: Option<u16>| {
                            id.map_or_else(|| "without an ID".to_string(), |id| id.to_string())
                        };
                        self.conn.abort_as_user().await;
                        return Err(ScuError::Protocol(format!(
                            "the peer's response (command {:#06x}, to message {}) does not answer \
                             our request (command {:#06x}, message {})",
                            rsp.command_field,
                            id(rsp.message_id_being_responded_to),
                            request.command_field,
                            id(request.message_id)
                        )));
                    }
                    return Ok(rsp);
                }
                pdu::TYPE_ABORT => return Err(ScuError::Aborted),
                // An acceptor may release (PS3.8 7.2): answered as asked,
                // not with an abort; the request stays unanswered.
                // The releasing side closes the connection (PS3.8 7.2.1):
                // waited for, as an acceptor waits, never aborted after.
                pdu::TYPE_RELEASE_RQ => {
                    if let Err(e) = self.conn.send(&Pdu::ReleaseRP).await {
                        debug!(error = %e, "A-RELEASE-RP not sent");
                    }
                    self.conn.close_after(pdu::ARTIM).await;
                    self.released_by_peer = true;
                    return Err(ScuError::ReleasedByPeer);
                }
                other => {
                    self.conn.abort_as_user().await;
                    return Err(ScuError::Protocol(format!(
                        "unexpected PDU type {other:#04x}"
                    )));
                }
            }
        }
    }

    /// Releases the association (A-RELEASE), waiting for the peer's reply.
    /// A release collision (the peer's own A-RELEASE-RQ) is answered as the
    /// requestor answers it, with A-RELEASE-RP first (PS3.8 7.2.2); data
    /// the peer still sends before its reply is read and dropped.
    pub async fn release(mut self) -> Result<(), ScuError> {
        self.conn.send(&Pdu::ReleaseRQ).await?;
        let result = loop {
            let pdu_type =
                match read_timed(&mut self.conn, self.response_timeout, self.max_pdu).await {
                    Ok(t) => t,
                    Err(e) => {
                        // ARTIM expired: A-ABORT, then close (PS3.8 9.2,
                        // AA-2), not a bare close.
                        if matches!(e, ScuError::Timeout(_)) {
                            self.conn.abort_as_user().await;
                        }
                        break Err(e);
                    }
                };
            match pdu_type {
                pdu::TYPE_RELEASE_RP => break Ok(()),
                pdu::TYPE_RELEASE_RQ => {
                    if let Err(e) = self.conn.send(&Pdu::ReleaseRP).await {
                        break Err(e.into());
                    }
                }
                pdu::TYPE_P_DATA_TF => debug!("P-DATA-TF while releasing; dropped"),
                pdu::TYPE_ABORT => break Err(ScuError::Aborted),
                other => {
                    self.conn.abort_as_user().await;
                    break Err(ScuError::Protocol(format!(
                        "expected A-RELEASE-RP, got PDU type {other:#04x}"
                    )));
                }
            }
        };
        self.conn.shutdown().await;
        result
    }

    /// Aborts the association (A-ABORT), unless the peer released it.
    pub async fn abort(mut self) {
        if !self.released_by_peer {
            self.conn.abort_as_user().await;
        }
    }
}

async fn read_timed(
    conn: &mut PduStream<TcpStream>,
    limit: Duration,
    max_pdu: u32,
) -> Result<u8, ScuError> {
    match tokio::time::timeout(limit, conn.read(max_pdu)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(PduError::Closed)) => {
            Err(ScuError::Protocol("connection closed by the peer".into()))
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ScuError::Timeout(limit)),
    }
}

/// The rejection in words an operator can act on (PS3.8 9.3.4).
fn describe_rejection(rj: &AssociationRJ, calling_ae: &str) -> String {
    use dicom_ul::pdu::{
        AssociationRJServiceProviderASCEReason as Acse,
        AssociationRJServiceProviderPresentationReason as Presentation,
        AssociationRJServiceUserReason as User, AssociationRJSource as Source,
    };
    let result = match rj.result {
        dicom_ul::pdu::AssociationRJResult::Permanent => "permanently",
        dicom_ul::pdu::AssociationRJResult::Transient => "for now (transient)",
    };
    let why = match &rj.source {
        Source::ServiceUser(User::NoReasonGiven) => "no reason given".to_string(),
        Source::ServiceUser(User::ApplicationContextNameNotSupported) => {
            "application context not supported".to_string()
        }
        Source::ServiceUser(User::CallingAETitleNotRecognized) => format!(
            "calling AE title `{calling_ae}` not recognized (is it configured at the peer, for this host?)"
        ),
        Source::ServiceUser(User::CalledAETitleNotRecognized) => {
            "called AE title not recognized (check the AE title configured for the peer)".to_string()
        }
        Source::ServiceUser(User::Reserved(r)) => format!("service user, reason {r}"),
        Source::ServiceProviderASCE(Acse::NoReasonGiven) => {
            "no reason given (ACSE service provider)".to_string()
        }
        Source::ServiceProviderASCE(Acse::ProtocolVersionNotSupported) => {
            "protocol version not supported".to_string()
        }
        Source::ServiceProviderPresentation(Presentation::TemporaryCongestion) => {
            "temporary congestion".to_string()
        }
        Source::ServiceProviderPresentation(Presentation::LocalLimitExceeded) => {
            "the peer's limit of associations is reached".to_string()
        }
        Source::ServiceProviderPresentation(Presentation::Reserved(r)) => {
            format!("presentation service provider, reason {r}")
        }
    };
    format!("{result}: {why}")
}

/// Every UI value equal to a `from` becomes its `to`, in nested sequences
/// too.
fn rename_uids(obj: &mut dicom_object::InMemDicomObject, renames: &[(String, String)]) {
    if renames.is_empty() {
        return;
    }
    let tags_here: Vec<_> = obj.iter().map(|e| e.header().tag).collect();
    for tag in tags_here {
        let Some(e) = obj.get(tag) else { continue };
        if e.vr() == VR::UI {
            let value = e
                .to_str()
                .map(|v| v.trim_end_matches(['\0', ' ']).to_string());
            if let Some((_, to)) = value
                .ok()
                .and_then(|v| renames.iter().find(|(from, _)| *from == v))
            {
                obj.put(DataElement::new(
                    tag,
                    VR::UI,
                    PrimitiveValue::from(to.as_str()),
                ));
            }
        } else if e.vr() == VR::SQ {
            obj.update_value(tag, |value| {
                if let Some(items) = value.items_mut() {
                    for item in items.iter_mut() {
                        rename_uids(item, renames);
                    }
                }
            });
        }
    }
}

/// Re-encodes a data set into a native transfer syntax (or its own, when
/// it goes as another class), decompressing its pixel data first when they
/// are compressed and the syntax is not.
fn reencode(
    open_file: OpenFile,
    decompress: Option<&Decompressor>,
    file: &FileToSend,
    ts_uid: &str,
    send_as: Option<&SendAs>,
) -> Result<Vec<u8>, String> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| format!("unknown transfer syntax {ts_uid}"))?;
    let path = &file.path;
    let mut obj = open_file(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if let Some(alt) = send_as {
        rename_uids(&mut obj, &alt.renamed_references);
        for (tag, uid) in [
            (tags::SOP_CLASS_UID, &alt.sop_class_uid),
            (tags::SOP_INSTANCE_UID, &alt.sop_instance_uid),
        ] {
            obj.put(DataElement::new(
                tag,
                VR::UI,
                PrimitiveValue::from(uid.as_str()),
            ));
        }
    }
    if !file.has_native_pixel_data() && !ts.is_encapsulated_pixel_data() {
        let decompress = decompress.ok_or("no decompressor")?;
        obj = (decompress.decompress)(obj).map_err(|e| {
            format!(
                "the peer takes only uncompressed data for SOP class {} and decompressing {} failed: {e}",
                file.sop_class_uid, file.transfer_syntax
            )
        })?;
    }
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| format!("cannot re-encode to {ts_uid}: {e}"))?;
    Ok(out)
}

/// The presentation contexts to propose for a set of files: each file's
/// own (SOP class, transfer syntax), plus Explicit/Implicit VR Little Endian
/// per SOP class for files in another syntax that can go native (see
/// [`FileToSend::can_go_native`]).
pub fn proposals_for(
    files: &[FileToSend],
    decompress: Option<&Decompressor>,
) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut push = |abstract_syntax: &str, ts: Vec<String>| {
        if !out.iter().any(|(a, t)| a == abstract_syntax && *t == ts) {
            out.push((abstract_syntax.to_string(), ts));
        }
    };
    for f in files {
        let classes =
            std::iter::once(&f.sop_class_uid).chain(f.also_as.iter().map(|a| &a.sop_class_uid));
        for class in classes {
            push(class, vec![f.transfer_syntax.clone()]);
            // Every SCP supports Implicit VR Little Endian (the default
            // transfer syntax); a native file in any other syntax can be
            // re-encoded to it, so an older PACS that takes nothing else
            // still gets it. An Implicit VR file goes to Explicit for a peer
            // configured to take only that (PS3.5 10.1 says it must take
            // Implicit; some do not).
            if f.can_go_native(decompress) {
                push(
                    class,
                    NATIVE_FALLBACK.iter().map(|s| s.to_string()).collect(),
                );
            }
        }
    }
    out
}

/// At most 128 presentation contexts fit one association.
const MAX_CONTEXTS: usize = 128;

/// How many of `files`, from the first, one association can propose
/// (at least one).
pub fn files_fitting_one_association(
    files: &[FileToSend],
    decompress: Option<&Decompressor>,
) -> usize {
    let mut end = 1;
    while end < files.len() && proposals_for(&files[..=end], decompress).len() <= MAX_CONTEXTS {
        end += 1;
    }
    end.min(files.len())
}

/// C-ECHO: opens an association, verifies, releases.
pub async fn echo(addr: &AeAddress, options: &ScuOptions) -> Result<EchoOutcome, ScuError> {
    let proposals = vec![(
        sop::VERIFICATION.to_string(),
        NATIVE_FALLBACK.iter().map(|s| s.to_string()).collect(),
    )];
    let mut assoc = ClientAssociation::open(addr, options, &proposals).await?;
    let status = assoc.echo().await?;
    release_answered(assoc).await;
    Ok(EchoOutcome { status })
}

/// Sends a Storage Commitment result on an association of its own, the
/// node as SCP of the Push Model (PS3.4 J.3.3): opens it, sends the
/// N-EVENT-REPORT, releases; the requester's status.
pub async fn send_commitment_result(
    addr: &AeAddress,
    options: &ScuOptions,
    event_type_id: u16,
    data: &[u8],
) -> Result<Status, ScuError> {
    use crate::commitment::{STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH};
    let proposals = vec![(
        STORAGE_COMMITMENT_PUSH.to_string(),
        NATIVE_FALLBACK.iter().map(|s| s.to_string()).collect(),
    )];
    let mut assoc =
        ClientAssociation::open_as(addr, options, &proposals, &[STORAGE_COMMITMENT_PUSH]).await?;
    if assoc.context_for(STORAGE_COMMITMENT_PUSH, None).is_none() {
        release_answered(assoc).await;
        return Err(ScuError::Protocol(format!(
            "{addr} accepted no Storage Commitment Push Model context with the node as its SCP \
             (proposed with SCP/SCU role selection, SCU 0, SCP 1): the requester must accept \
             the node as SCP of the class to take results on an association the node opens"
        )));
    }
    let status = match assoc
        .event_report(
            STORAGE_COMMITMENT_PUSH,
            STORAGE_COMMITMENT_INSTANCE,
            event_type_id,
            data,
        )
        .await
    {
        Ok(status) => status,
        Err(e) => {
            assoc.abort().await;
            return Err(e);
        }
    };
    release_answered(assoc).await;
    Ok(status)
}

/// Releases an association whose requests were all answered: a peer that
/// botches the release changes none of those answers, so it is logged, not
/// returned.
async fn release_answered(assoc: ClientAssociation) {
    if let Err(e) = assoc.release().await {
        warn!(error = %e, "the peer did not release the association properly (its answers stand)");
    }
}

/// Sends files over as few associations as the presentation-context limit
/// allows. Files that cannot be read are reported in their outcome.
pub async fn store_files(
    addr: &AeAddress,
    options: &ScuOptions,
    paths: &[PathBuf],
) -> Result<Vec<StoreOutcome>, ScuError> {
    let mut outcomes = Vec::with_capacity(paths.len());
    let mut files = Vec::new();
    for path in paths {
        match FileToSend::inspect(path) {
            Ok(f) => files.push(f),
            Err(e) => outcomes.push(StoreOutcome {
                path: path.clone(),
                sop_instance_uid: String::new(),
                result: Err(e),
                error_comment: None,
                sent_as: None,
            }),
        }
    }
    let mut start = 0;
    while start < files.len() {
        let end =
            start + files_fitting_one_association(&files[start..], options.decompress.as_ref());
        let batch = &files[start..end];
        start = end;
        let not_sent = |file: &FileToSend, why: String| StoreOutcome {
            path: file.path.clone(),
            sop_instance_uid: file.sop_instance_uid.clone(),
            result: Err(why),
            error_comment: None,
            sent_as: None,
        };
        let mut assoc = match ClientAssociation::open(
            addr,
            options,
            &proposals_for(batch, options.decompress.as_ref()),
        )
        .await
        {
            Ok(a) => a,
            // Nothing sent yet: the whole command failed, say so once.
            Err(e) if outcomes.iter().all(|o| o.result.is_err()) && end == batch.len() => {
                return Err(e)
            }
            Err(e) => {
                outcomes.extend(batch.iter().map(|f| not_sent(f, format!("not sent: {e}"))));
                continue;
            }
        };
        let mut sent = 0;
        for file in batch {
            match assoc.store(file).await {
                Ok(outcome) => {
                    debug!(path = %file.path.display(), result = ?outcome.result, "C-STORE sent");
                    outcomes.push(outcome);
                    sent += 1;
                }
                Err(e) => {
                    // The association is lost: what was answered stands, this
                    // file and the rest of the batch were not stored.
                    outcomes.push(not_sent(file, e.to_string()));
                    outcomes.extend(
                        batch[sent + 1..]
                            .iter()
                            .map(|f| not_sent(f, format!("not sent: the association ended ({e})"))),
                    );
                    break;
                }
            }
        }
        if sent == batch.len() {
            release_answered(assoc).await;
        } else {
            assoc.abort().await;
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ae_addresses_parse() {
        let a: AeAddress = "PACS@127.0.0.1:104".parse().unwrap();
        assert_eq!(a.ae_title, "PACS");
        assert_eq!(a.host, "127.0.0.1");
        assert_eq!(a.port, 104);
        assert_eq!(a.to_string(), "PACS@127.0.0.1:104");
        assert!("PACS127.0.0.1:104".parse::<AeAddress>().is_err());
        assert!("PACS@host".parse::<AeAddress>().is_err());
        assert!("@host:1".parse::<AeAddress>().is_err());
        assert!("SEVENTEEN_CHARS_X@h:1".parse::<AeAddress>().is_err());
        let v6: AeAddress = "X@[::1]:11112".parse().unwrap();
        assert_eq!(v6.host, "::1");
        // '@' is of the AE title's repertoire; a host has none
        let at: AeAddress = "PNE@MO@127.0.0.1:104".parse().unwrap();
        assert_eq!(
            (at.ae_title.as_str(), at.host.as_str()),
            ("PNE@MO", "127.0.0.1")
        );
        assert!("BACK\\SLASH@h:1".parse::<AeAddress>().is_err());
    }

    #[test]
    fn proposals_offer_own_syntax_and_native_fallback() {
        let f = |ts: &str| FileToSend {
            path: PathBuf::new(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.1".into(),
            sop_instance_uid: "1".into(),
            transfer_syntax: ts.into(),
            dataset_offset: 0,
            source_ae_title: String::new(),
            also_as: None,
            prefer_also_as: false,
        };
        // Explicit VR LE: its own, and the fallback a peer that takes only
        // Implicit VR LE accepts; twice the same file type, once each.
        let p = proposals_for(&[f(sop::EXPLICIT_VR_LE), f(sop::EXPLICIT_VR_LE)], None);
        assert_eq!(p.len(), 2);
        let p = proposals_for(&[f(sop::IMPLICIT_VR_LE)], None);
        assert_eq!(p.len(), 2);
        // JPEG 2000: its own syntax only, unless it can be decompressed.
        let j2k = "1.2.840.10008.1.2.4.90";
        let p = proposals_for(&[f(j2k)], None);
        assert_eq!(p.len(), 1);
        let decompressor = |can_decompress| Decompressor {
            can_decompress,
            decompress: Ok,
        };
        let p = proposals_for(&[f(j2k)], Some(&decompressor(|_| true)));
        assert_eq!(p.len(), 2);
        let p = proposals_for(&[f(j2k)], Some(&decompressor(|_| false)));
        assert_eq!(p.len(), 1);
        // Big endian: its own, plus the little-endian fallback.
        let p = proposals_for(&[f(sop::EXPLICIT_VR_BE)], None);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[1].1,
            vec![
                sop::EXPLICIT_VR_LE.to_string(),
                sop::IMPLICIT_VR_LE.to_string()
            ]
        );
    }
}
