//! `replica_session`: a sequence of operations, generated with `arbitrary`, against a
//! [`ReplicaSession`] on a small replica (a 16-region device file of 4 KiB regions, the last
//! one clipped to 2 KiB) in a tmpfs directory, with process crashes (drop everything mid-way,
//! optionally at an armed [`CommitStep`] of the commit or of the recovery) and reopens.
//!
//! The harness keeps a model: the image of every cut the replica committed, and the cut
//! being received pass by pass (protocol v2: `CutBegin` starts the first pass, each
//! `CutPass` another with its own region set; the cut's set is their union and a region
//! shipped in several passes takes the content of the last). After every operation, and
//! after every reopen (which runs the journal recovery):
//!
//! * every frame is accepted or refused exactly as the model says (its phase, cut ids and
//!   parents, region sets inside the volume, each pass complete before the next `CutPass`
//!   or the `CutEnd`, at most `MAX_CUT_PASSES` passes, chunks in the current pass's set in
//!   increasing order, sizes, hashes, `CutEnd` counting the chunks and bytes of all
//!   passes), a refusal with one of the error codes the model expects; a frame the model
//!   accepts may only fail by dying at an armed crash point;
//! * the store's committed cut is the model's; after a crash it is the previous cut or the
//!   cut being committed, exactly as the crash step's durability says;
//! * the device equals the model's image of that cut, byte for byte (never a mix, never an
//!   earlier pass's content of a region a later pass shipped again);
//! * no journal is left behind outside a cut; `Hashes` replies match the model's image;
//! * a refused chunk or cut leaves everything as it was (the harness also asserts that
//!   well-formed cuts, in one pass or several, commit).
//!
//! Chunks are built by the harness (data, zstd, blake3) and are valid unless the operation
//! asks for tampering, so the fuzzer reaches commits easily.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use bdr_sync::chunk;
use bdr_sync::frame::{
    decode_frame, Codec, CutKind, ErrorCode, Frame, MAX_CUT_PASSES, MAX_HASH_BATCH,
    MAX_REGION_BYTES, PROTO_VERSION,
};
use bdr_sync::replica::{
    CommitStep, RecoveryReport, ReplicaSession, ReplicaStore, SessionError, StoreError,
};
use bdr_sync::Geometry;
use roaring::RoaringBitmap;

/// Region size of the default geometry.
pub const REGION: u64 = 4096;
/// Size of the device file and of the default volume: 15 full regions and a 2 KiB one.
pub const DEV_BYTES: u64 = 15 * REGION + 2048;
pub const VOLUME: [u8; 16] = *b"bdr-fuzz-volume!";
pub const OTHER_VOLUME: [u8; 16] = *b"another-volume..";
/// Operations per input beyond this are ignored (keeps an iteration short).
pub const MAX_OPS: usize = 48;

/// One fuzz input.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// Start from a replica that committed cut 1 (the seed image), else from a new replica.
    pub seeded: bool,
    pub ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    Hello {
        volume: VolSel,
        geometry: GeoSel,
        bad_proto: bool,
    },
    CutBegin {
        id: IdSel,
        parent: ParentSel,
        rescan: bool,
        regions: RegionsSel,
    },
    CutRegions {
        regions: RegionsSel,
    },
    Chunk {
        region: RegionSel,
        content: Content,
        codec: CodecSel,
        /// Values below 200 mean an honest chunk; the others pick a tampering.
        tamper: u8,
    },
    CutEnd {
        id: IdSel,
        counts: CountSel,
    },
    /// A whole well-formed cut (with a Hello first if the session needs one), which must
    /// commit unless a crash point is armed.
    Cut {
        rescan: bool,
        regions: u16,
        content: Content,
    },
    /// `CutPass` (protocol v2): ends the open cut's current pass and starts another with
    /// this region set.
    CutPass {
        regions: RegionsSel,
    },
    /// Up to `count` further passes of the open cut, each a `CutPass` and one honest chunk
    /// per region of its set (pass i ships `mask` rotated left by i, with its own content),
    /// until one is refused: the first if the current pass is incomplete, else the one
    /// past `MAX_CUT_PASSES`.
    Passes {
        count: u8,
        mask: u16,
        content: Content,
    },
    /// A whole well-formed cut in passes (with a Hello first if needed): `CutBegin` with
    /// the first set, a `CutPass` per further one (at most `MAX_CUT_PASSES` passes in all),
    /// each pass with its own content, then `CutEnd`. Must commit unless a crash point is
    /// armed; a region shipped in several passes ends with the content of the last.
    PassCut {
        rescan: bool,
        first: (u16, Content),
        more: Vec<(u16, Content)>,
    },
    HashRequest {
        first: u8,
        count: u8,
    },
    /// A frame the primary never sends.
    Stray(Stray),
    /// Raw bytes through the frame decoder; a frame that decodes is fed to the session.
    Wire(Vec<u8>),
    /// The connection ends (the session is aborted) and the primary reconnects.
    Reconnect,
    /// The process dies: everything is dropped as it is and the store reopened (recovery),
    /// optionally with a crash point armed during the recovery, then optionally one armed
    /// for the next commit.
    Restart {
        recovery_crash: Option<Step>,
        arm: Option<Step>,
        /// Damage the journal before the reopen (only when the device was not written for
        /// its cut yet: damage after that is outside the journal's model).
        tear: Option<Tear>,
    },
}

