//! [`ReplicaSession`]: the replica's side of one primary connection, as a pure state
//! machine over frames. No sockets, no clocks: `serve` and the fuzz target drive it.

use bdr_bitmap::Geometry;
use roaring::RoaringBitmap;

use super::state::volume_hex;
use super::{CutHeader, ReplicaStore, StoreError};
use crate::chunk::{self, ChunkError};
use crate::frame::{
    CutKind, ErrorCode, Frame, MAX_CUT_PASSES, MAX_HASH_BATCH, MAX_REGION_BYTES, PROTO_VERSION,
};

/// Why the session ended. `code` and `message` go to the primary in a [`Frame::Error`].
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SessionError {
    pub code: ErrorCode,
    pub message: String,
}

impl SessionError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> SessionError {
        SessionError {
            code,
            message: message.into(),
        }
    }

    /// The frame that reports this error to the primary.
    pub fn to_frame(&self) -> Frame {
        Frame::error(self.code, self.message.clone())
    }
}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> SessionError {
        SessionError::new(e.code(), e.to_string())
    }
}

fn proto(message: impl Into<String>) -> SessionError {
    SessionError::new(ErrorCode::Protocol, message)
}

/// What the primary announced in its Hello.
#[derive(Clone, Debug)]
struct Peer {
    volume: [u8; 16],
    geometry: Geometry,
}

#[derive(Debug)]
struct Cut {
    cut: u64,
    parent: Option<u64>,
    kind: CutKind,
    /// The regions of the current pass (the first pass: `CutBegin`'s set).
    pass: RoaringBitmap,
    /// Passes so far (1 after `CutBegin`, +1 per `CutPass`).
    passes: u32,
    /// Chunks received in the current pass.
    pass_chunks: u64,
    /// Chunks the cut's passes announced so far (the sum of their set sizes).
    expected: u64,
    /// Chunk records the journal was sized for. The journal is opened at the first Chunk
    /// or CutEnd, once the first pass's region set is complete, and grown at the first
    /// Chunk of each later pass.
    reserved: Option<u64>,
    chunks: u64,
    bytes: u64,
    /// Offset after which the next chunk must start (chunks come in increasing offset
    /// within a pass).
    next_min: u64,
}

#[derive(Debug)]
enum Phase {
    AwaitHello,
    Ready(Peer),
    InCut(Peer, Box<Cut>),
    Failed,
}

/// One primary session on a [`ReplicaStore`]. Feed it every frame received with
/// [`on_frame`](Self::on_frame) and send back the frames it returns. After an error the
/// session is finished (the open cut, if any, is discarded; the committed state is
/// untouched): send the error frame and close the connection.
pub struct ReplicaSession {
    store: ReplicaStore,
    phase: Phase,
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl ReplicaSession {
    pub fn new(store: ReplicaStore) -> ReplicaSession {
        ReplicaSession {
            store,
            phase: Phase::AwaitHello,
            decompressor: zstd::bulk::Decompressor::new().expect("zstd decompression context"),
        }
    }

    pub fn store(&self) -> &ReplicaStore {
        &self.store
    }

    /// Ends the session (discarding an open cut) and gives the store back.
    pub fn into_store(mut self) -> ReplicaStore {
        self.abort();
        self.store
    }

    /// The cut being received, if any.
    pub fn in_cut(&self) -> Option<u64> {
        match &self.phase {
            Phase::InCut(_, c) => Some(c.cut),
            _ => None,
        }
    }

    /// Whether the session ended with an error.
    pub fn failed(&self) -> bool {
        matches!(self.phase, Phase::Failed)
    }

    /// The connection is gone (closed, timed out, dropped): discard the open cut.
    pub fn abort(&mut self) {
        if let Phase::InCut(_, c) = &self.phase {
            tracing::warn!(cut = c.cut, "session aborted mid-cut: cut discarded");
        }
        self.store.abort_cut();
        self.phase = Phase::Failed;
    }

    /// Handles one frame from the primary; returns the frames to send back.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Vec<Frame>, SessionError> {
        let phase = std::mem::replace(&mut self.phase, Phase::Failed);
        match self.step(phase, frame) {
            Ok((phase, out)) => {
                self.phase = phase;
                Ok(out)
            }
            Err(e) => {
                self.store.abort_cut();
                self.phase = Phase::Failed;
                tracing::warn!(code = %e.code, message = %e.message, "replica session failed");
                Err(e)
            }
        }
    }

