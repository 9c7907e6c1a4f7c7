//! The SCP: accepts associations, answers C-ECHO, receives C-STORE.
//!
//! Each association runs on its own task. Data PDVs of a C-STORE are written
//! to a spool file (Part-10 header first, then the data set bytes exactly as
//! received) as they arrive, hashed on the way; the complete file is handed to
//! the [`StoreHandler`], whose status goes back in the C-STORE-RSP.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_object::meta::FileMetaTableBuilder;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AssociationAC, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderASCEReason, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ, Pdu,
    PresentationContextResult, PresentationContextResultReason, UserVariableItem,
};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::command::{field, Command};
use crate::commitment::{self, CommitmentItem};
use crate::pdu::{self, PduError, PduStream};
use crate::sop;
use crate::status::Status;

/// Which storage SOP classes the SCP accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageAcceptance {
    /// The classes a chest radiography node meets ([`sop::CHEST_STORAGE`]).
    #[default]
    Chest,
    /// Every storage SOP class (the node routes what it does not analyse).
    AllStorage,
}

/// A calling AE title allowed to associate, optionally only from one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedCaller {
    pub ae_title: String,
    pub host: Option<IpAddr>,
}

#[derive(Debug, Clone)]
pub struct ScpConfig {
    pub ae_title: String,
    /// Refuse associations whose called AE title is not ours.
    pub require_called_ae: bool,
    /// When not empty, only these callers may associate.
    pub allowed_callers: Vec<AllowedCaller>,
    /// Maximum Length Received we announce and enforce on P-DATA-TF PDUs.
    pub max_pdu: u32,
    /// Associations served at once; more are rejected ("local limit exceeded").
    pub max_associations: usize,
    /// Longest wait for the next PDU inside a message or during set-up.
    pub read_timeout: Duration,
    /// Longest wait for the next message on an idle association.
    pub idle_timeout: Duration,
    /// Slowest average rate, in bytes per second, at which a message may
    /// arrive once begun (over `read_timeout` of grace); 0: no bound. Each
    /// PDU of a message dripping in can come within `read_timeout` while the
    /// message never ends, holding its association slot.
    pub min_receive_rate: u64,
    pub acceptance: StorageAcceptance,
    /// SOP classes accepted besides `acceptance`'s (a vendor's private
    /// storage classes that travel with its studies).
    pub also_accept: Vec<String>,
    /// Where incoming data sets are spooled; on the same file system as the
    /// final store so that keeping an instance is a rename.
    pub spool_dir: PathBuf,
    /// On shutdown, how long messages in progress may take to finish.
    pub shutdown_grace: Duration,
    /// Accept Storage Commitment (push model) requests, answered on the
    /// same association ([`StoreHandler::commit`]).
    pub storage_commitment: bool,
}

impl Default for ScpConfig {
    fn default() -> Self {
        ScpConfig {
            ae_title: "PNEUMO".into(),
            require_called_ae: true,
            allowed_callers: Vec::new(),
            max_pdu: 1 << 20,
            max_associations: 32,
            read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            min_receive_rate: 16 * 1024,
            shutdown_grace: Duration::from_secs(30),
            acceptance: StorageAcceptance::Chest,
            also_accept: Vec::new(),
            spool_dir: std::env::temp_dir(),
            storage_commitment: true,
        }
    }
}

/// Who is on the other end of an association.
#[derive(Debug, Clone)]
pub struct AssociationContext {
    pub id: u64,
    pub calling_ae: String,
    pub called_ae: String,
    pub peer: SocketAddr,
}

/// A received instance, spooled as a complete Part-10 file.
#[derive(Debug)]
pub struct ReceivedInstance {
    pub context: Arc<AssociationContext>,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// The negotiated transfer syntax, in which the data set bytes are.
    pub transfer_syntax: String,
    /// The spool file. The SCP deletes it after the handler returns unless
    /// the handler moved it away.
    pub path: PathBuf,
    /// Where the data set starts in the file (after preamble and File Meta).
    pub dataset_offset: u64,
    pub dataset_len: u64,
    /// SHA-256 of the data set bytes as received.
    pub dataset_sha256: [u8; 32],
}

/// The status a handler answers with, and an optional Error Comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReply {
    pub status: Status,
    pub comment: Option<String>,
}

impl StoreReply {
    pub fn success() -> Self {
        StoreReply {
            status: Status::SUCCESS,
            comment: None,
        }
    }

    pub fn failure(status: Status, comment: impl Into<String>) -> Self {
        StoreReply {
            status,
            comment: Some(comment.into()),
        }
    }
}

/// What the node does with received instances.
pub trait StoreHandler: Send + Sync + 'static {
    /// Called when a C-STORE request arrives, before its data. An `Err`
    /// refuses the instance with that status (its data is read and dropped).
    fn admit(&self, _context: &AssociationContext, _sop_class_uid: &str) -> Result<(), StoreReply> {
        Ok(())
    }

    /// Called each time another [`ROOM_CHECK_BYTES`] of a data set has
    /// been spooled (`received` bytes so far). An `Err` stops spooling it:
    /// the instance is refused A700 with that reason and its spool file
    /// removed (a data set larger than the space `admit` saw must not use
    /// up what the database needs).
    fn room_while_receiving(&self, _received: u64) -> Result<(), String> {
        Ok(())
    }

    /// Called once per accepted association (for counting).
    fn association_accepted(&self, _context: &AssociationContext) {}

    /// Called once per association request answered A-ASSOCIATE-RJ, with
    /// why (for counting).
    fn association_rejected(&self, _calling_ae: &str, _why: &str) {}

    /// Called for a C-STORE refused before it reached `store` (the data set
    /// could not be spooled, `admit` refused it, ...), for counting.
    fn instance_refused(&self, _reply: &StoreReply) {}

    /// Keeps a received instance; the reply goes back to the sender.
    fn store(&self, instance: ReceivedInstance) -> impl Future<Output = StoreReply> + Send;

    /// Checks a data set received in memory (a Storage Commitment
    /// request's) before it is parsed: every length, the nesting depth and
    /// the element count, as a C-STORE's is checked on its spool file. The
    /// parser recurses without bound, so a handler that checks nothing
    /// refuses them all.
    fn check_data_set(&self, _bytes: &[u8], _transfer_syntax: &str) -> Result<(), String> {
        Err("data sets are not checked by this handler".into())
    }

    /// Whether each instance of a Storage Commitment request is kept: None
    /// when it is (received, acknowledged, and not removed since), else the
    /// Failure Reason ([`crate::commitment::failure`]). One answer per item,
    /// in order. A handler that keeps nothing commits nothing.
    fn commit(
        &self,
        _context: &AssociationContext,
        items: &[CommitmentItem],
    ) -> impl Future<Output = Vec<Option<u16>>> + Send {
        let failed = vec![Some(crate::commitment::failure::PROCESSING_FAILURE); items.len()];
        async move { failed }
    }

    /// Takes a Storage Commitment result to send on an association of the
    /// node's own, for a requester set to take it so: `Ok(true)` once it is
    /// kept to be sent (the N-ACTION is then answered success), `Ok(false)`
    /// when it goes on the requester's association, `Err` when it can go
    /// nowhere (the N-ACTION fails 0110, with the reason). `data` is the
    /// Event Information in Explicit VR Little Endian.
    fn send_result_apart(
        &self,
        _context: &AssociationContext,
        _transaction_uid: &str,
        _event_type_id: u16,
        _data: &[u8],
    ) -> impl Future<Output = Result<bool, String>> + Send {
        async { Ok(false) }
    }
}

#[derive(Debug, Error)]
pub enum ScpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot use spool directory {path}: {source}")]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A listening SCP.
pub struct ScpServer<H> {
    listener: TcpListener,
    shared: Arc<Shared<H>>,
}