/// Damage to a journal: cut it at `at`, or flip bit `bit` of the byte at `at` (positions
/// modulo the journal's length).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Tear {
    Truncate { at: u32 },
    Flip { at: u32, bit: u8 },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum VolSel {
    Ours,
    Other,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum GeoSel {
    Default,
    /// region size 512 << (r % 5), volume size (s + 1) × 512 bytes.
    Custom {
        r: u8,
        s: u8,
    },
    Raw {
        dev_bytes: u64,
        region_bytes: u32,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum IdSel {
    /// The open cut's id, or the next one after the last committed cut.
    Next,
    /// The last committed cut's id.
    Last,
    Raw(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum ParentSel {
    Last,
    None,
    Raw(u8),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum RegionsSel {
    /// Regions whose bit is set (only those of the volume).
    Mask(u16),
    /// Regions whose bit is set, unclipped: may name regions past the volume's end.
    Wide(u32),
    Garbage(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum RegionSel {
    /// The next region of the cut's set the session expects.
    Next,
    Region(u8),
    /// A byte offset (region boundary or not).
    Offset(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Content {
    Zeros,
    Byte(u8),
    /// Pseudo-random, incompressible.
    Random(u16),
    /// Compressible text-like data.
    Text(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum CodecSel {
    /// zstd if it helps, else raw (as the primary does).
    Auto,
    Raw,
    /// zstd even when it does not help.
    Zstd,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum CountSel {
    Right,
    ChunksOff(i8),
    BytesOff(i16),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Stray {
    Welcome,
    Committed(u8),
    Hashes,
    Error(String),
}

/// A commit step; chunk numbers are taken modulo 20.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Step {
    JournalAppend(u8),
    JournalSynced,
    CommitRecord,
    DeviceWrite(u8),
    DeviceSynced,
    StateUpdated,
    JournalRemoved,
}

impl Step {
    fn get(self) -> CommitStep {
        match self {
            Step::JournalAppend(k) => CommitStep::JournalAppend(u64::from(k % 20)),
            Step::JournalSynced => CommitStep::JournalSynced,
            Step::CommitRecord => CommitStep::CommitRecord,
            Step::DeviceWrite(k) => CommitStep::DeviceWrite(u64::from(k % 20)),
            Step::DeviceSynced => CommitStep::DeviceSynced,
            Step::StateUpdated => CommitStep::StateUpdated,
            Step::JournalRemoved => CommitStep::JournalRemoved,
        }
    }
}

pub fn default_geometry() -> Geometry {
    Geometry::new((REGION / 512) as u32, DEV_BYTES / 512).unwrap()
}

/// The seed image (cut 1 of a seeded replica).
pub fn seed_image() -> Vec<u8> {
    let mut v = vec![0u8; DEV_BYTES as usize];
    fill_random(&mut v, 0x5eed);
    v
}

fn fill_random(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for c in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// The content of pass `i` of an [`Op::Passes`]: `c`, different for each pass.
pub fn pass_content(c: Content, i: u32) -> Content {
    match c {
        Content::Zeros if i == 0 => Content::Zeros,
        Content::Zeros => Content::Byte(i as u8),
        Content::Byte(b) => Content::Byte(b.wrapping_add(i as u8)),
        Content::Random(s) => Content::Random(s.wrapping_add(i as u16)),
        Content::Text(s) => Content::Text(s.wrapping_add(i as u8)),
    }
}

/// The plain content of a chunk at `offset` of `len` bytes.
pub fn content_bytes(c: Content, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    match c {
        Content::Zeros => {}
        Content::Byte(b) => v.fill(b),
        Content::Random(s) => fill_random(&mut v, u64::from(s) << 32 ^ offset),
        Content::Text(s) => {
            let words: [&[u8]; 4] = [b"block ", b"replica ", b"cut ", b"journal\n"];
            let mut i = usize::from(s) + offset as usize;
            let mut out = Vec::with_capacity(len);
            while out.len() < len {
                out.extend_from_slice(words[i % 4]);
                i = i.wrapping_mul(31).wrapping_add(7);
            }
            out.truncate(len);
            v = out;
        }
    }
    v
}

fn chunk_frame(offset: u64, plain: &[u8], codec: CodecSel) -> Frame {
    match codec {
        CodecSel::Auto => chunk::encode_chunk(offset, plain, 1),
        CodecSel::Raw => Frame::Chunk {
            offset,
            len: plain.len() as u32,
            hash: chunk::hash(plain),
            codec: Codec::Raw,
            data: plain.to_vec(),
        },
        CodecSel::Zstd => Frame::Chunk {
            offset,
            len: plain.len() as u32,
            hash: chunk::hash(plain),
            codec: Codec::Zstd,
            data: zstd::bulk::compress(plain, 1).unwrap(),
        },
    }
}

/// Why the session refuses a region piece (`CutBegin`, `CutRegions`, `CutPass`) of
/// geometry `g`: it does not parse, or it names a region past the volume's end.
fn region_faults(bytes: &[u8], g: &Geometry) -> Vec<ErrorCode> {
    match RoaringBitmap::deserialize_from(bytes) {
        Err(_) => vec![ErrorCode::BadFrame],
        Ok(set) if set.max().is_some_and(|m| u64::from(m) >= g.nr_regions) => {
            vec![ErrorCode::OutOfRange]
        }
        Ok(_) => vec![],
    }
}

/// The regions of `mask` (bit i: region i) that the volume has.
fn mask_set(mask: u16, nr_regions: u64) -> RoaringBitmap {
    (0..16u32)
        .filter(|i| mask >> i & 1 == 1 && u64::from(*i) < nr_regions)
        .collect()
}

fn serialize(set: &RoaringBitmap) -> Vec<u8> {
    let mut v = Vec::new();
    set.serialize_into(&mut v).unwrap();
    v
}

/// A directory for one fuzzing process: a device file and a state dir, reset per input.
pub struct Scratch {
    _dir: tempfile::TempDir,
    device: PathBuf,
    state_dir: PathBuf,
    /// The state file of a replica that committed the seed image as cut 1.
    seeded_state: Vec<u8>,
}

impl Scratch {
    /// A new scratch dir `bdr-fuzz.<pid>.*` in /dev/shm (or the temp dir). libFuzzer ends
    /// with `exit()`, which never drops the static holding it: the dirs of processes that
    /// are gone are removed here instead.
    pub fn new() -> Scratch {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        remove_stale_scratch(&base);
        let dir = tempfile::Builder::new()
            .prefix(&format!("bdr-fuzz.{}.", std::process::id()))
            .tempdir_in(&base)
            .expect("scratch dir");
        let device = dir.path().join("replica.img");
        let state_dir = dir.path().join("state");
        let mut s = Scratch {
            _dir: dir,
            device,
            state_dir,
            seeded_state: Vec::new(),
        };
        // Make the seeded state once, through the real code path.
        s.reset(false);
        let g = default_geometry();
        let img = seed_image();
        let mut sess = ReplicaSession::new(s.open());
        sess.on_frame(hello(&g, VOLUME)).unwrap();
        let all: RoaringBitmap = (0..g.nr_regions as u32).collect();
        sess.on_frame(Frame::CutBegin {
            cut: 1,
            parent: None,
            kind: CutKind::Rescan,
            regions: serialize(&all),
        })
        .unwrap();
        for spec in chunk::plan_chunks(&all, &g) {
            let d = &img[spec.offset as usize..(spec.offset + u64::from(spec.len)) as usize];
            sess.on_frame(chunk::encode_chunk(spec.offset, d, 1))
                .unwrap();
        }
        let r = sess
            .on_frame(Frame::CutEnd {
                cut: 1,
                chunks: g.nr_regions,
                bytes: g.dev_bytes(),
            })
            .unwrap();
        assert_eq!(r, vec![Frame::Committed { cut: 1 }]);
        drop(sess);
        s.seeded_state = fs::read(s.state_dir.join("state")).unwrap();
        s
    }

    /// Puts the replica back in its initial state: seeded at cut 1, or new (zero device).
    fn reset(&self, seeded: bool) {
        fs::create_dir_all(&self.state_dir).unwrap();
        for f in ["state", "state.tmp", "journal"] {
            let _ = fs::remove_file(self.state_dir.join(f));
        }
        let img = if seeded {
            seed_image()
        } else {
            vec![0; DEV_BYTES as usize]
        };
        fs::write(&self.device, img).unwrap();
        if seeded {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(self.state_dir.join("state"))
                .unwrap();
            f.write_all(&self.seeded_state).unwrap();
        }
    }

    fn open(&self) -> ReplicaStore {
        ReplicaStore::open(&self.device, &self.state_dir).expect("open the replica store")
    }

    /// The replica device's content (after [`check`]: the last committed cut's image).
    pub fn device_bytes(&self) -> Vec<u8> {
        fs::read(&self.device).unwrap()
    }

    /// Damages the journal, if there is one; whether it changed.
    fn tear_journal(&self, t: Tear) -> bool {
        let path = self.state_dir.join("journal");
        let Ok(mut b) = fs::read(&path) else {
            return false;
        };
        if b.is_empty() {
            return false;
        }
        match t {
            Tear::Truncate { at } => b.truncate(at as usize % b.len()),
            Tear::Flip { at, bit } => {
                let n = b.len();
                b[at as usize % n] ^= 1 << (bit % 8);
            }
        }
        fs::write(&path, b).unwrap();
        true
    }

    fn journal_exists(&self) -> bool {
        self.state_dir.join("journal").exists()
    }
}

/// Removes the `bdr-fuzz.<pid>.*` dirs in `base` of processes that no longer exist.
fn remove_stale_scratch(base: &Path) {
    let Ok(rd) = fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("bdr-fuzz."))
            .and_then(|n| n.split('.').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

fn hello(g: &Geometry, volume: [u8; 16]) -> Frame {
    Frame::Hello {
        proto: PROTO_VERSION,
        volume,
        dev_bytes: g.dev_bytes(),
        region_bytes: g.region_bytes() as u32,
    }
}

/// The harness's view of the cut being received, pass by pass.
struct Pending {
    id: u64,
    seed: bool,
    /// The device before the cut (the base of its image).
    base: Vec<u8>,
    /// The region set of each pass so far (`CutBegin`'s first, then one per `CutPass`,
    /// each grown by its `CutRegions` pieces); the last one is the current pass.
    passes: Vec<RoaringBitmap>,
    /// Chunks the session accepted in the current pass.
    pass_chunks: u64,
    /// offset → (pass index, plain data) of the last chunk accepted for that offset: a
    /// region shipped in several passes takes the content of the last.
    chunks: BTreeMap<u64, (usize, Vec<u8>)>,
    /// Chunks and plain bytes accepted over all passes (what `CutEnd` counts).
    count: u64,
    bytes: u64,
    /// A region was shipped again with other content than an earlier pass's.
    rewritten: bool,
    /// Offset after the last chunk accepted in the current pass (the order restarts at
    /// each pass).
    next_min: u64,
}

impl Pending {
    fn pass(&self) -> &RoaringBitmap {
        self.passes.last().expect("a cut has a pass")
    }

    fn pass_complete(&self) -> bool {
        self.pass_chunks == self.pass().len()
    }

    /// The cut's region set: the union of its passes' sets.
    fn regions(&self) -> RoaringBitmap {
        self.passes.iter().fold(RoaringBitmap::new(), |a, p| a | p)
    }

    fn image(&self) -> Vec<u8> {
        let mut img = self.base.clone();
        for (off, (_, d)) in &self.chunks {
            img[*off as usize..*off as usize + d.len()].copy_from_slice(d);
        }
        img
    }
}

/// A crash the store went through, not yet recovered by a reopen.
struct Crash {
    step: CommitStep,
    /// The cut whose commit crashed (at CutEnd), with its image and volume.
    committing: Option<(u64, Vec<u8>, [u8; 16])>,
    seed: bool,
}

/// What an input made the replica do (for the seed generator and the replay tests).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
pub struct Stats {
    pub commits: u32,
    pub seeds_committed: u32,
    pub refusals: u32,
    pub hashes: u32,
    /// Crashes injected at CutEnd (during the commit) / while receiving chunks.
    pub crashes_at_commit: u32,
    pub crashes_receiving: u32,
    pub recovery_crashes: u32,
    /// Journals damaged before a reopen.
    pub torn: u32,
    pub replayed: u32,
    pub discarded: u32,
    /// `CutPass` frames accepted / refused.
    pub passes: u32,
    pub passes_refused: u32,
    /// Cuts of two passes or more committed, and those of them where a later pass shipped
    /// a region again with other content.
    pub multi_pass_commits: u32,
    pub rewritten_commits: u32,
    /// Crashes injected at the CutEnd of a cut of two passes or more.
    pub multi_pass_crashes: u32,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.commits += o.commits;
        self.seeds_committed += o.seeds_committed;
        self.refusals += o.refusals;
        self.hashes += o.hashes;
        self.crashes_at_commit += o.crashes_at_commit;
        self.crashes_receiving += o.crashes_receiving;
        self.recovery_crashes += o.recovery_crashes;
        self.torn += o.torn;
        self.replayed += o.replayed;
        self.discarded += o.discarded;
        self.passes += o.passes;
        self.passes_refused += o.passes_refused;
        self.multi_pass_commits += o.multi_pass_commits;
        self.rewritten_commits += o.rewritten_commits;
        self.multi_pass_crashes += o.multi_pass_crashes;
    }
}

/// The committed cuts, as the harness knows them.
struct Model {
    /// cut id → image, for every cut committed (the last one is the replica's).
    images: BTreeMap<u64, Vec<u8>>,
    last: Option<u64>,
    volume: Option<[u8; 16]>,
}

struct Harness<'a> {
    scratch: &'a Scratch,
    model: Model,
    session: Option<ReplicaSession>,
    /// Geometry and volume of the session's accepted Hello.
    peer: Option<(Geometry, [u8; 16])>,
    pending: Option<Pending>,
    /// The crash point armed in the store, if any.
    armed: Option<CommitStep>,
    crashed: Option<Crash>,
    stats: Stats,
}

fn is_crash(e: &SessionError) -> bool {
    e.message.contains("injected crash")
}

impl<'a> Harness<'a> {
    fn new(scratch: &'a Scratch, seeded: bool) -> Harness<'a> {
        scratch.reset(seeded);
        let mut images = BTreeMap::new();
        if seeded {
            images.insert(1, seed_image());
        }
        let store = scratch.open();
        let h = Harness {
            scratch,
            model: Model {
                images,
                last: seeded.then_some(1),
                volume: seeded.then_some(VOLUME),
            },
            session: Some(ReplicaSession::new(store)),
            peer: None,
            pending: None,
            armed: None,
            crashed: None,
            stats: Stats::default(),
        };
        h.check();
        h
    }

    fn session(&mut self) -> &mut ReplicaSession {
        self.session.as_mut().expect("a session")
    }

    /// Why the session must refuse `f` now: the error codes it may report (the replica
    /// names one of the reasons that apply). Empty: it must accept the frame (or die at an
    /// armed crash point). The phase comes from the model: no `peer` before the Hello,
    /// `pending` inside a cut.
    fn verdict(&self, f: &Frame) -> Vec<ErrorCode> {
        use ErrorCode::*;
        if let Frame::Error { code, .. } = f {
            return vec![*code];
        }
        if self.session.as_ref().expect("a session").failed() {
            return vec![Protocol];
        }
        let mut why = Vec::new();
        match f {
            Frame::Hello {
                proto,
                volume,
                dev_bytes,
                region_bytes,
            } => {
                if self.peer.is_some() {
                    return vec![Protocol];
                }
                let (rb, db) = (*region_bytes, *dev_bytes);
                if *proto != PROTO_VERSION
                    || rb == 0
                    || rb % 512 != 0
                    || rb > MAX_REGION_BYTES
                    || db % 512 != 0
                    || Geometry::new(rb / 512, db / 512).is_err()
                {
                    why.push(Protocol);
                }
                if self.model.volume.is_some_and(|v| v != *volume) {
                    why.push(WrongVolume);
                }
                if db > DEV_BYTES {
                    why.push(DeviceTooSmall);
                }
            }
            Frame::HashRequest {
                first_region,
                count,
            } => {
                let Some((g, _)) = self.peer.filter(|_| self.pending.is_none()) else {
                    return vec![Protocol];
                };
                if *count > MAX_HASH_BATCH {
                    why.push(Protocol);
                }
                if first_region.saturating_add(u64::from(*count)) > g.nr_regions {
                    why.push(OutOfRange);
                }
            }
            Frame::CutBegin {
                cut,
                parent,
                kind,
                regions,
            } => {
                let Some((g, _)) = self.peer.filter(|_| self.pending.is_none()) else {
                    return vec![Protocol];
                };
                let last = self.model.last;
                if *kind == CutKind::Incremental && (last.is_none() || *parent != last) {
                    why.push(WrongParent);
                }
                if last.is_some_and(|l| *cut <= l) {
                    why.push(WrongParent);
                }
                why.extend(region_faults(regions, &g));
            }
            Frame::CutRegions { regions } => {
                let Some(p) = &self.pending else {
                    return vec![Protocol];
                };
                if p.pass_chunks > 0 {
                    why.push(Protocol);
                }
                why.extend(region_faults(regions, &self.geometry()));
            }
            Frame::CutPass { regions } => {
                let Some(p) = &self.pending else {
                    return vec![Protocol];
                };
                // The previous pass must be complete, and there is a limit on passes.
                if !p.pass_complete() || p.passes.len() >= MAX_CUT_PASSES as usize {
                    why.push(Protocol);
                }
                why.extend(region_faults(regions, &self.geometry()));
            }
            Frame::Chunk {
                offset,
                len,
                hash,
                codec,
                data,
            } => {
                let Some(p) = &self.pending else {
                    return vec![Protocol];
                };
                let g = self.geometry();
                if offset % g.region_bytes() != 0 {
                    return vec![OutOfRange];
                }
                let region = offset / g.region_bytes();
                let range = g.region_byte_range(region);
                if range.is_empty() {
                    return vec![OutOfRange];
                }
                if u32::try_from(region).map_or(true, |r| !p.pass().contains(r)) {
                    why.push(OutOfRange);
                }
                if *offset < p.next_min {
                    why.push(Protocol);
                }
                if u64::from(*len) != range.end - range.start {
                    why.push(BadFrame);
                } else {
                    // Decoded only at the region's length (a frame may declare any).
                    let mut d = zstd::bulk::Decompressor::new().unwrap();
                    match chunk::decode_chunk_data(*codec, data.clone(), *len, &mut d) {
                        Err(_) => why.push(BadFrame),
                        Ok(plain) if blake3::hash(&plain).as_bytes() != hash => {
                            why.push(HashMismatch)
                        }
                        Ok(_) => {}
                    }
                }
            }
            Frame::CutEnd { cut, chunks, bytes } => {
                let Some(p) = &self.pending else {
                    return vec![Protocol];
                };
                // The id, the last pass complete, the counts over all passes.
                if *cut != p.id || !p.pass_complete() || *chunks != p.count || *bytes != p.bytes {
                    why.push(Protocol);
                }
            }
            Frame::Welcome { .. } | Frame::Committed { .. } | Frame::Hashes { .. } => {
                why.push(Protocol)
            }
            Frame::Error { .. } => unreachable!(),
        }
        why
    }

    /// Feeds one frame and keeps the model in step; returns the session's answer. The
    /// session must accept or refuse the frame as [`verdict`](Self::verdict) says.
    fn send(&mut self, frame: Frame) -> Result<Vec<Frame>, SessionError> {
        let was_in_cut = self.session().in_cut();
        let name = frame.name();
        let refuse = self.verdict(&frame);
        let hello = match &frame {
            Frame::Hello {
                volume,
                dev_bytes,
                region_bytes,
                ..
            } => Some((*volume, *dev_bytes, *region_bytes)),
            _ => None,
        };
        let begin = match &frame {
            Frame::CutBegin { cut, regions, .. } => Some((*cut, regions.clone())),
            _ => None,
        };
        let more = match &frame {
            Frame::CutRegions { regions } => Some(regions.clone()),
            _ => None,
        };
        let pass = match &frame {
            Frame::CutPass { regions } => Some(regions.clone()),
            _ => None,
        };
        // (Decoded after the session accepted it, so at the region's length.)
        let chunk_in = match &frame {
            Frame::Chunk {
                offset,
                codec,
                data,
                len,
                ..
            } => Some((*offset, *codec, data.clone(), *len)),
            _ => None,
        };
        let hash_req = match &frame {
            Frame::HashRequest {
                first_region,
                count,
            } => Some((*first_region, *count)),
            _ => None,
        };
        let r = self.session().on_frame(frame);
        match &r {
            Err(e) => {
                assert!(self.session().failed(), "{name}: error but not failed");
                assert_eq!(self.session().in_cut(), None);
                if is_crash(e) {
                    let step = self
                        .armed
                        .unwrap_or_else(|| panic!("{name}: crash without an armed point: {e}"));
                    assert!(
                        refuse.is_empty(),
                        "{name}: crashed at {step:?} but the model refuses it ({refuse:?})"
                    );
                    let p = self.pending.take();
                    let seed = p.as_ref().is_some_and(|p| p.seed);
                    let committing = match (name, p) {
                        ("CutEnd", Some(p)) => {
                            self.stats.multi_pass_crashes += u32::from(p.passes.len() > 1);
                            Some((p.id, p.image(), self.peer.unwrap().1))
                        }
                        _ => None,
                    };
                    if name == "CutEnd" {
                        self.stats.crashes_at_commit += 1;
                    } else {
                        self.stats.crashes_receiving += 1;
                    }
                    self.crashed = Some(Crash {
                        step,
                        committing,
                        seed,
                    });
                } else {
                    // (An Error frame from the primary comes back with the primary's code;
                    // no store error is expected on tmpfs.)
                    assert!(
                        !refuse.is_empty(),
                        "{name} refused but the model says it is valid: {e}"
                    );
                    assert!(
                        refuse.contains(&e.code),
                        "{name} refused with {e}, the model expects one of {refuse:?}"
                    );
                    self.pending = None;
                    self.stats.refusals += 1;
                    self.stats.passes_refused += u32::from(name == "CutPass");
                }
            }
            Ok(out) => {
                assert!(!self.session().failed());
                assert!(
                    refuse.is_empty(),
                    "{name} accepted but the model refuses it ({refuse:?})"
                );
                if let Some((volume, dev_bytes, region_bytes)) = hello {
                    let g = Geometry::new(region_bytes / 512, dev_bytes / 512).unwrap();
                    assert_eq!(g.dev_bytes(), dev_bytes);
                    assert_eq!(g.region_bytes(), u64::from(region_bytes));
                    assert!(
                        matches!(out.as_slice(), [Frame::Welcome { last_cut, volume: v, .. }]
                        if *last_cut == self.model.last && *v == self.model.volume)
                    );
                    if let Some(v) = self.model.volume {
                        assert_eq!(v, volume, "Hello of another volume accepted");
                    }
                    self.peer = Some((g, volume));
                }
                if let Some((id, regions)) = begin {
                    assert_eq!(was_in_cut, None);
                    assert_eq!(self.session().in_cut(), Some(id));
                    let set = RoaringBitmap::deserialize_from(&regions[..]).unwrap();
                    let seed = self.model.last.is_none();
                    assert!(self.model.last.is_none_or(|l| id > l));
                    self.pending = Some(Pending {
                        id,
                        seed,
                        base: self.scratch.device_bytes(),
                        passes: vec![set],
                        pass_chunks: 0,
                        chunks: BTreeMap::new(),
                        count: 0,
                        bytes: 0,
                        rewritten: false,
                        next_min: 0,
                    });
                }
                if let Some(regions) = more {
                    let set = RoaringBitmap::deserialize_from(&regions[..]).unwrap();
                    let p = self
                        .pending
                        .as_mut()
                        .expect("CutRegions accepted outside a cut");
                    assert_eq!(p.pass_chunks, 0, "CutRegions accepted after a chunk");
                    *p.passes.last_mut().unwrap() |= set;
                }
                if let Some(regions) = pass {
                    let set = RoaringBitmap::deserialize_from(&regions[..]).unwrap();
                    let p = self
                        .pending
                        .as_mut()
                        .expect("CutPass accepted outside a cut");
                    assert!(
                        p.pass_complete(),
                        "CutPass accepted after an incomplete pass"
                    );
                    assert!(p.passes.len() < MAX_CUT_PASSES as usize, "too many passes");
                    p.passes.push(set);
                    p.pass_chunks = 0;
                    p.next_min = 0;
                    self.stats.passes += 1;
                }
                if let Some((offset, codec, data, len)) = chunk_in {
                    let p = self.pending.as_mut().expect("Chunk accepted outside a cut");
                    let g = self.peer.unwrap().0;
                    assert!(offset >= p.next_min, "chunk out of order accepted");
                    assert_eq!(offset % g.region_bytes(), 0);
                    let r = offset / g.region_bytes();
                    assert!(p.pass().contains(r as u32), "chunk outside the pass's set");
                    let mut d = zstd::bulk::Decompressor::new().unwrap();
                    let plain = chunk::decode_chunk_data(codec, data, len, &mut d)
                        .expect("a chunk that does not decode was accepted");
                    assert_eq!(g.region_byte_range(r).end - offset, plain.len() as u64);
                    p.next_min = offset + plain.len() as u64;
                    p.pass_chunks += 1;
                    p.count += 1;
                    p.bytes += plain.len() as u64;
                    let pass = p.passes.len() - 1;
                    if let Some((_, old)) = p.chunks.insert(offset, (pass, plain)) {
                        p.rewritten |= old != p.chunks[&offset].1;
                    }
                }
                if let Some((first, count)) = hash_req {
                    self.stats.hashes += 1;
                    let (g, _) = self.peer.unwrap();
                    // A new replica hashes whatever its device holds (a rescan compares).
                    let img = match self.model_image() {
                        Some(img) => img.clone(),
                        None => self.scratch.device_bytes(),
                    };
                    let want: Vec<[u8; 32]> = (first..first + u64::from(count))
                        .map(|r| {
                            let br = g.region_byte_range(r);
                            chunk::hash(&img[br.start as usize..br.end as usize])
                        })
                        .collect();
                    assert_eq!(
                        out,
                        &vec![Frame::Hashes {
                            first_region: first,
                            hashes: want
                        }]
                    );
                }
                if name == "CutEnd" {
                    let p = self.pending.take().expect("CutEnd accepted outside a cut");
                    assert_eq!(out, &vec![Frame::Committed { cut: p.id }]);
                    let rb = self.peer.unwrap().0.region_bytes();
                    assert!(
                        p.pass_complete(),
                        "cut committed with its last pass incomplete"
                    );
                    assert_eq!(p.count, p.passes.iter().map(|s| s.len()).sum::<u64>());
                    let covered: RoaringBitmap = p.chunks.keys().map(|o| (o / rb) as u32).collect();
                    assert_eq!(covered, p.regions(), "cut committed without all its chunks");
                    // Each region's content is that of the last pass that shipped it.
                    for (off, (pass, _)) in &p.chunks {
                        let r = (off / rb) as u32;
                        let last = p.passes.iter().rposition(|s| s.contains(r));
                        assert_eq!(last, Some(*pass), "region {r}: not its last pass's content");
                    }
                    let img = p.image();
                    self.stats.commits += 1;
                    self.stats.seeds_committed += u32::from(p.seed);
                    self.stats.multi_pass_commits += u32::from(p.passes.len() > 1);
                    self.stats.rewritten_commits += u32::from(p.rewritten);
                    self.model.images.insert(p.id, img);
                    self.model.last = Some(p.id);
                    self.model.volume = Some(self.peer.unwrap().1);
                } else if !matches!(name, "HashRequest" | "Hello") {
                    assert!(out.is_empty(), "{name} answered {out:?}");
                }
            }
        }
        self.check();
        r
    }

    fn model_image(&self) -> Option<&Vec<u8>> {
        self.model.last.map(|l| &self.model.images[&l])
    }

    /// The invariants that hold while the store is alive.
    fn check(&self) {
        if self.crashed.is_some() {
            return;
        }
        let s = self.session.as_ref().expect("a session");
        assert_eq!(
            s.in_cut(),
            self.pending.as_ref().map(|p| p.id),
            "the session and the model disagree on the open cut"
        );
        let st = s.store().state();
        assert_eq!(st.map(|s| s.last_cut), self.model.last);
        assert_eq!(st.map(|s| s.volume), self.model.volume);
        let in_seed = self.pending.as_ref().is_some_and(|p| p.seed);
        if let Some(img) = self.model_image() {
            assert!(!in_seed);
            if *img != self.scratch.device_bytes() {
                panic!("device differs from cut {:?}'s image", self.model.last);
            }
        }
        if s.in_cut().is_none() {
            assert!(!self.scratch.journal_exists(), "journal left behind");
        }
    }

    /// Ends the session (the connection is gone) and opens a new one on the same store.
    fn reconnect(&mut self) {
        let store = self.session.take().unwrap().into_store();
        self.pending = None;
        self.peer = None;
        self.session = Some(ReplicaSession::new(store));
        self.check();
    }

    /// The process dies and restarts.
    fn restart(
        &mut self,
        recovery_crash: Option<CommitStep>,
        arm: Option<CommitStep>,
        tear: Option<Tear>,
    ) {
        drop(self.session.take());
        self.pending = None;
        self.peer = None;
        self.armed = None;
        let before_device_writes = self.crashed.as_ref().is_none_or(|c| {
            !c.seed
                && matches!(
                    c.step,
                    CommitStep::JournalAppend(_)
                        | CommitStep::JournalSynced
                        | CommitStep::CommitRecord
                )
        });
        let mut torn = false;
        if let (Some(t), true) = (tear, before_device_writes) {
            torn = self.scratch.tear_journal(t);
            self.stats.torn += u32::from(torn);
        }
        let mut store = None;
        if let Some(step) = recovery_crash {
            match ReplicaStore::open_with_crash_point(
                &self.scratch.device,
                &self.scratch.state_dir,
                step,
            ) {
                Ok(s) => {
                    self.armed = Some(step);
                    store = Some(s);
                }
                Err(StoreError::Crashed(_)) => self.stats.recovery_crashes += 1,
                Err(e) => panic!("recovery with a crash point at {step:?}: {e}"),
            }
        }
        let store = store.unwrap_or_else(|| self.scratch.open());
        match store.recovery() {
            RecoveryReport::Replayed { .. } => self.stats.replayed += 1,
            RecoveryReport::Discarded { .. } => self.stats.discarded += 1,
            RecoveryReport::Clean => {}
        }
        // Resolve a crash: the previous cut or the one being committed, as the step says.
        if let Some(c) = self.crashed.take() {
            // A damaged journal is not committed: the cut is lost.
            let durable = !torn
                && if c.seed {
                    c.step == CommitStep::StateUpdated
                } else {
                    c.step.is_durable()
                };
            if let (true, Some((id, img, volume))) = (durable, c.committing) {
                self.model.images.insert(id, img);
                self.model.last = Some(id);
                self.model.volume = Some(volume);
            }
        }
        self.session = Some(ReplicaSession::new(store));
        if let Some(step) = arm {
            self.armed = Some(step);
            self.arm(step);
        }
        self.check();
    }

    fn arm(&mut self, step: CommitStep) {
        // The store is inside the session: take it out (no cut is open right after a
        // restart) and put it back.
        let mut store = self.session.take().unwrap().into_store();
        store.set_crash_point(Some(step));
        self.session = Some(ReplicaSession::new(store));
    }

    fn next_id(&self) -> u64 {
        match &self.pending {
            Some(p) => p.id,
            None => self.model.last.unwrap_or(0) + 1,
        }
    }

    fn geometry(&self) -> Geometry {
        self.peer.map_or_else(default_geometry, |p| p.0)
    }

    fn id(&self, sel: IdSel) -> u64 {
        match sel {
            IdSel::Next => self.next_id(),
            IdSel::Last => self.model.last.unwrap_or(0),
            IdSel::Raw(x) => u64::from(x),
        }
    }

    fn regions(&self, sel: &RegionsSel) -> Vec<u8> {
        let nr = self.geometry().nr_regions;
        match sel {
            RegionsSel::Mask(m) => serialize(&mask_set(*m, nr)),
            RegionsSel::Wide(m) => serialize(&(0..32u32).filter(|i| m >> i & 1 == 1).collect()),
            RegionsSel::Garbage(b) => b.clone(),
        }
    }

    fn op(&mut self, op: &Op) {
        if self.session().failed()
            && !matches!(op, Op::Restart { .. } | Op::Cut { .. } | Op::PassCut { .. })
        {
            // A failed session only refuses; the primary reconnects.
            if self.crashed.is_none() {
                self.reconnect();
            } else {
                assert!(self.send(Frame::Committed { cut: 0 }).is_err());
                return;
            }
        }
        match op {
            Op::Hello {
                volume,
                geometry,
                bad_proto,
            } => {
                let volume = match volume {
                    VolSel::Ours => self.model.volume.unwrap_or(VOLUME),
                    VolSel::Other => OTHER_VOLUME,
                };
                let (dev_bytes, region_bytes) = match *geometry {
                    GeoSel::Default => (DEV_BYTES, REGION as u32),
                    GeoSel::Custom { r, s } => ((u64::from(s) + 1) * 512, 512 << (r % 5)),
                    GeoSel::Raw {
                        dev_bytes,
                        region_bytes,
                    } => (dev_bytes, region_bytes),
                };
                let f = Frame::Hello {
                    proto: if *bad_proto {
                        PROTO_VERSION + 1
                    } else {
                        PROTO_VERSION
                    },
                    volume,
                    dev_bytes,
                    region_bytes,
                };
                let r = self.send(f);
                if *bad_proto || dev_bytes > DEV_BYTES {
                    assert!(r.is_err());
                }
            }
            Op::CutBegin {
                id,
                parent,
                rescan,
                regions,
            } => {
                let parent = match parent {
                    ParentSel::Last => self.model.last,
                    ParentSel::None => None,
                    ParentSel::Raw(x) => Some(u64::from(*x)),
                };
                let f = Frame::CutBegin {
                    cut: self.id(*id),
                    parent,
                    kind: if *rescan {
                        CutKind::Rescan
                    } else {
                        CutKind::Incremental
                    },
                    regions: self.regions(regions),
                };
                let _ = self.send(f);
            }
            Op::CutRegions { regions } => {
                let f = Frame::CutRegions {
                    regions: self.regions(regions),
                };
                let _ = self.send(f);
            }
            Op::Chunk {
                region,
                content,
                codec,
                tamper,
            } => self.chunk(*region, *content, *codec, *tamper),
            Op::CutEnd { id, counts } => {
                let cut = self.id(*id);
                // Counted over all passes (a region shipped twice counts twice).
                let (mut chunks, mut bytes) =
                    self.pending.as_ref().map_or((0, 0), |p| (p.count, p.bytes));
                match counts {
                    CountSel::Right => {}
                    CountSel::ChunksOff(d) => chunks = chunks.wrapping_add_signed(i64::from(*d)),
                    CountSel::BytesOff(d) => bytes = bytes.wrapping_add_signed(i64::from(*d)),
                }
                let wrong = !matches!(counts, CountSel::Right)
                    && !matches!(counts, CountSel::ChunksOff(0) | CountSel::BytesOff(0));
                let r = self.send(Frame::CutEnd { cut, chunks, bytes });
                if wrong {
                    assert!(r.is_err(), "CutEnd with wrong counts accepted");
                }
            }
            Op::Cut {
                rescan,
                regions,
                content,
            } => self.whole_cut(*rescan, &[(*regions, *content)]),
            Op::CutPass { regions } => {
                let f = Frame::CutPass {
                    regions: self.regions(regions),
                };
                let _ = self.send(f);
            }
            Op::Passes {
                count,
                mask,
                content,
            } => self.passes(*count, *mask, *content),
            Op::PassCut {
                rescan,
                first,
                more,
            } => {
                let passes: Vec<_> = std::iter::once(*first)
                    .chain(more.iter().copied())
                    .collect();
                self.whole_cut(*rescan, &passes);
            }
            Op::HashRequest { first, count } => {
                let _ = self.send(Frame::HashRequest {
                    first_region: u64::from(*first),
                    count: u32::from(*count),
                });
            }
            Op::Stray(s) => {
                let f = match s {
                    Stray::Welcome => Frame::Welcome {
                        proto: PROTO_VERSION,
                        volume: None,
                        last_cut: None,
                        dev_bytes: 0,
                    },
                    Stray::Committed(c) => Frame::Committed { cut: u64::from(*c) },
                    Stray::Hashes => Frame::Hashes {
                        first_region: 0,
                        hashes: vec![[0; 32]],
                    },
                    Stray::Error(m) => Frame::error(ErrorCode::Io, m.clone()),
                };
                assert!(self.send(f).is_err(), "a stray frame was accepted");
            }
            Op::Wire(bytes) => {
                if let Ok((f, _)) = decode_frame(bytes) {
                    let _ = self.send(f);
                }
            }
            Op::Reconnect => {
                if self.crashed.is_none() {
                    self.reconnect();
                }
            }
            Op::Restart {
                recovery_crash,
                arm,
                tear,
            } => self.restart(recovery_crash.map(Step::get), arm.map(Step::get), *tear),
        }
    }

    fn chunk(&mut self, region: RegionSel, content: Content, codec: CodecSel, tamper: u8) {
        let g = self.geometry();
        let offset = match region {
            RegionSel::Next => {
                let Some(p) = &self.pending else {
                    return;
                };
                let from = p.next_min.div_ceil(g.region_bytes()) as u32;
                match p.pass().iter().find(|r| *r >= from) {
                    Some(r) => u64::from(r) * g.region_bytes(),
                    None => return,
                }
            }
            RegionSel::Region(r) => u64::from(r) * g.region_bytes(),
            RegionSel::Offset(o) => u64::from(o),
        };
        let range = g.region_byte_range(g.region_of_byte(offset));
        let len = if range.is_empty() {
            g.region_bytes()
        } else {
            range.end - offset.min(range.end)
        };
        let len = len.clamp(1, 64 << 10) as usize;
        let plain = content_bytes(content, offset, len);
        let mut f = chunk_frame(offset, &plain, codec);
        let Frame::Chunk {
            hash,
            data,
            len: flen,
            codec: fcodec,
            ..
        } = &mut f
        else {
            unreachable!()
        };
        let must_fail = match tamper {
            0..200 => false,
            200..220 => {
                hash[usize::from(tamper) % 32] ^= 1 << (tamper % 8);
                true
            }
            220..240 => {
                let at = usize::from(tamper) * 7 % data.len().max(1);
                if let Some(b) = data.get_mut(at) {
                    *b ^= 0x40;
                }
                *fcodec == Codec::Raw
            }
            240..248 => {
                *flen += 512;
                true
            }
            _ => {
                data.truncate(data.len() / 2);
                *fcodec == Codec::Raw
            }
        };
        let r = self.send(f);
        if must_fail {
            assert!(r.is_err(), "a tampered chunk was accepted");
        }
    }

    /// Up to `count` further passes of the open cut, each with all its chunks, until one
    /// is refused or crashes (see [`Op::Passes`]).
    fn passes(&mut self, count: u8, mask: u16, content: Content) {
        for i in 0..u32::from(count) {
            let g = self.geometry();
            let set = mask_set(mask.rotate_left(i % 16), g.nr_regions);
            if self
                .send(Frame::CutPass {
                    regions: serialize(&set),
                })
                .is_err()
            {
                return;
            }
            let c = pass_content(content, i);
            for spec in chunk::plan_chunks(&set, &g) {
                let plain = content_bytes(c, spec.offset, spec.len as usize);
                if self
                    .send(chunk_frame(spec.offset, &plain, CodecSel::Auto))
                    .is_err()
                {
                    return;
                }
            }
        }
    }

    /// A whole well-formed cut of these passes (region mask and content of each; at most
    /// `MAX_CUT_PASSES` are used), which must commit unless a crash point is armed.
    fn whole_cut(&mut self, rescan: bool, passes: &[(u16, Content)]) {
        if self.crashed.is_some() {
            return;
        }
        if self.session().failed() || self.pending.is_some() {
            self.reconnect();
        }
        if self.peer.is_none() {
            let volume = self.model.volume.unwrap_or(VOLUME);
            self.send(hello(&default_geometry(), volume))
                .expect("Hello of the right volume refused");
        }
        let g = self.geometry();
        let rescan = rescan || self.model.last.is_none();
        let id = self.next_id();
        let mut frames = Vec::new();
        let (mut chunks, mut bytes) = (0, 0);
        for (i, (mask, content)) in passes.iter().take(MAX_CUT_PASSES as usize).enumerate() {
            let set = mask_set(*mask, g.nr_regions);
            frames.push(if i == 0 {
                Frame::CutBegin {
                    cut: id,
                    parent: self.model.last,
                    kind: if rescan {
                        CutKind::Rescan
                    } else {
                        CutKind::Incremental
                    },
                    regions: serialize(&set),
                }
            } else {
                Frame::CutPass {
                    regions: serialize(&set),
                }
            });
            for spec in chunk::plan_chunks(&set, &g) {
                let plain = content_bytes(*content, spec.offset, spec.len as usize);
                frames.push(chunk_frame(spec.offset, &plain, CodecSel::Auto));
                chunks += 1;
                bytes += u64::from(spec.len);
            }
        }
        frames.push(Frame::CutEnd {
            cut: id,
            chunks,
            bytes,
        });
        for f in frames {
            match self.send(f) {
                Ok(_) => {}
                Err(e) if is_crash(&e) => return,
                Err(e) => panic!("a well-formed cut {id} was refused: {e}"),
            }
        }
        assert_eq!(self.model.last, Some(id));
    }
}

/// The whole `replica_session` property for one input, in `scratch`.
pub fn check(scratch: &Scratch, input: &Input) -> Stats {
    let mut h = Harness::new(scratch, input.seeded);
    for op in input.ops.iter().take(MAX_OPS) {
        h.op(op);
    }
    // At the end, the process dies once more and recovers.
    h.restart(None, None, None);
    h.session = None;
    h.stats
}
