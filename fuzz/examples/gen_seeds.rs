//! Writes the committed seed corpora, `seeds/<target>/`, deterministically:
//!
//! * `frame_decode`: every kind of frame, encoded, in both input modes (wire stream, and
//!   payload to be wrapped in a valid header), plus a stream of several frames;
//! * `replica_session`: inputs found by a deterministic random search, one per distinct
//!   behaviour (commits, seeds, crashes at commit / while receiving, recovery replays and
//!   discards, damaged journals, hash requests, multi-pass commits, crashes committing a
//!   multi-pass cut), preferring short ones.
//!
//! Run from `fuzz/`: `cargo run --release --example gen_seeds` (stable is fine).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use bdr_fuzz::replica::{self, Input, Scratch, Stats};
use bdr_sync::chunk;
use bdr_sync::frame::{encode_frame, Codec, CutKind, ErrorCode, Frame, HEADER_LEN};
use bdr_sync::PROTO_VERSION;
use roaring::RoaringBitmap;

fn frames() -> Vec<(&'static str, Frame)> {
    let set: RoaringBitmap = [1u32, 2, 9, 15].into_iter().collect();
    let mut regions = Vec::new();
    set.serialize_into(&mut regions).unwrap();
    let text: Vec<u8> = b"block replica cut journal\n".repeat(40);
    vec![
        (
            "hello",
            Frame::Hello {
                proto: PROTO_VERSION,
                volume: *b"bdr-fuzz-volume!",
                dev_bytes: 63488,
                region_bytes: 4096,
            },
        ),
        (
            "welcome",
            Frame::Welcome {
                proto: PROTO_VERSION,
                volume: Some([9; 16]),
                last_cut: Some(41),
                dev_bytes: 1 << 30,
            },
        ),
        (
            "welcome-new",
            Frame::Welcome {
                proto: PROTO_VERSION,
                volume: None,
                last_cut: None,
                dev_bytes: 0,
            },
        ),
        (
            "cutbegin",
            Frame::CutBegin {
                cut: 42,
                parent: Some(41),
                kind: CutKind::Incremental,
                regions: regions.clone(),
            },
        ),
        (
            "cutbegin-rescan",
            Frame::CutBegin {
                cut: 1,
                parent: None,
                kind: CutKind::Rescan,
                regions: vec![],
            },
        ),
        (
            "cutregions",
            Frame::CutRegions {
                regions: regions.clone(),
            },
        ),
        ("cutpass", Frame::CutPass { regions }),
        ("chunk-zstd", chunk::encode_chunk(4096, &text, 1)),
        (
            "chunk-raw",
            Frame::Chunk {
                offset: 0,
                len: 8,
                hash: chunk::hash(b"\xde\xad\xbe\xef\x01\x02\x03\x04"),
                codec: Codec::Raw,
                data: b"\xde\xad\xbe\xef\x01\x02\x03\x04".to_vec(),
            },
        ),
        (
            "cutend",
            Frame::CutEnd {
                cut: 42,
                chunks: 4,
                bytes: 4 * 4096,
            },
        ),
        ("committed", Frame::Committed { cut: 42 }),
        (
            "hashrequest",
            Frame::HashRequest {
                first_region: 3,
                count: 5,
            },
        ),
        (
            "hashes",
            Frame::Hashes {
                first_region: 3,
                hashes: vec![[1; 32], [2; 32]],
            },
        ),
        (
            "error",
            Frame::error(ErrorCode::WrongVolume, "this replica holds volume x — ü"),
        ),
    ]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).unwrap();
}

fn frame_seeds(dir: &Path) {
    let mut stream = vec![0u8, 0];
    for (name, f) in frames() {
        let wire = encode_frame(&f).unwrap();
        // Mode byte 0: a wire stream (the second byte, here 0, is also the reader's step).
        write(dir, &format!("wire-{name}"), &[&[0u8][..], &wire].concat());
        // Mode byte 1: the payload alone; the target adds a valid header.
        write(
            dir,
            &format!("payload-{name}"),
            &[&[1u8][..], &wire[HEADER_LEN..]].concat(),
        );
        if stream.len() < 2048 {
            stream.extend_from_slice(&wire);
        }
    }
    write(dir, "wire-stream", &stream);
}

/// xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The behaviours an input shows, coarsely.
fn signature(s: &Stats) -> [bool; 11] {
    [
        s.commits > 0,
        s.commits > 2,
        s.seeds_committed > 0,
        s.hashes > 0,
        s.crashes_at_commit > 0,
        s.crashes_receiving > 0,
        s.replayed > 0 || s.recovery_crashes > 0,
        s.discarded > 0,
        s.torn > 0,
        s.multi_pass_commits > 0,
        s.multi_pass_crashes > 0,
    ]
}

fn session_seeds(dir: &Path) {
    let scratch = Scratch::new();
    let mut rng = Rng(0x0bd7_f022_5eed_0001);
    let mut best: BTreeMap<[bool; 11], Vec<u8>> = BTreeMap::new();
    for _ in 0..150_000 {
        let len = 16 + (rng.next() % 240) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(&bytes)) else {
            continue;
        };
        let sig = signature(&replica::check(&scratch, &input));
        if sig == [false; 11] {
            continue;
        }
        match best.get(&sig) {
            Some(b) if b.len() <= bytes.len() => {}
            _ => {
                best.insert(sig, bytes);
            }
        }
    }
    for (i, (sig, bytes)) in best.iter().enumerate() {
        let tag: String = sig.iter().map(|b| if *b { '1' } else { '0' }).collect();
        write(dir, &format!("search-{i:02}-{tag}"), bytes);
    }
    eprintln!("replica_session: {} seeds", best.len());
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for t in ["frame_decode", "replica_session"] {
        let d = root.join(t);
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
    }
    frame_seeds(&root.join("frame_decode"));
    session_seeds(&root.join("replica_session"));
}