struct Shared<H> {
    config: ScpConfig,
    handler: Arc<H>,
    active: Arc<AtomicUsize>,
    /// Connections whose A-ASSOCIATE-RQ has not arrived yet: counted apart,
    /// so that bare TCP connections (a port scan, a health check) cannot
    /// hold the association slots for `read_timeout`.
    handshaking: AtomicUsize,
    /// The same, by the address they come from: a few silent connections
    /// from one host (renewed as they time out) held every handshake slot
    /// and shut out every modality.
    handshaking_from: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// Associations by the address they come from: one host keeping
    /// associations open (a C-ECHO on each just inside `idle_timeout`) held
    /// every slot and shut out every modality.
    associated_from: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    next_id: AtomicU64,
    /// True once the node is shutting down: associations finish the message
    /// in progress, then are aborted.
    draining: tokio::sync::watch::Sender<bool>,
}

impl<H: StoreHandler> ScpServer<H> {
    pub async fn bind(
        addr: SocketAddr,
        config: ScpConfig,
        handler: Arc<H>,
    ) -> Result<Self, ScpError> {
        std::fs::create_dir_all(&config.spool_dir).map_err(|source| ScpError::Spool {
            path: config.spool_dir.clone(),
            source,
        })?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ScpError::Bind { addr, source })?;
        Ok(ScpServer {
            listener,
            shared: Arc::new(Shared {
                config,
                handler,
                active: Arc::new(AtomicUsize::new(0)),
                handshaking: AtomicUsize::new(0),
                handshaking_from: Default::default(),
                associated_from: Default::default(),
                next_id: AtomicU64::new(1),
                draining: tokio::sync::watch::Sender::new(false),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Number of associations being served now.
    pub fn active_associations(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// A live view of [`Self::active_associations`] that outlives `serve`'s borrow.
    pub fn active_counter(&self) -> Arc<AtomicUsize> {
        self.shared.active.clone()
    }

    /// Accepts associations until `shutdown` completes; then accepts no
    /// more, lets each association finish the message it is in (a C-STORE
    /// half received is completed, stored and answered) and aborts it,
    /// waiting at most `shutdown_grace`.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                a = self.listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let shared = self.shared.clone();
                    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                    let span = info_span!("association", id, %peer);
                    tokio::spawn(
                        async move {
                            let limit = max_handshaking(&shared.config);
                            let handshake = Handshake {
                                all: Slot::take(&shared.handshaking, limit),
                                from_peer: PeerSlot::take(&shared.handshaking_from, peer.ip(), limit / 4),
                            };
                            if !handshake.all.within_limit {
                                warn!("too many connections without an A-ASSOCIATE-RQ; closing this one");
                                return;
                            }
                            if !handshake.from_peer.within_limit {
                                warn!(
                                    "too many connections without an A-ASSOCIATE-RQ from this \
                                     address ({}); closing this one",
                                    limit / 4
                                );
                                return;
                            }
                            serve_connection(stream, peer, id, shared.clone(), handshake).await;
                        }
                        .instrument(span),
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        drop(self.listener);
        self.shared.draining.send_replace(true);
        let deadline = tokio::time::Instant::now() + self.shared.config.shutdown_grace;
        let active = || self.shared.active.load(Ordering::SeqCst);
        if active() > 0 {
            info!(
                associations = active(),
                "waiting for the messages in progress"
            );
        }
        while active() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if active() > 0 {
            warn!(
                associations = active(),
                "shutdown grace over: associations cut in the middle of a message \
                 (nothing of theirs was acknowledged)"
            );
        }
    }
}

/// Associations one address may hold at once: three quarters of them
/// (rounded up), so that one host never takes the last ones.
fn max_associations_per_host(config: &ScpConfig) -> usize {
    (config.max_associations * 3).div_ceil(4).max(1)
}

/// Connections allowed to be waiting for their A-ASSOCIATE-RQ at once.
fn max_handshaking(config: &ScpConfig) -> usize {
    (config.max_associations * 4).max(64)
}

/// A connection whose A-ASSOCIATE-RQ has not arrived yet, counted in all
/// and by its address (a quarter of the limit each).
struct Handshake<'a> {
    all: Slot<'a>,
    from_peer: PeerSlot<'a>,
}

/// Counts a connection under its address while it lives.
struct PeerSlot<'a> {
    counts: &'a std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    ip: std::net::IpAddr,
    within_limit: bool,
}

impl<'a> PeerSlot<'a> {
    fn take(
        counts: &'a std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
        ip: std::net::IpAddr,
        limit: usize,
    ) -> Self {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        *n += 1;
        let within_limit = *n <= limit;
        PeerSlot {
            counts,
            ip,
            within_limit,
        }
    }
}

impl Drop for PeerSlot<'_> {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Counts a connection in one of the counters while it lives;
/// `within_limit` says whether it may go on.
struct Slot<'a> {
    counter: &'a AtomicUsize,
    within_limit: bool,
}

impl<'a> Slot<'a> {
    fn take(counter: &'a AtomicUsize, limit: usize) -> Self {
        let before = counter.fetch_add(1, Ordering::SeqCst);
        Slot {
            counter,
            within_limit: before < limit,
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_connection<H: StoreHandler>(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: Arc<Shared<H>>,
    handshake: Handshake<'_>,
) {
    let _ = stream.set_nodelay(true);
    let config = &shared.config;
    let mut conn = PduStream::new(stream).with_write_timeout(config.read_timeout);

    let mut rq = match read_with_timeout(&mut conn, config.read_timeout, config.max_pdu).await {
        Ok(pdu::TYPE_ASSOCIATE_RQ) => match conn.decode(pdu::TYPE_ASSOCIATE_RQ) {
            Ok(Pdu::AssociationRQ(rq)) => rq,
            other => {
                // the cause, so a site can tell its modality's fault
                let error = match other {
                    Err(e) => e.to_string(),
                    Ok(_) => "it decoded as another PDU".to_string(),
                };
                warn!(%error, "malformed A-ASSOCIATE-RQ; aborting");
                conn.abort(AbortRQServiceProviderReason::InvalidPduParameter)
                    .await;
                return;
            }
        },
        // An A-ABORT before any association: closed, nothing sent (PS3.8
        // state table, Sta2 with Evt16: AA-2).
        Ok(pdu::TYPE_ABORT) => {
            info!("the peer sent A-ABORT before any A-ASSOCIATE-RQ; connection closed");
            conn.shutdown().await;
            return;
        }
        Ok(other) => {
            warn!(pdu_type = other, "expected A-ASSOCIATE-RQ; aborting");
            conn.abort(AbortRQServiceProviderReason::UnexpectedPdu)
                .await;
            return;
        }
        Err(e) => {
            warn!(error = %e, "no valid A-ASSOCIATE-RQ");
            if let Some(reason) = e.abort_reason() {
                conn.abort(reason).await;
            }
            return;
        }
    };

    // Titles padded with NULs instead of spaces (older modalities; DCMTK
    // accepts them) are read without the padding.
    for title in [&mut rq.calling_ae_title, &mut rq.called_ae_title] {
        let unpadded = title.trim_end_matches(['\0', ' ']).len();
        title.truncate(unpadded);
    }
    let calling_ae = rq.calling_ae_title.trim().to_string();
    let called_ae = rq.called_ae_title.trim().to_string();
    // A rejected request never holds an association slot: it stays counted
    // with the connections still handshaking while the RJ is sent and the
    // peer given its time to close (it would otherwise let requests nobody
    // accepts lock out real senders).
    let accepted = negotiate(config, &rq, peer.ip()).and_then(|negotiated| {
        let limit_exceeded = |why: String| {
            reject(
                AssociationRJResult::Transient,
                AssociationRJSource::ServiceProviderPresentation(
                    AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
                ),
                why,
            )
        };
        let slot = Slot::take(&shared.active, config.max_associations);
        let per_host = max_associations_per_host(config);
        let from_peer = PeerSlot::take(&shared.associated_from, peer.ip(), per_host);
        if !slot.within_limit {
            Err(limit_exceeded(format!(
                "association limit ({}) reached",
                config.max_associations
            )))
        } else if !from_peer.within_limit {
            Err(limit_exceeded(format!(
                "association limit per address ({per_host} of {}) reached by {}",
                config.max_associations,
                peer.ip()
            )))
        } else {
            Ok((negotiated, (slot, from_peer)))
        }
    });
    let ((ac, contexts, peer_max_pdu), _slots) = match accepted {
        Ok(a) => a,
        Err(refusal) => {
            // Escaped: a refused title may hold control characters.
            let calling_ae = calling_ae.escape_debug().to_string();
            let called_ae = called_ae.escape_debug().to_string();
            warn!(%calling_ae, %called_ae, why = %refusal.why, "association rejected");
            shared
                .handler
                .association_rejected(&calling_ae, &refusal.why);
            let _ = conn.send(&Pdu::AssociationRJ(refusal.rj)).await;
            conn.close_after(pdu::ARTIM).await;
            return;
        }
    };
    // An association from here on: it holds its slot, not a handshake's.
    drop(handshake);
    if let Err(e) = conn.send(&Pdu::AssociationAC(ac)).await {
        warn!(error = %e, "could not send A-ASSOCIATE-AC");
        return;
    }
    let context = Arc::new(AssociationContext {
        id,
        calling_ae,
        called_ae,
        peer,
    });
    shared.handler.association_accepted(&context);
    // The SOP classes refused, so a site can tell why its C-FIND or
    // storage commitment fails on this node; apart, the classes it takes
    // proposed only in transfer syntaxes it does not (they read as "CR
    // refused" under a configuration that accepts CR). A class accepted on
    // another context is in neither.
    let mut refused: Vec<&str> = Vec::new();
    let mut no_transfer_syntax: Vec<&str> = Vec::new();
    for c in contexts.iter().filter(|c| !c.accepted) {
        let class = c.abstract_syntax.as_str();
        let accepted_elsewhere = contexts
            .iter()
            .any(|o| o.accepted && o.abstract_syntax == class);
        let list = if abstract_supported(&shared.config, class) {
            &mut no_transfer_syntax
        } else {
            &mut refused
        };
        if !accepted_elsewhere && !list.contains(&class) {
            list.push(class);
        }
    }
    let listed = |l: &Vec<&str>| {
        (!l.is_empty())
            .then(|| proposed_classes_for_the_log(l))
            .map(tracing::field::display)
    };
    let accepted = contexts.iter().filter(|c| c.accepted).count();
    // An association that can carry nothing is a sender's failure to see.
    macro_rules! accepted_line {
        ($level:ident) => {
            $level!(
                calling_ae = %context.calling_ae,
                accepted,
                proposed = contexts.len(),
                refused = listed(&refused),
                refused_for_transfer_syntax = listed(&no_transfer_syntax),
                "association accepted"
            )
        };
    }
    if accepted == 0 {
        accepted_line!(warn);
    } else {
        accepted_line!(info);
    }
    let mut association = Association {
        conn,
        shared: &shared,
        context,
        contexts,
        peer_max_pdu,
        state: MessageState::Idle,
        stored: 0,
        message_pace: MessagePace::default(),
        next_message_id: 1,
        awaiting_event_report: Vec::new(),
    };
    let end = association.run().await;
    // A C-STORE the end cut off: named, so that a site can match it with
    // the sender's retry ("association aborted" alone said nothing of it).
    if let MessageState::Data { command, .. } = &association.state {
        if command.command_field == crate::command::field::C_STORE_RQ {
            warn!(
                sop_instance_uid = command.affected_sop_instance_uid.as_deref().unwrap_or(""),
                message_id = command.message_id.unwrap_or(0),
                "C-STORE cut off before its data set was whole: nothing of it kept, not \
                 acknowledged (the sender may send it again)"
            );
        }
    }
    association.results_unconfirmed(match &end {
        AssociationEnd::Released => "released",
        AssociationEnd::AbortedByPeer => "aborted by the peer",
        AssociationEnd::Closed => "closed",
        AssociationEnd::ShuttingDown => "aborted: the node is shutting down",
        AssociationEnd::Error(_) => "aborted by the node",
    });
    match end {
        AssociationEnd::Released => info!(instances = association.stored, "association released"),
        AssociationEnd::AbortedByPeer => warn!(
            instances = association.stored,
            "association aborted by peer"
        ),
        AssociationEnd::Closed => warn!(
            instances = association.stored,
            "connection closed without release"
        ),
        AssociationEnd::ShuttingDown => info!(
            instances = association.stored,
            "association aborted between messages: the node is shutting down"
        ),
        AssociationEnd::Error(e) => {
            warn!(error = %e, instances = association.stored, "association aborted")
        }
    }
}

/// Reads the next PDU, which must begin and end within `limit`.
async fn read_with_timeout(
    conn: &mut PduStream<TcpStream>,
    limit: Duration,
    max_pdu: u32,
) -> Result<u8, PduError> {
    let first = tokio::time::timeout(limit, conn.first_byte())
        .await
        .map_err(|_| timed_out(format!("no PDU within {} s", limit.as_secs_f32())))??;
    read_rest_with_timeout(conn, first, limit, max_pdu).await
}

/// Reads the rest of a PDU begun with `first`, within `limit` (so a PDU
/// trickling in is bounded by the read timeout, also when it starts an idle
/// association's next message).
async fn read_rest_with_timeout(
    conn: &mut PduStream<TcpStream>,
    first: u8,
    limit: Duration,
    max_pdu: u32,
) -> Result<u8, PduError> {
    tokio::time::timeout(limit, conn.rest_of_pdu(first, max_pdu))
        .await
        .map_err(|_| timed_out(format!("PDU not complete within {} s", limit.as_secs_f32())))?
}

fn timed_out(message: String) -> PduError {
    PduError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, message))
}

#[derive(Debug, Clone)]
struct NegotiatedContext {
    id: u8,
    abstract_syntax: String,
    transfer_syntax: String,
    accepted: bool,
}

/// An A-ASSOCIATE-RJ, and why, for the log and the counters.
struct Refusal {
    rj: AssociationRJ,
    why: String,
}

fn reject(
    result: AssociationRJResult,
    source: AssociationRJSource,
    why: impl Into<String>,
) -> Refusal {
    Refusal {
        rj: AssociationRJ { result, source },
        why: why.into(),
    }
}

fn negotiate(
    config: &ScpConfig,
    rq: &AssociationRQ,
    peer_ip: IpAddr,
) -> Result<(AssociationAC, Vec<NegotiatedContext>, u32), Refusal> {
    use AssociationRJResult::Permanent;
    if rq.protocol_version & 1 == 0 {
        return Err(reject(
            Permanent,
            AssociationRJSource::ServiceProviderASCE(
                AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported,
            ),
            format!(
                "protocol version {:#06x} not supported",
                rq.protocol_version
            ),
        ));
    }
    if sop::trim_uid(&rq.application_context_name) != sop::APPLICATION_CONTEXT {
        return Err(reject(
            Permanent,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::ApplicationContextNameNotSupported,
            ),
            format!(
                "application context {} not supported",
                sop::trim_uid(&rq.application_context_name)
            ),
        ));
    }
    // PS3.5 6.2 (AE): no control characters nor backslash, and not only
    // spaces. Refused before anything logs them: a title with a line feed
    // would forge log lines.
    for (which, title, reason) in [
        (
            "calling",
            &rq.calling_ae_title,
            AssociationRJServiceUserReason::CallingAETitleNotRecognized,
        ),
        (
            "called",
            &rq.called_ae_title,
            AssociationRJServiceUserReason::CalledAETitleNotRecognized,
        ),
    ] {
        if let Some(problem) = ae_title_problem(title) {
            return Err(reject(
                Permanent,
                AssociationRJSource::ServiceUser(reason),
                format!("{which} AE title {problem}"),
            ));
        }
    }
    if config.require_called_ae && rq.called_ae_title.trim() != config.ae_title {
        return Err(reject(
            Permanent,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CalledAETitleNotRecognized,
            ),
            format!(
                "called AE title `{}` is not this node's",
                rq.called_ae_title.trim()
            ),
        ));
    }
    if !caller_allowed(&config.allowed_callers, rq.calling_ae_title.trim(), peer_ip) {
        let listed = config
            .allowed_callers
            .iter()
            .any(|c| c.ae_title == rq.calling_ae_title.trim());
        return Err(reject(
            Permanent,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CallingAETitleNotRecognized,
            ),
            if listed {
                format!(
                    "calling AE title is in dicom.allowed_callers, but not from {peer_ip}: \
                     its entry names another host"
                )
            } else {
                "calling AE title not in dicom.allowed_callers".to_string()
            },
        ));
    }
    // PS3.8 7.1.1.13 / 9.3.2: at least one presentation context, each with
    // its own (odd) ID. With a repeated ID the A-ASSOCIATE-AC could not say
    // which proposal each result answers, nor P-DATA which one it uses.
    if rq.presentation_contexts.is_empty() {
        return Err(reject(
            Permanent,
            AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::NoReasonGiven),
            "no presentation context proposed",
        ));
    }
    let mut ids: Vec<u8> = rq.presentation_contexts.iter().map(|pc| pc.id).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(reject(
            Permanent,
            AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::NoReasonGiven),
            format!("presentation context ID {} proposed twice", w[0]),
        ));
    }

    let contexts: Vec<NegotiatedContext> = rq
        .presentation_contexts
        .iter()
        .map(|pc| {
            let abstract_syntax = sop::trim_uid(&pc.abstract_syntax).to_string();
            let supported = abstract_supported(config, &abstract_syntax);
            let ts = pc
                .transfer_syntaxes
                .iter()
                .map(|t| sop::trim_uid(t))
                .find(|t| transfer_syntax_acceptable(&abstract_syntax, t));
            NegotiatedContext {
                id: pc.id,
                accepted: supported && ts.is_some(),
                transfer_syntax: ts.unwrap_or(sop::IMPLICIT_VR_LE).to_string(),
                abstract_syntax,
            }
        })
        .collect();

    let results = contexts
        .iter()
        .zip(&rq.presentation_contexts)
        .map(|(c, pc)| {
            let supported_abstract = c.accepted
                || pc
                    .transfer_syntaxes
                    .iter()
                    .all(|t| !transfer_syntax_acceptable(&c.abstract_syntax, sop::trim_uid(t)));
            PresentationContextResult {
                id: c.id,
                reason: if c.accepted {
                    PresentationContextResultReason::Acceptance
                } else if supported_abstract && abstract_supported(config, &c.abstract_syntax) {
                    PresentationContextResultReason::TransferSyntaxesNotSupported
                } else {
                    PresentationContextResultReason::AbstractSyntaxNotSupported
                },
                transfer_syntax: c.transfer_syntax.clone(),
            }
        })
        .collect();

    let peer_max_pdu = pdu::announced_max_length(&rq.user_variables);

    let ac = AssociationAC {
        protocol_version: 1,
        application_context_name: sop::APPLICATION_CONTEXT.to_string(),
        calling_ae_title: rq.calling_ae_title.clone(),
        called_ae_title: rq.called_ae_title.clone(),
        presentation_contexts: results,
        user_variables: vec![
            UserVariableItem::MaxLength(config.max_pdu),
            UserVariableItem::ImplementationClassUID(crate::IMPLEMENTATION_CLASS_UID.to_string()),
            UserVariableItem::ImplementationVersionName(
                crate::IMPLEMENTATION_VERSION_NAME.to_string(),
            ),
        ],
    };
    Ok((ac, contexts, peer_max_pdu))
}