    fn step(&mut self, phase: Phase, frame: Frame) -> Result<(Phase, Vec<Frame>), SessionError> {
        match (phase, frame) {
            (_, Frame::Error { code, message }) => Err(SessionError::new(
                code,
                format!("the primary gave up: {message}"),
            )),
            (
                Phase::AwaitHello,
                Frame::Hello {
                    proto: p,
                    volume,
                    dev_bytes,
                    region_bytes,
                },
            ) => self.hello(p, volume, dev_bytes, region_bytes),
            (
                Phase::Ready(peer),
                Frame::HashRequest {
                    first_region,
                    count,
                },
            ) => {
                if count > MAX_HASH_BATCH {
                    return Err(proto(format!(
                        "hash request for {count} regions exceeds the limit of {MAX_HASH_BATCH}"
                    )));
                }
                if first_region.saturating_add(count.into()) > peer.geometry.nr_regions {
                    return Err(SessionError::new(
                        ErrorCode::OutOfRange,
                        format!(
                            "hash request for regions {first_region}..{} but the volume has {} regions",
                            first_region.saturating_add(count.into()),
                            peer.geometry.nr_regions
                        ),
                    ));
                }
                let hashes = self
                    .store
                    .hash_regions(&peer.geometry, first_region, count)?;
                Ok((
                    Phase::Ready(peer),
                    vec![Frame::Hashes {
                        first_region,
                        hashes,
                    }],
                ))
            }
            (
                Phase::Ready(peer),
                Frame::CutBegin {
                    cut,
                    parent,
                    kind,
                    regions,
                },
            ) => self.cut_begin(peer, cut, parent, kind, &regions),
            (Phase::InCut(peer, mut c), Frame::CutRegions { regions }) => {
                if c.pass_chunks > 0 {
                    return Err(proto(format!(
                        "CutRegions after the first chunk of pass {} of cut {}",
                        c.passes, c.cut
                    )));
                }
                let piece = parse_regions(&regions)?;
                check_in_volume(&piece, &peer.geometry)?;
                c.expected -= c.pass.len();
                c.pass |= piece;
                c.expected += c.pass.len();
                Ok((Phase::InCut(peer, c), vec![]))
            }
            (Phase::InCut(peer, mut c), Frame::CutPass { regions }) => {
                check_pass_complete(&c)?;
                if c.passes >= MAX_CUT_PASSES {
                    return Err(proto(format!(
                        "cut {} has more than {MAX_CUT_PASSES} passes",
                        c.cut
                    )));
                }
                let set = parse_regions(&regions)?;
                check_in_volume(&set, &peer.geometry)?;
                c.expected += set.len();
                c.pass = set;
                c.passes += 1;
                c.pass_chunks = 0;
                c.next_min = 0;
                Ok((Phase::InCut(peer, c), vec![]))
            }
            (
                Phase::InCut(peer, mut c),
                Frame::Chunk {
                    offset,
                    len,
                    hash,
                    codec,
                    data,
                },
            ) => {
                self.open_journal(&peer, &mut c)?;
                self.chunk(&peer, &mut c, offset, len, hash, codec, data)?;
                Ok((Phase::InCut(peer, c), vec![]))
            }
            (Phase::InCut(peer, mut c), Frame::CutEnd { cut, chunks, bytes }) => {
                if cut != c.cut {
                    return Err(proto(format!("CutEnd of cut {cut} inside cut {}", c.cut)));
                }
                self.open_journal(&peer, &mut c)?;
                check_pass_complete(&c)?;
                if chunks != c.chunks || bytes != c.bytes || c.chunks != c.expected {
                    return Err(proto(format!(
                        "cut {cut} ends claiming {chunks} chunks / {bytes} bytes, but {} chunks / \
                         {} bytes were received for {} announced: the cut is discarded",
                        c.chunks, c.bytes, c.expected
                    )));
                }
                let report = self.store.commit_cut(cut)?;
                tracing::info!(cut, chunks, bytes, elapsed = ?report.elapsed, "cut committed");
                Ok((Phase::Ready(peer), vec![Frame::Committed { cut }]))
            }
            (phase, frame) => Err(proto(format!(
                "unexpected {} frame {}",
                frame.name(),
                match phase {
                    Phase::AwaitHello => "before Hello".to_string(),
                    Phase::Ready(_) => "between cuts".to_string(),
                    Phase::InCut(_, c) => format!("inside cut {}", c.cut),
                    Phase::Failed => "after the session failed".to_string(),
                }
            ))),
        }
    }

