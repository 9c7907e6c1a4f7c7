//! DICOM associations for pneumo-node: C-ECHO and C-STORE, as SCP and as SCU,
//! and Storage Commitment (push model) as SCP.
//!
//! The PDU codec and types come from dicom-ul 0.10; the upper-layer state
//! machine, the DIMSE command sets and the streaming of data sets to disk are
//! ours (dicom-ul has no DIMSE layer, and its association type neither lets us
//! reject on an association limit or a peer address nor stream P-DATA to disk).
//! This crate knows nothing of jobs or models: received instances go to a
//! [`StoreHandler`].

pub mod command;
pub mod commitment;
pub mod pdu;
pub mod scp;
pub mod scu;
pub mod sop;
pub mod status;

pub use scp::{
    ae_title_problem, AllowedCaller, AssociationContext, ReceivedInstance, ScpConfig, ScpError,
    ScpServer, StorageAcceptance, StoreHandler, StoreReply,
};
pub use scu::{
    AeAddress, ClientAssociation, EchoOutcome, FileToSend, ScuError, ScuOptions, SendAs,
    StoreOutcome,
};
pub use status::Status;

/// Our implementation class UID (a UUID-derived `2.25.` UID, fixed for this
/// software): the one pneumo-report writes in the files it makes
/// (`uid::implementation_class_uid`; the node's tests check they agree).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.334948818217358494504281837186560050096";
/// Our implementation version name (at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("PNEUMO_", env!("CARGO_PKG_VERSION"));