/// SOP classes a peer proposed, for one log field: a UID as it is; any
/// other name quoted and cut to 64 characters (a name with spaces and `=`
/// put fields of the peer's choosing inside the line, and 8,000-character
/// names made 800 KB lines); 16 at most.
fn proposed_classes_for_the_log(classes: &[&str]) -> String {
    const SHOWN: usize = 16;
    let mut shown: Vec<String> = classes
        .iter()
        .take(SHOWN)
        .map(|&class| {
            if class.len() <= 64 && class.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                class.to_string()
            } else {
                format!("{:?}", class.chars().take(64).collect::<String>())
            }
        })
        .collect();
    if classes.len() > SHOWN {
        shown.push(format!("and {} more", classes.len() - SHOWN));
    }
    shown.join(",")
}

/// Storage Commitment's data sets are read and written in memory, in the
/// uncompressed syntaxes; any other class's in any syntax it may be stored in.
fn transfer_syntax_acceptable(abstract_syntax: &str, ts: &str) -> bool {
    if abstract_syntax == commitment::STORAGE_COMMITMENT_PUSH {
        commitment::TRANSFER_SYNTAXES.contains(&ts)
    } else {
        sop::is_storable_transfer_syntax(ts)
    }
}

fn abstract_supported(config: &ScpConfig, uid: &str) -> bool {
    uid == sop::VERIFICATION
        || (config.storage_commitment && uid == commitment::STORAGE_COMMITMENT_PUSH)
        || config.also_accept.iter().any(|c| c == uid)
        || match config.acceptance {
            StorageAcceptance::Chest => sop::CHEST_STORAGE.contains(&uid),
            StorageAcceptance::AllStorage => sop::is_storage_sop_class(uid),
        }
}