    fn hello(
        &mut self,
        p: u16,
        volume: [u8; 16],
        dev_bytes: u64,
        region_bytes: u32,
    ) -> Result<(Phase, Vec<Frame>), SessionError> {
        if p != PROTO_VERSION {
            return Err(proto(format!(
                "the primary speaks protocol {p}, this replica {PROTO_VERSION}: install matching bdr versions"
            )));
        }
        if region_bytes == 0 || region_bytes % 512 != 0 || region_bytes > MAX_REGION_BYTES {
            return Err(proto(format!(
                "region size {region_bytes} is not a multiple of 512 between 512 and {MAX_REGION_BYTES}"
            )));
        }
        if dev_bytes % 512 != 0 {
            return Err(proto(format!(
                "volume size {dev_bytes} is not a multiple of 512"
            )));
        }
        let geometry =
            Geometry::new(region_bytes / 512, dev_bytes / 512).map_err(|e| proto(e.to_string()))?;
        if let Some(st) = self.store.state() {
            if st.volume != volume {
                return Err(SessionError::new(
                    ErrorCode::WrongVolume,
                    format!(
                        "this replica holds volume {}, the primary sent {}: point the primary at \
                         the right replica, or wipe --state-dir to re-seed",
                        volume_hex(&st.volume),
                        volume_hex(&volume)
                    ),
                ));
            }
        }
        if self.store.device_bytes() < dev_bytes {
            return Err(SessionError::new(
                ErrorCode::DeviceTooSmall,
                format!(
                    "replica device {} has {} bytes, the primary's volume {}: give the replica a \
                     device of at least {dev_bytes} bytes",
                    self.store.device_path().display(),
                    self.store.device_bytes(),
                    dev_bytes
                ),
            ));
        }
        let st = self.store.state();
        let welcome = Frame::Welcome {
            proto: PROTO_VERSION,
            volume: st.map(|s| s.volume),
            last_cut: st.map(|s| s.last_cut),
            dev_bytes: self.store.device_bytes(),
        };
        Ok((Phase::Ready(Peer { volume, geometry }), vec![welcome]))
    }

    fn cut_begin(
        &mut self,
        peer: Peer,
        cut: u64,
        parent: Option<u64>,
        kind: CutKind,
        regions: &[u8],
    ) -> Result<(Phase, Vec<Frame>), SessionError> {
        let last = self.store.state().map(|s| s.last_cut);
        if kind == CutKind::Incremental {
            match last {
                None => {
                    return Err(SessionError::new(
                        ErrorCode::WrongParent,
                        format!(
                            "cut {cut} is incremental but this replica has no committed cut yet: \
                             the first cut of a new replica must be a rescan"
                        ),
                    ))
                }
                Some(l) if parent != Some(l) => {
                    return Err(SessionError::new(
                        ErrorCode::WrongParent,
                        format!(
                            "cut {cut} has parent {} but this replica's last committed cut is {l}: \
                             the primary must rescan (it lost track of the replica)",
                            parent.map_or("none".to_string(), |p| p.to_string())
                        ),
                    ))
                }
                _ => {}
            }
        }
        if let Some(l) = last {
            if cut <= l {
                return Err(SessionError::new(
                    ErrorCode::WrongParent,
                    format!("cut {cut} is not newer than the last committed cut {l}"),
                ));
            }
        }
        let set = parse_regions(regions)?;
        check_in_volume(&set, &peer.geometry)?;
        let c = Cut {
            cut,
            parent,
            kind,
            expected: set.len(),
            pass: set,
            passes: 1,
            pass_chunks: 0,
            reserved: None,
            chunks: 0,
            bytes: 0,
            next_min: 0,
        };
        Ok((Phase::InCut(peer, Box::new(c)), vec![]))
    }

