//! The replica: a target device, a state dir with the state file and the redo journal,
//! the per-connection cut state machine and the TCP server.
//!
//! * [`ReplicaStore`] — the device plus the state dir; commits cuts atomically through
//!   the journal and recovers at open (`docs/replica-journal.md`);
//! * [`ReplicaSession`] — the pure protocol state machine of one primary connection;
//! * [`serve`] — accepts one primary at a time and drives a session per connection.

use std::io;
use std::path::{Path, PathBuf};

use crate::frame::ErrorCode;

mod journal;
mod kcopy;
mod serve;
mod session;
mod state;
mod store;

pub use serve::{serve, ErrorRecord, ServeOptions, ServeStatus, StatusHandle};
pub use session::{ReplicaSession, SessionError};
pub use state::{volume_hex, ReplicaState};
pub use store::{
    CommitReport, CutHeader, RecoveryReport, ReplicaStore, StepHook, RETRY_FIRST, RETRY_MAX,
};

/// The steps of a commit, in order, for crash-point injection in tests: "the process died
/// right after this step". `JournalAppend(k)` and `DeviceWrite(k)` count chunks from 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum CommitStep {
    /// After the `k`-th chunk record was appended to the journal (not yet synced).
    JournalAppend(u64),
    /// After the journal's chunk records were fsynced.
    JournalSynced,
    /// After the commit record was written and fsynced: the cut is now durable.
    CommitRecord,
    /// After the `k`-th chunk was written to the device (not yet synced).
    DeviceWrite(u64),
    /// After the device was fdatasynced.
    DeviceSynced,
    /// After the state file was replaced (the cut is the committed one).
    StateUpdated,
    /// After the journal was removed.
    JournalRemoved,
}

impl CommitStep {
    /// Every step of the commit of a cut of `chunks` chunks, in order.
    pub fn all(chunks: u64) -> Vec<CommitStep> {
        let mut v: Vec<_> = (0..chunks).map(CommitStep::JournalAppend).collect();
        v.push(CommitStep::JournalSynced);
        v.push(CommitStep::CommitRecord);
        v.extend((0..chunks).map(CommitStep::DeviceWrite));
        v.extend([
            CommitStep::DeviceSynced,
            CommitStep::StateUpdated,
            CommitStep::JournalRemoved,
        ]);
        v
    }

    /// Every step of the commit of the first cut of a new replica (a seed, written
    /// straight to the device without a journal), in order.
    pub fn all_seed(chunks: u64) -> Vec<CommitStep> {
        let mut v: Vec<_> = (0..chunks).map(CommitStep::DeviceWrite).collect();
        v.extend([CommitStep::DeviceSynced, CommitStep::StateUpdated]);
        v
    }

    /// Whether the cut survives a crash right after this step.
    pub fn is_durable(&self) -> bool {
        !matches!(
            self,
            CommitStep::JournalAppend(_) | CommitStep::JournalSynced
        )
    }
}

/// Errors of the replica store. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "state dir {} is full: the cut needs {needed} bytes of journal; free space or move --state-dir",
        dir.display()
    )]
    NoSpace { dir: PathBuf, needed: u64 },
    #[error(
        "{} is accessible by group or others (mode {mode:03o}): it must be private; chmod 600 it",
        path.display()
    )]
    Insecure { path: PathBuf, mode: u32 },
    #[error(
        "{} is corrupt: {reason}; restore it, or wipe the state dir to re-seed the replica with a full rescan",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("state dir {} is in use by another bdr replica (lock held)", dir.display())]
    Locked { dir: PathBuf },
    #[error("{0}")]
    Usage(String),
    /// A crash point injected by a test was reached.
    #[error("injected crash after {0:?}")]
    Crashed(CommitStep),
    #[error(
        "the replica store stopped after a failed commit ({0}); it replays its journal again \
         at the primary's next connection; if this persists, check the replica device and \
         state dir, then restart the replica"
    )]
    Dead(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// An I/O error in the state dir: `NoSpace` if the file system is full.
    pub(crate) fn from_io_in_dir(
        context: impl Into<String>,
        dir: &Path,
        needed: u64,
        e: io::Error,
    ) -> StoreError {
        if is_no_space(&e) {
            StoreError::NoSpace {
                dir: dir.to_path_buf(),
                needed,
            }
        } else {
            StoreError::io(context, e)
        }
    }

    /// The [`ErrorCode`] to send to the primary.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NoSpace { .. } => ErrorCode::NoSpace,
            StoreError::Usage(_) => ErrorCode::Protocol,
            _ => ErrorCode::Io,
        }
    }
}

pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}