/// Why a title is not an AE title (PS3.5 6.2: the default character
/// repertoire, ASCII, without control characters nor backslash, and not
/// only spaces, 16 characters at most: the wire's fixed field makes that
/// limit for a received title, the configuration and the command line must
/// check it); None when it is one.
pub fn ae_title_problem(title: &str) -> Option<&'static str> {
    if title
        .chars()
        .any(|c| !c.is_ascii() || c.is_control() || c == '\\')
    {
        Some("has control characters, a backslash or characters outside ASCII")
    } else if title.trim_matches(' ').is_empty() {
        Some("is blank")
    } else if title.len() > 16 {
        Some("must have 1 to 16 characters")
    } else {
        None
    }
}

fn caller_allowed(allowed: &[AllowedCaller], calling_ae: &str, peer_ip: IpAddr) -> bool {
    if allowed.is_empty() {
        return true;
    }
    allowed
        .iter()
        .filter(|c| c.ae_title == calling_ae)
        .any(|c| c.host.is_none_or(|h| same_host(h, peer_ip)))
}

fn same_host(a: IpAddr, b: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    canon(a) == canon(b)
}

enum MessageState {
    Idle,
    Command {
        context_id: u8,
        bytes: Vec<u8>,
    },
    /// The data set of `command`: spooled, or read and dropped when the
    /// request is already refused.
    Data {
        context_id: u8,
        command: Command,
        sink: Box<Result<Spool, StoreReply>>,
    },
    /// The small data set of a message other than a C-STORE (an N-ACTION
    /// request, an N-EVENT-REPORT response), held in memory; None once it
    /// grew past [`commitment::MAX_REQUEST_BYTES`] (read and dropped).
    InMemory {
        context_id: u8,
        command: Command,
        bytes: Option<Vec<u8>>,
    },
}

enum AssociationEnd {
    Released,
    AbortedByPeer,
    Closed,
    /// Aborted between messages because the node is shutting down.
    ShuttingDown,
    Error(String),
}