    /// Opens the cut's journal sized for the chunks announced so far, or grows it when a
    /// later pass announced more.
    fn open_journal(&mut self, peer: &Peer, c: &mut Cut) -> Result<(), SessionError> {
        let region_bytes = peer.geometry.region_bytes() as u32;
        if let Some(reserved) = c.reserved {
            if c.expected > reserved {
                let more = ReplicaStore::journal_bytes_for(c.expected - reserved, region_bytes);
                self.store.grow_cut(more)?;
                c.reserved = Some(c.expected);
            }
            return Ok(());
        }
        let header = CutHeader {
            volume: peer.volume,
            cut: c.cut,
            parent: c.parent,
            dev_bytes: peer.geometry.dev_bytes(),
            region_bytes: peer.geometry.region_bytes() as u32,
            kind: c.kind,
        };
        let needed = ReplicaStore::journal_bytes_for(c.expected, header.region_bytes);
        self.store.begin_cut(header, needed)?;
        c.reserved = Some(c.expected);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn chunk(
        &mut self,
        peer: &Peer,
        c: &mut Cut,
        offset: u64,
        len: u32,
        hash: [u8; 32],
        codec: crate::frame::Codec,
        data: Vec<u8>,
    ) -> Result<(), SessionError> {
        let g = &peer.geometry;
        let oor = |m: String| SessionError::new(ErrorCode::OutOfRange, m);
        if offset % g.region_bytes() != 0 {
            return Err(oor(format!(
                "chunk at offset {offset} of cut {} is not at a region boundary ({} bytes)",
                c.cut,
                g.region_bytes()
            )));
        }
        let region = offset / g.region_bytes();
        let Some(spec) = chunk::chunk_of_region(g, region) else {
            return Err(oor(format!(
                "chunk at offset {offset} of cut {} is outside the {}-byte volume",
                c.cut,
                g.dev_bytes()
            )));
        };
        if u32::try_from(region).map_or(true, |r| !c.pass.contains(r)) {
            return Err(oor(format!(
                "chunk at offset {offset} (region {region}) is not in the region set of pass {} \
                 of cut {}",
                c.passes, c.cut
            )));
        }
        if len != spec.len {
            return Err(SessionError::new(
                ErrorCode::BadFrame,
                format!(
                    "chunk at offset {offset} has {len} bytes, region {region} has {}",
                    spec.len
                ),
            ));
        }
        if offset < c.next_min {
            return Err(proto(format!(
                "chunk at offset {offset} of cut {} is out of order or repeated",
                c.cut
            )));
        }
        let plain = chunk::decode_chunk_data(codec, data, len, &mut self.decompressor).map_err(
            |e: ChunkError| {
                SessionError::new(
                    ErrorCode::BadFrame,
                    format!("chunk at offset {offset}: {e}"),
                )
            },
        )?;
        let got = chunk::hash(&plain);
        if got != hash {
            return Err(SessionError::new(
                ErrorCode::HashMismatch,
                format!(
                    "chunk at offset {offset} of cut {}: blake3 of the received data is {}, the \
                     primary sent {}: the data was corrupted on the way; the cut is discarded",
                    c.cut,
                    hex(&got),
                    hex(&hash)
                ),
            ));
        }
        self.store.append_chunk(offset, &plain, &hash)?;
        c.chunks += 1;
        c.pass_chunks += 1;
        c.bytes += u64::from(len);
        c.next_min = offset + u64::from(len);
        Ok(())
    }
}

/// Every region of the current pass has its chunk (before `CutPass` or `CutEnd`).
fn check_pass_complete(c: &Cut) -> Result<(), SessionError> {
    if c.pass_chunks != c.pass.len() {
        return Err(proto(format!(
            "pass {} of cut {} ended after {} of its {} chunks: the cut is discarded",
            c.passes,
            c.cut,
            c.pass_chunks,
            c.pass.len()
        )));
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn parse_regions(bytes: &[u8]) -> Result<RoaringBitmap, SessionError> {
    chunk::parse_region_piece(bytes)
        .map_err(|e| SessionError::new(ErrorCode::BadFrame, e.to_string()))
}

fn check_in_volume(set: &RoaringBitmap, g: &Geometry) -> Result<(), SessionError> {
    chunk::check_regions(set, g)
        .map_err(|e| SessionError::new(ErrorCode::OutOfRange, format!("cut region set: {e}")))
}
