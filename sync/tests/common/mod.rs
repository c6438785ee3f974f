//! Test fixtures: a primary image file, a replica (device file + state dir), random writes,
//! and frames of a cut built synchronously.
#![allow(dead_code)]

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bdr_sync::chunk::{self, plan_chunks};
use bdr_sync::frame::{CutKind, Frame, PROTO_VERSION};
use bdr_sync::{Geometry, RoaringBitmap};

pub const VOLUME: [u8; 16] = *b"bdr-test-volume!";
pub const OTHER_VOLUME: [u8; 16] = *b"some-other-vol..";

/// xorshift64*: deterministic pseudo-random numbers, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// 64 KiB regions; `regions` full ones plus a 3.5 KiB tail region.
pub fn geometry(regions: u64) -> Geometry {
    Geometry::new(128, 128 * regions + 7).unwrap()
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub g: Geometry,
}

impl Fixture {
    pub fn new(regions: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            dir,
            g: geometry(regions),
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn source(&self) -> PathBuf {
        self.path("source.img")
    }
    pub fn device(&self) -> PathBuf {
        self.path("replica.img")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }
    /// Creates the source (random content) and a zeroed replica device of `extra` more bytes.
    pub fn create(&self, rng: &mut Rng, extra: i64) {
        let mut data = vec![0u8; self.g.dev_bytes() as usize];
        rng.fill(&mut data);
        fs::write(self.source(), &data).unwrap();
        let f = File::create(self.device()).unwrap();
        f.set_len((self.g.dev_bytes() as i64 + extra) as u64)
            .unwrap();
    }
    pub fn source_bytes(&self) -> Vec<u8> {
        fs::read(self.source()).unwrap()
    }
    /// The replica device, cut to the volume size.
    pub fn device_bytes(&self) -> Vec<u8> {
        let mut d = fs::read(self.device()).unwrap();
        d.truncate(self.g.dev_bytes() as usize);
        d
    }
}

/// Writes random data at `n` random places of `path` (each a random length, sometimes
/// spanning regions); returns the regions touched.
pub fn scribble(path: &Path, g: &Geometry, rng: &mut Rng, n: usize) -> RoaringBitmap {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut set = RoaringBitmap::new();
    for _ in 0..n {
        let off = rng.below(g.dev_bytes() / 512) * 512;
        let len = (1 + rng.below(300)) * 512;
        let len = len.min(g.dev_bytes() - off);
        let mut buf = vec![0u8; len as usize];
        if rng.below(4) == 0 {
            buf.fill(0); // compressible
        } else {
            rng.fill(&mut buf);
        }
        f.write_all_at(&buf, off).unwrap();
        for r in g.regions_for_range(off, len) {
            set.insert(r as u32);
        }
    }
    set
}

pub fn hello(g: &Geometry, volume: [u8; 16]) -> Frame {
    Frame::Hello {
        proto: PROTO_VERSION,
        volume,
        dev_bytes: g.dev_bytes(),
        region_bytes: g.region_bytes() as u32,
    }
}

/// Every frame of a cut of `image`, CutBegin to CutEnd.
pub fn cut_frames(
    image: &[u8],
    g: &Geometry,
    regions: &RoaringBitmap,
    cut: u64,
    parent: Option<u64>,
    kind: CutKind,
) -> Vec<Frame> {
    let mut v = Vec::new();
    let mut pieces = chunk::region_pieces(regions).into_iter();
    v.push(Frame::CutBegin {
        cut,
        parent,
        kind,
        regions: pieces.next().unwrap(),
    });
    v.extend(pieces.map(|p| Frame::CutRegions { regions: p }));
    let mut bytes = 0;
    let mut chunks = 0;
    for spec in plan_chunks(regions, g) {
        let d = &image[spec.offset as usize..(spec.offset + u64::from(spec.len)) as usize];
        v.push(chunk::encode_chunk(spec.offset, d, 1));
        bytes += u64::from(spec.len);
        chunks += 1;
    }
    v.push(Frame::CutEnd { cut, chunks, bytes });
    v
}

pub fn all_regions(g: &Geometry) -> RoaringBitmap {
    let mut s = RoaringBitmap::new();
    s.insert_range(0..g.nr_regions as u32);
    s
}

/// Asserts two images are equal, reporting the first differing byte.
#[track_caller]
pub fn assert_same(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!(
            "{what}: first difference at byte {i} (region {})",
            i / 65536
        );
    }
}

/// Every frame of a cut shipped in passes (pre-copy): pass `i` ships the regions
/// `passes[i].1` read from image `passes[i].0`; CutBegin, then CutPass before each later
/// pass, then CutEnd counting every chunk.
pub fn pass_frames(
    passes: &[(&[u8], &RoaringBitmap)],
    g: &Geometry,
    cut: u64,
    parent: Option<u64>,
) -> Vec<Frame> {
    let mut v = Vec::new();
    let mut bytes = 0;
    let mut chunks = 0;
    for (i, (image, regions)) in passes.iter().enumerate() {
        let mut pieces = chunk::region_pieces(regions).into_iter();
        let first = pieces.next().unwrap_or_default();
        v.push(if i == 0 {
            Frame::CutBegin {
                cut,
                parent,
                kind: CutKind::Incremental,
                regions: first,
            }
        } else {
            Frame::CutPass { regions: first }
        });
        v.extend(pieces.map(|p| Frame::CutRegions { regions: p }));
        for spec in plan_chunks(regions, g) {
            let d = &image[spec.offset as usize..(spec.offset + u64::from(spec.len)) as usize];
            v.push(chunk::encode_chunk(spec.offset, d, 1));
            bytes += u64::from(spec.len);
            chunks += 1;
        }
    }
    v.push(Frame::CutEnd { cut, chunks, bytes });
    v
}