/// Commands are a few hundred bytes; this bounds a misbehaving peer.
const MAX_COMMAND_BYTES: usize = 64 * 1024;

struct Association<'a, H> {
    conn: PduStream<TcpStream>,
    shared: &'a Shared<H>,
    context: Arc<AssociationContext>,
    contexts: Vec<NegotiatedContext>,
    /// The peer's Maximum Length Received: our responses are split to it.
    peer_max_pdu: u32,
    state: MessageState,
    stored: u64,
    message_pace: MessagePace,
    /// Message ID of the next request this node sends on the association.
    next_message_id: u16,
    /// The N-EVENT-REPORT-RQs sent and not answered yet: their Message ID
    /// and transaction.
    awaiting_event_report: Vec<(u16, String)>,
}

/// How long the message in progress has waited for its PDUs, and how many
/// bytes they brought: the node's own time (spooling, storing) is not the
/// peer's.
#[derive(Default)]
struct MessagePace {
    waited: Duration,
    bytes: u64,
}

impl MessagePace {
    /// The wait the message may still spend on its next PDU; `None` when
    /// the rate is not bounded.
    fn wait_left(&self, config: &ScpConfig) -> Option<Duration> {
        if config.min_receive_rate == 0 {
            return None;
        }
        let allowed = config.read_timeout
            + Duration::from_secs_f64(self.bytes as f64 / config.min_receive_rate as f64);
        Some(allowed.saturating_sub(self.waited))
    }

    fn too_slow(&self, config: &ScpConfig) -> PduError {
        timed_out(format!(
            "message arriving slower than {} KiB/s ({} bytes in {:.0} s of waiting)",
            config.min_receive_rate as f64 / 1024.0,
            self.bytes,
            self.waited.as_secs_f64()
        ))
    }
}

