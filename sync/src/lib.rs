//! bdr-sync: cuts, chunks, wire frames, shipping and the replica's atomic commit.
//!
//! The primary freezes a *cut* (a consistent image of the device and the set of regions
//! written since the previous committed cut) and ships it with [`ship::PrimaryConn`]; the
//! replica receives it with [`replica::serve`] / [`replica::ReplicaSession`] into a redo
//! journal and commits it atomically with [`replica::ReplicaStore`], so a crash at any
//! instant leaves the replica at cut N-1 or cut N, never between.
//!
//! * [`frame`] — the wire frames and their framed async I/O (`docs/protocol.md`);
//! * [`chunk`] — a chunk per region: planning, blake3, zstd, capped decompression;
//! * [`ship`] — the primary's side: ship a cut, rescan, verify;
//! * [`replica`] — the replica's store, journal, session state machine and server
//!   (`docs/replica-journal.md`).
//!
//! Nothing here knows the command line or device-mapper.

pub mod chunk;
pub mod frame;
pub mod replica;
pub mod ship;

pub use bdr_bitmap::Geometry;
pub use frame::{CutKind, ErrorCode, Frame, FrameError, FrameReader, FrameWriter, PROTO_VERSION};
pub use replica::{ReplicaSession, ReplicaStore, ServeOptions, ServeStatus, StoreError};
pub use roaring::RoaringBitmap;
pub use ship::{CutIds, CutImage, PrimaryConn, Progress, ShipError, ShipOptions, ShipStats};