impl<H: StoreHandler> Association<'_, H> {
    async fn run(&mut self) -> AssociationEnd {
        let config = &self.shared.config;
        loop {
            let next = if matches!(self.state, MessageState::Idle) {
                // Between messages: a shutdown ends the association here,
                // before the next PDU has begun.
                let mut draining = self.shared.draining.subscribe();
                let first = tokio::select! {
                    r = tokio::time::timeout(config.idle_timeout, self.conn.first_byte()) => Some(r),
                    _ = draining.wait_for(|d| *d) => None,
                };
                match first {
                    None => None,
                    Some(Err(_)) => Some(Err(timed_out(format!(
                        "idle for {} s",
                        config.idle_timeout.as_secs_f32()
                    )))),
                    Some(Ok(Err(e))) => Some(Err(e)),
                    Some(Ok(Ok(first))) => Some(
                        read_rest_with_timeout(
                            &mut self.conn,
                            first,
                            config.read_timeout,
                            config.max_pdu,
                        )
                        .await,
                    ),
                }
            } else {
                let began = Instant::now();
                let left = self.message_pace.wait_left(config);
                let read = read_with_timeout(&mut self.conn, config.read_timeout, config.max_pdu);
                // None: the message's time ran out (said once this wait is
                // counted, so that the log's figures are the real ones)
                let next = match left {
                    None => Some(read.await),
                    Some(left) => tokio::time::timeout(left, read).await.ok(),
                };
                self.message_pace.waited += began.elapsed();
                Some(next.unwrap_or_else(|| Err(self.message_pace.too_slow(config))))
            };
            let Some(next) = next else {
                self.conn
                    .abort(AbortRQServiceProviderReason::ReasonNotSpecified)
                    .await;
                return AssociationEnd::ShuttingDown;
            };
            let pdu_type = match next {
                Ok(t) => t,
                Err(PduError::Closed) => return AssociationEnd::Closed,
                Err(e) => {
                    let reason = e
                        .abort_reason()
                        .unwrap_or(AbortRQServiceProviderReason::ReasonNotSpecified);
                    self.conn.abort(reason).await;
                    return AssociationEnd::Error(e.to_string());
                }
            };
            match pdu_type {
                pdu::TYPE_P_DATA_TF => {
                    self.message_pace.bytes += self.conn.body().len() as u64;
                    if let Err(e) = self.on_pdata().await {
                        self.conn
                            .abort(AbortRQServiceProviderReason::UnexpectedPduParameter)
                            .await;
                        return AssociationEnd::Error(e);
                    }
                    if matches!(self.state, MessageState::Idle) {
                        self.message_pace = MessagePace::default();
                    }
                }
                pdu::TYPE_RELEASE_RQ => {
                    if !matches!(self.state, MessageState::Idle) {
                        warn!("release requested in the middle of a message; partial data dropped");
                    }
                    let _ = self.conn.send(&Pdu::ReleaseRP).await;
                    self.conn.close_after(pdu::ARTIM).await;
                    return AssociationEnd::Released;
                }
                pdu::TYPE_ABORT => return AssociationEnd::AbortedByPeer,
                other => {
                    self.conn
                        .abort(AbortRQServiceProviderReason::UnexpectedPdu)
                        .await;
                    return AssociationEnd::Error(format!("unexpected PDU type {other:#04x}"));
                }
            }
        }
    }

    fn context(&self, id: u8) -> Result<&NegotiatedContext, String> {
        self.contexts
            .iter()
            .find(|c| c.id == id && c.accepted)
            .ok_or_else(|| format!("PDV on presentation context {id}, which was not accepted"))
    }

    /// Handles every PDV of the P-DATA-TF PDU just read.
    async fn on_pdata(&mut self) -> Result<(), String> {
        // The PDVs borrow the receive buffer; take it for the duration.
        let body = self.conn.take_body();
        let result = self.on_pdvs(&body).await;
        self.conn.put_body(body);
        result
    }

    async fn on_pdvs(&mut self, body: &[u8]) -> Result<(), String> {
        let pdvs = pdu::split_pdvs(body).map_err(|e| e.to_string())?;
        for pdv in pdvs {
            self.context(pdv.context_id)?;
            let state = std::mem::replace(&mut self.state, MessageState::Idle);
            self.state = match (state, pdv.is_command) {
                (MessageState::Idle, true) => {
                    self.command_fragment(pdv.context_id, Vec::new(), pdv.data, pdv.is_last)
                        .await?
                }
                (MessageState::Command { context_id, bytes }, true)
                    if context_id == pdv.context_id =>
                {
                    self.command_fragment(context_id, bytes, pdv.data, pdv.is_last)
                        .await?
                }
                (
                    MessageState::Data {
                        context_id,
                        command,
                        mut sink,
                    },
                    false,
                ) if context_id == pdv.context_id => {
                    if let Ok(spool) = sink.as_mut() {
                        let before = spool.dataset_len;
                        let refusal = match spool.write(pdv.data).await {
                            Err(e) => Some(format!("cannot spool data set: {e}")),
                            Ok(())
                                if before / ROOM_CHECK_BYTES
                                    != spool.dataset_len / ROOM_CHECK_BYTES =>
                            {
                                self.shared
                                    .handler
                                    .room_while_receiving(spool.dataset_len)
                                    .err()
                            }
                            Ok(()) => None,
                        };
                        if let Some(reason) = refusal {
                            warn!(%reason, "spooling stopped; the instance will be refused");
                            *sink = Err(StoreReply::failure(Status::OUT_OF_RESOURCES, reason));
                        }
                    }
                    if pdv.is_last {
                        self.finish_store(context_id, command, *sink).await?;
                        MessageState::Idle
                    } else {
                        MessageState::Data {
                            context_id,
                            command,
                            sink,
                        }
                    }
                }
                (
                    MessageState::InMemory {
                        context_id,
                        command,
                        mut bytes,
                    },
                    false,
                ) if context_id == pdv.context_id => {
                    if let Some(held) = bytes.as_mut() {
                        if held.len() + pdv.data.len() > commitment::MAX_REQUEST_BYTES {
                            bytes = None;
                        } else {
                            held.extend_from_slice(pdv.data);
                        }
                    }
                    if pdv.is_last {
                        self.finish_in_memory(context_id, command, bytes).await?;
                        MessageState::Idle
                    } else {
                        MessageState::InMemory {
                            context_id,
                            command,
                            bytes,
                        }
                    }
                }
                (state, is_command) => {
                    // Kept, so that a C-STORE this cuts off is named.
                    self.state = state;
                    return Err(format!(
                        "unexpected {} fragment on context {}",
                        if is_command { "command" } else { "data" },
                        pdv.context_id
                    ));
                }
            };
        }
        Ok(())
    }

    async fn command_fragment(
        &mut self,
        context_id: u8,
        mut bytes: Vec<u8>,
        data: &[u8],
        is_last: bool,
    ) -> Result<MessageState, String> {
        if bytes.len() + data.len() > MAX_COMMAND_BYTES {
            return Err("command set larger than 64 KiB".into());
        }
        bytes.extend_from_slice(data);
        if !is_last {
            return Ok(MessageState::Command { context_id, bytes });
        }
        let command = Command::decode(&bytes).map_err(|e| format!("undecodable command: {e}"))?;
        self.on_command(context_id, command).await
    }

    async fn on_command(
        &mut self,
        context_id: u8,
        command: Command,
    ) -> Result<MessageState, String> {
        if command.command_field == field::C_CANCEL_RQ {
            if command.has_data_set() {
                return Err("C-CANCEL with a data set".into());
            }
            // No response is defined (PS3.7 9.3.2.3): nothing this node runs
            // can be cancelled, so there is nothing to do.
            debug!(message_id = ?command.message_id_being_responded_to, "C-CANCEL ignored");
            return Ok(MessageState::Idle);
        }
        if command.command_field == field::N_EVENT_REPORT_RSP
            && self
                .awaiting_event_report
                .iter()
                .any(|(id, _)| command.message_id_being_responded_to == Some(*id))
        {
            if command.has_data_set() {
                // an Event Reply, read and dropped
                return Ok(MessageState::InMemory {
                    context_id,
                    command,
                    bytes: None,
                });
            }
            self.event_report_answered(&command);
            return Ok(MessageState::Idle);
        }
        if command.command_field == field::N_EVENT_REPORT_RSP {
            return Err(format!(
                "an N-EVENT-REPORT-RSP for Message ID {}, which no N-EVENT-REPORT sent on this \
                 association waits for",
                command
                    .message_id_being_responded_to
                    .map_or("(none)".to_string(), |id| id.to_string())
            ));
        }
        if !field::is_request(command.command_field) {
            // A response, or no DIMSE command at all: there is no response
            // to give it, so the association cannot go on.
            return Err(format!(
                "command field {:#06x} is not a request this node can answer",
                command.command_field
            ));
        }
        if command.message_id.is_none() {
            return Err("request without a Message ID (its response could not name it)".into());
        }
        match command.command_field {
            // (One with a data set is read and refused below.)
            field::C_ECHO_RQ if !command.has_data_set() => {
                debug!(message_id = ?command.message_id, "C-ECHO");
                let class = command.affected_sop_class_uid.as_deref().map(sop::trim_uid);
                let reply = match class {
                    Some(class) if class != sop::VERIFICATION => StoreReply::failure(
                        Status::SOP_CLASS_NOT_SUPPORTED,
                        "a C-ECHO is of the Verification SOP class",
                    ),
                    _ => StoreReply::success(),
                };
                self.respond(context_id, &command, reply).await?;
                Ok(MessageState::Idle)
            }
            field::C_STORE_RQ if command.has_data_set() => {
                let sink = Box::new(self.open_spool(context_id, &command).await);
                Ok(MessageState::Data {
                    context_id,
                    command,
                    sink,
                })
            }
            field::N_ACTION_RQ if command.has_data_set() => Ok(MessageState::InMemory {
                context_id,
                command,
                bytes: Some(Vec::new()),
            }),
            field::N_ACTION_RQ => {
                let reply = (
                    commitment::refusal::INVALID_ARGUMENT_VALUE,
                    "N-ACTION without its data set (Action Information)".to_string(),
                );
                self.refuse_action(context_id, &command, reply).await?;
                Ok(MessageState::Idle)
            }
            _ if command.has_data_set() => {
                // An operation we do not serve: read its data, then refuse it.
                let sink = Box::new(Err(StoreReply::failure(
                    Status::UNRECOGNIZED_OPERATION,
                    "operation not supported",
                )));
                Ok(MessageState::Data {
                    context_id,
                    command,
                    sink,
                })
            }
            _ => {
                let reply = if command.command_field == field::C_STORE_RQ {
                    let reply = StoreReply::failure(
                        Status::CANNOT_UNDERSTAND,
                        "C-STORE without a data set",
                    );
                    self.refused_before_the_handler(&command, &reply);
                    reply
                } else {
                    warn!(
                        command_field = format_args!("{:#06x}", command.command_field),
                        "operation not supported"
                    );
                    StoreReply::failure(Status::UNRECOGNIZED_OPERATION, "operation not supported")
                };
                self.respond(context_id, &command, reply).await?;
                Ok(MessageState::Idle)
            }
        }
    }

    /// Checks a C-STORE request and opens its spool file, or says why not.
    async fn open_spool(&self, context_id: u8, command: &Command) -> Result<Spool, StoreReply> {
        let context = self
            .context(context_id)
            .map_err(|e| StoreReply::failure(Status::CANNOT_UNDERSTAND, e))?;
        let sop_class = match command.affected_sop_class_uid.as_deref() {
            Some(uid) if !uid.is_empty() => uid,
            _ => {
                return Err(StoreReply::failure(
                    Status::CANNOT_UNDERSTAND,
                    "no Affected SOP Class UID",
                ))
            }
        };
        if sop_class != context.abstract_syntax {
            return Err(StoreReply::failure(
                Status::SOP_CLASS_NOT_SUPPORTED,
                "SOP class differs from the presentation context's",
            ));
        }
        let sop_instance = match command.affected_sop_instance_uid.as_deref() {
            Some(uid) if !uid.is_empty() => uid,
            _ => {
                return Err(StoreReply::failure(
                    Status::CANNOT_UNDERSTAND,
                    "no Affected SOP Instance UID",
                ))
            }
        };
        self.shared.handler.admit(&self.context, sop_class)?;
        Spool::create(
            &self.shared.config.spool_dir,
            self.context.id,
            sop_class,
            sop_instance,
            &context.transfer_syntax,
            &self.context.calling_ae,
        )
        .await
        .map_err(|e| {
            warn!(error = %e, "cannot open spool file");
            StoreReply::failure(
                Status::OUT_OF_RESOURCES,
                format!("cannot spool data set: {e}"),
            )
        })
    }

    /// Logs and counts a C-STORE refused before it reached the handler
    /// (spooling failed, a request it did not admit, no data set): the
    /// handler logs and counts what it refuses itself.
    fn refused_before_the_handler(&self, command: &Command, reply: &StoreReply) {
        warn!(
            sop_instance_uid = command.affected_sop_instance_uid.as_deref().unwrap_or(""),
            status = %reply.status,
            error = reply.comment.as_deref().unwrap_or(""),
            "instance refused"
        );
        self.shared.handler.instance_refused(reply);
    }

    /// The last data fragment arrived: hand the instance over and answer.
    async fn finish_store(
        &mut self,
        context_id: u8,
        command: Command,
        sink: Result<Spool, StoreReply>,
    ) -> Result<(), String> {
        let mut refused_here = true;
        let reply = match sink {
            Err(reply) => reply,
            Ok(spool) => match spool.finish().await {
                Err(e) => StoreReply::failure(
                    Status::OUT_OF_RESOURCES,
                    format!("cannot spool data set: {e}"),
                ),
                Ok((finished, _guard)) => {
                    let instance = ReceivedInstance {
                        context: self.context.clone(),
                        sop_class_uid: command.affected_sop_class_uid.clone().unwrap_or_default(),
                        sop_instance_uid: command
                            .affected_sop_instance_uid
                            .clone()
                            .unwrap_or_default(),
                        transfer_syntax: self.context(context_id)?.transfer_syntax.clone(),
                        path: finished.path,
                        dataset_offset: finished.dataset_offset,
                        dataset_len: finished.dataset_len,
                        dataset_sha256: finished.sha256,
                    };
                    // `_guard` removes the spool file unless the handler moved it.
                    refused_here = false;
                    self.shared.handler.store(instance).await
                }
            },
        };
        if command.command_field != field::C_STORE_RQ {
            warn!(
                command_field = format_args!("{:#06x}", command.command_field),
                "operation not supported; its data set was dropped"
            );
        } else if refused_here && reply.status.is_failure() {
            self.refused_before_the_handler(&command, &reply);
        }
        if !reply.status.is_failure() {
            self.stored += 1;
        }
        debug!(
            sop_instance_uid = command.affected_sop_instance_uid.as_deref().unwrap_or(""),
            command_field = format_args!("{:#06x}", command.command_field),
            status = %reply.status,
            "request answered"
        );
        self.respond(context_id, &command, reply).await
    }

    /// The end of a message held in memory: an N-ACTION request, or an
    /// N-EVENT-REPORT response with its Event Reply (dropped).
    async fn finish_in_memory(
        &mut self,
        context_id: u8,
        command: Command,
        bytes: Option<Vec<u8>>,
    ) -> Result<(), String> {
        if command.command_field == field::N_EVENT_REPORT_RSP {
            self.event_report_answered(&command);
            return Ok(());
        }
        let Some(bytes) = bytes else {
            let why = format!(
                "Action Information larger than {} MiB",
                commitment::MAX_REQUEST_BYTES >> 20
            );
            return self
                .refuse_action(context_id, &command, (Status(0x0213), why))
                .await;
        };
        self.storage_commitment(context_id, &command, &bytes).await
    }

    /// A Storage Commitment request (PS3.4 J.3.2): answered N-ACTION-RSP,
    /// then, as every instance it names was kept before its C-STORE was
    /// acknowledged, its result at once in an N-EVENT-REPORT on this
    /// association, or, for a requester set to take it on its own, handed
    /// to the handler to send (before the N-ACTION-RSP says it will come).
    async fn storage_commitment(
        &mut self,
        context_id: u8,
        command: &Command,
        bytes: &[u8],
    ) -> Result<(), String> {
        use commitment::{refusal, STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH};
        let negotiated = self.context(context_id)?;
        let (abstract_syntax, ts) = (
            negotiated.abstract_syntax.clone(),
            negotiated.transfer_syntax.clone(),
        );
        let class = command
            .requested_sop_class_uid
            .as_deref()
            .map(sop::trim_uid);
        let instance = command
            .requested_sop_instance_uid
            .as_deref()
            .map(sop::trim_uid);
        let refused = if abstract_syntax != STORAGE_COMMITMENT_PUSH
            || class != Some(STORAGE_COMMITMENT_PUSH)
        {
            Some((
                refusal::NO_SUCH_SOP_CLASS,
                "N-ACTION is served for Storage Commitment only, on its context".to_string(),
            ))
        } else if instance != Some(STORAGE_COMMITMENT_INSTANCE) {
            Some((
                refusal::INVALID_OBJECT_INSTANCE,
                format!("Requested SOP Instance must be {STORAGE_COMMITMENT_INSTANCE}"),
            ))
        } else if command.action_type_id != Some(commitment::REQUEST_STORAGE_COMMITMENT) {
            Some((
                refusal::NO_SUCH_ACTION,
                "Action Type ID must be 1 (request storage commitment)".to_string(),
            ))
        } else {
            None
        };
        if let Some(refusal) = refused {
            return self.refuse_action(context_id, command, refusal).await;
        }
        // Walked before it is parsed, as a C-STORE's data set is: nesting
        // thousands deep overflowed the parser's stack (the process died).
        if let Err(why) = self.shared.handler.check_data_set(bytes, &ts) {
            return self
                .refuse_action(context_id, command, (refusal::INVALID_ARGUMENT_VALUE, why))
                .await;
        }
        let request = match commitment::read_request(bytes, &ts) {
            Ok(request) => request,
            Err(refusal) => return self.refuse_action(context_id, command, refusal).await,
        };
        // Items whose UIDs can be none fail alone; the handler is asked of
        // the others.
        let named: Vec<CommitmentItem> = request
            .items
            .iter()
            .filter(|i| i.names_uids())
            .cloned()
            .collect();
        let mut answers = self
            .shared
            .handler
            .commit(&self.context, &named)
            .await
            .into_iter();
        let outcomes: Vec<Option<u16>> = request
            .items
            .iter()
            .map(|item| {
                if item.names_uids() {
                    answers
                        .next()
                        .unwrap_or(Some(commitment::failure::PROCESSING_FAILURE))
                } else {
                    Some(commitment::failure::NO_SUCH_OBJECT_INSTANCE)
                }
            })
            .collect();
        let committed = outcomes.iter().filter(|o| o.is_none()).count();
        info!(
            transaction_uid = %request.transaction_uid,
            instances = request.items.len(),
            committed,
            failed = request.items.len() - committed,
            "storage commitment"
        );
        // Written once, in Explicit VR Little Endian (how a result sent
        // apart is kept), and re-encoded for this association if need be.
        let written = commitment::event_report(
            &request,
            &outcomes,
            &self.shared.config.ae_title,
            sop::EXPLICIT_VR_LE,
        );
        let (event_type, data) = match written {
            Ok(written) => written,
            Err(e) => {
                let failed = (
                    Status::PROCESSING_FAILURE,
                    format!("cannot write the result: {e}"),
                );
                return self.refuse_action(context_id, command, failed).await;
            }
        };
        let apart = self
            .shared
            .handler
            .send_result_apart(&self.context, &request.transaction_uid, event_type, &data)
            .await;
        match apart {
            Ok(apart) => {
                let rsp = Command::n_action_rsp(command, Status::SUCCESS, None);
                self.send_response(context_id, &rsp).await?;
                if apart {
                    return Ok(());
                }
            }
            Err(why) => {
                let failed = (Status::PROCESSING_FAILURE, why);
                return self.refuse_action(context_id, command, failed).await;
            }
        }
        let data = if ts == sop::EXPLICIT_VR_LE {
            data
        } else {
            commitment::reencode(&data, &ts)
                .map_err(|e| format!("cannot write the storage commitment result: {e}"))?
        };
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.checked_add(1).unwrap_or(1);
        let rq = Command::n_event_report_rq(
            id,
            STORAGE_COMMITMENT_PUSH,
            STORAGE_COMMITMENT_INSTANCE,
            event_type,
        );
        let mut pdus = pdu::command_pdus(context_id, &rq.encode(), self.peer_max_pdu);
        pdus.extend(pdu::data_set_pdus(context_id, &data, self.peer_max_pdu));
        self.conn
            .send_raw(&pdus)
            .await
            .map_err(|e| format!("cannot send the storage commitment result: {e}"))?;
        self.awaiting_event_report
            .push((id, request.transaction_uid));
        Ok(())
    }

    /// Answers an N-ACTION that cannot be taken with `status`, and why.
    async fn refuse_action(
        &mut self,
        context_id: u8,
        command: &Command,
        (status, why): (Status, String),
    ) -> Result<(), String> {
        warn!(%status, reason = %why, "storage commitment request refused");
        let rsp = Command::n_action_rsp(command, status, Some(&why));
        self.send_response(context_id, &rsp).await
    }

    /// The requester's N-EVENT-REPORT-RSP to a commitment result.
    fn event_report_answered(&mut self, rsp: &Command) {
        let Some(at) = self
            .awaiting_event_report
            .iter()
            .position(|(id, _)| rsp.message_id_being_responded_to == Some(*id))
        else {
            return;
        };
        let (_, transaction_uid) = self.awaiting_event_report.remove(at);
        match rsp.status {
            Some(status) if status.is_success() || status.is_warning() => {
                info!(%transaction_uid, %status, "storage commitment result delivered")
            }
            status => warn!(
                %transaction_uid,
                status = %status.map(|s| s.to_string()).unwrap_or_else(|| "none".into()),
                "storage commitment result not taken by the requester"
            ),
        }
    }

    /// Said when the association ends with commitment results sent and not
    /// answered: the requester may not have them (a modality may ask again
    /// after its own time-out; Orthanc does not).
    fn results_unconfirmed(&self, how: &str) {
        for (_, transaction_uid) in &self.awaiting_event_report {
            warn!(%transaction_uid, how,
                "storage commitment result sent, not answered before the association ended");
        }
    }

    async fn respond(
        &mut self,
        context_id: u8,
        request: &Command,
        reply: StoreReply,
    ) -> Result<(), String> {
        let rsp = Command::response_to(request, reply.status, reply.comment.as_deref());
        self.send_response(context_id, &rsp).await
    }

    /// Sends a response command set on context `context_id`, split to the
    /// peer's Maximum Length Received.
    async fn send_response(&mut self, context_id: u8, rsp: &Command) -> Result<(), String> {
        self.conn
            .send_raw(&pdu::command_pdus(
                context_id,
                &rsp.encode(),
                self.peer_max_pdu,
            ))
            .await
            .map_err(|e| format!("cannot send response: {e}"))
    }
}

/// A data set being written to its spool file.
///
/// Writes are plain blocking writes to the page cache (well under a
/// millisecond per MiB) made with `block_in_place`; after each MiB the kernel
/// is asked to start writing it back (`sync_file_range`), so that the disk
/// works while the network delivers and the final fsync has little left to do.
struct Spool {
    file: std::fs::File,
    buf: Vec<u8>,
    guard: SpoolGuard,
    hasher: Sha256,
    dataset_offset: u64,
    dataset_len: u64,
    /// Bytes handed to the kernel, and those already sent to writeback.
    written: u64,
    writeback_from: u64,
}

struct FinishedSpool {
    path: PathBuf,
    dataset_offset: u64,
    dataset_len: u64,
    sha256: [u8; 32],
}

/// Removes a spool file when dropped, whatever happened (abort, error, or
/// the handler having kept a copy); a file the handler renamed is gone already.
struct SpoolGuard(PathBuf);

impl Drop for SpoolGuard {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %self.0.display(), error = %e, "cannot remove spool file"),
        }
    }
}

static SPOOL_SEQ: AtomicU64 = AtomicU64::new(0);

/// How often, in data set bytes received, a transfer asks the handler
/// whether there is still room ([`StoreHandler::room_while_receiving`]).
pub const ROOM_CHECK_BYTES: u64 = 4 << 20;

/// Data is written (and sent to writeback) in chunks of this size.
const SPOOL_CHUNK: usize = 1 << 20;

impl Spool {
    async fn create(
        dir: &Path,
        association: u64,
        sop_class: &str,
        sop_instance: &str,
        transfer_syntax: &str,
        calling_ae: &str,
    ) -> std::io::Result<Spool> {
        let seq = SPOOL_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{association}-{seq}.part", std::process::id()));
        let header = part10_header(sop_class, sop_instance, transfer_syntax, calling_ae)?;
        let guard = SpoolGuard(path.clone());
        let file = tokio::task::block_in_place(|| {
            match std::fs::File::create(&path) {
                // The spool directory removed under the running node (a
                // clean-up script): made again, not every store refused.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(dir)?;
                    std::fs::File::create(&path)
                }
                other => other,
            }
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        })?;
        let mut buf = Vec::with_capacity(SPOOL_CHUNK);
        buf.extend_from_slice(&header);
        Ok(Spool {
            file,
            buf,
            guard,
            hasher: Sha256::new(),
            dataset_offset: header.len() as u64,
            dataset_len: 0,
            written: 0,
            writeback_from: 0,
        })
    }

    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.hasher.update(data);
        self.dataset_len += data.len() as u64;
        if self.buf.is_empty() && data.len() >= SPOOL_CHUNK {
            return self.write_through(data);
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= SPOOL_CHUNK {
            self.drain()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> std::io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let result = self.write_through(&buf);
        self.buf = buf;
        self.buf.clear();
        result
    }

    fn write_through(&mut self, data: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        tokio::task::block_in_place(|| self.file.write_all(data))?;
        self.written += data.len() as u64;
        if self.written - self.writeback_from >= SPOOL_CHUNK as u64 {
            start_writeback(
                &self.file,
                self.writeback_from,
                self.written - self.writeback_from,
            );
            self.writeback_from = self.written;
        }
        Ok(())
    }

    async fn finish(mut self) -> std::io::Result<(FinishedSpool, SpoolGuard)> {
        if !self.buf.is_empty() {
            self.drain()?;
        }
        start_writeback(
            &self.file,
            self.writeback_from,
            self.written - self.writeback_from,
        );
        Ok((
            FinishedSpool {
                path: self.guard.0.clone(),
                dataset_offset: self.dataset_offset,
                dataset_len: self.dataset_len,
                sha256: self.hasher.finalize().into(),
            },
            self.guard,
        ))
    }
}

/// Asks the kernel to start writing a range of the file back, without
/// waiting: the later fsync, which does wait, then finds it mostly done.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; sync_file_range reads no memory of ours.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}

/// Preamble, `DICM` and the File Meta Information group for a received
/// instance (its transfer syntax is the negotiated one).
pub fn part10_header(
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
    source_ae: &str,
) -> std::io::Result<Vec<u8>> {
    let mut builder = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(crate::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(crate::IMPLEMENTATION_VERSION_NAME);
    if !source_ae.is_empty() {
        builder = builder.source_application_entity_title(source_ae);
    }
    let meta = builder
        .build()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(ae: &str, host: Option<&str>) -> AllowedCaller {
        AllowedCaller {
            ae_title: ae.into(),
            host: host.map(|h| h.parse().unwrap()),
        }
    }

    #[test]
    fn allow_list_checks_title_and_host() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.7".parse().unwrap();
        assert!(caller_allowed(&[], "ANY", other));
        let list = [caller("MODALITY", Some("127.0.0.1")), caller("PACS", None)];
        assert!(caller_allowed(&list, "MODALITY", local));
        assert!(caller_allowed(&list, "MODALITY", mapped));
        assert!(!caller_allowed(&list, "MODALITY", other));
        assert!(caller_allowed(&list, "PACS", other));
        assert!(!caller_allowed(&list, "STRANGER", local));
    }

    #[test]
    fn part10_header_reads_back() {
        let header = part10_header(
            "1.2.840.10008.5.1.4.1.1.1",
            "1.2.3.4",
            sop::EXPLICIT_VR_LE,
            "MOD",
        )
        .unwrap();
        assert_eq!(&header[128..132], b"DICM");
        let meta = dicom_object::meta::FileMetaTable::from_reader(&header[128..]).unwrap();
        assert_eq!(meta.transfer_syntax(), sop::EXPLICIT_VR_LE);
        assert_eq!(meta.media_storage_sop_instance_uid(), "1.2.3.4");
        assert_eq!(meta.source_application_entity_title(), Some("MOD"));
    }
}
