//! Chunks: one region of the device each (the last one clipped at the device end), hashed
//! with blake3 over the plain data and sent raw or zstd-compressed.

use std::cell::RefCell;
use std::io;

use bdr_bitmap::Geometry;
use roaring::RoaringBitmap;

use crate::frame::{Codec, Frame, MAX_REGION_BYTES, MAX_REGION_PIECE};

/// Default zstd level: fast, and most of the gain on block data (zeros, text, metadata).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Checks a zstd level: 1..=19 trade speed for size as usual; negative levels are zstd's
/// fast modes (down to -100 here: below that nothing is left to compress); 0 is zstd's
/// default (3). Levels above 19 need large windows the 64 KiB chunks cannot use.
pub fn check_zstd_level(level: i32) -> Result<i32, String> {
    if (-100..=19).contains(&level) {
        Ok(level)
    } else {
        Err(format!(
            "zstd level {level} is out of range: use -100 (fastest) to 19 (smallest); 1 is the default"
        ))
    }
}

/// One chunk to ship: region `region` = bytes `offset .. offset + len` of the device.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChunkSpec {
    pub region: u64,
    pub offset: u64,
    pub len: u32,
}

/// Errors of chunk decoding and planning.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("region {region} is outside the device ({nr_regions} regions)")]
    OutOfRange { region: u64, nr_regions: u64 },
    #[error(
        "region size {0} bytes is not supported (512 B to {MAX_REGION_BYTES} B, a multiple of 512)"
    )]
    RegionSize(u64),
    #[error("chunk declares {declared} bytes but carries {got} bytes of raw data")]
    RawLength { declared: u32, got: usize },
    #[error("chunk of {declared} bytes does not decompress: {reason}")]
    Decompress { declared: u32, reason: String },
    #[error("chunk declares {declared} bytes but decompresses to {got}")]
    DecompressedLength { declared: u32, got: usize },
    #[error("region set does not deserialize: {0}")]
    Regions(io::Error),
}

/// Checks that a geometry's region size can be shipped in frames.
pub fn check_geometry(g: &Geometry) -> Result<(), ChunkError> {
    let rb = g.region_bytes();
    if rb == 0 || rb > u64::from(MAX_REGION_BYTES) {
        return Err(ChunkError::RegionSize(rb));
    }
    Ok(())
}

/// Fails if a region of `regions` is outside `g`.
pub fn check_regions(regions: &RoaringBitmap, g: &Geometry) -> Result<(), ChunkError> {
    match regions.max() {
        Some(max) if u64::from(max) >= g.nr_regions => Err(ChunkError::OutOfRange {
            region: max.into(),
            nr_regions: g.nr_regions,
        }),
        _ => Ok(()),
    }
}

/// The chunk of region `r` (`None` if it is past the device end).
pub fn chunk_of_region(g: &Geometry, r: u64) -> Option<ChunkSpec> {
    let range = g.region_byte_range(r);
    if range.is_empty() {
        return None;
    }
    Some(ChunkSpec {
        region: r,
        offset: range.start,
        len: (range.end - range.start) as u32,
    })
}

/// The chunks of `regions`, in increasing offset order, lazily (no allocation per region).
/// Regions past the device end are skipped (check them with [`check_regions`] first).
pub fn plan_chunks<'a>(
    regions: &'a RoaringBitmap,
    g: &'a Geometry,
) -> impl Iterator<Item = ChunkSpec> + 'a {
    regions
        .iter()
        .map_while(move |r| chunk_of_region(g, u64::from(r)))
}

/// blake3 of plain chunk data.
pub fn hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
}

/// Compresses `data` with zstd at `level`; `None` when that would not make it smaller (send
/// it raw). Reuses one compression context per thread.
pub fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l) != Some(level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, comp) = c.as_mut().unwrap();
        // Output bigger than the input is useless: cap it there.
        let mut out = Vec::with_capacity(data.len());
        match comp.compress_to_buffer(data, &mut out) {
            Ok(n) if n < data.len() => Some(out),
            _ => None,
        }
    })
}

/// Builds the [`Frame::Chunk`] of plain `data` at `offset`: hash, then zstd if it helps.
pub fn encode_chunk(offset: u64, data: &[u8], level: i32) -> Frame {
    let h = hash(data);
    let (codec, payload) = match compress(data, level) {
        Some(z) => (Codec::Zstd, z),
        None => (Codec::Raw, data.to_vec()),
    };
    Frame::Chunk {
        offset,
        len: data.len() as u32,
        hash: h,
        codec,
        data: payload,
    }
}

/// Decodes a chunk's data to exactly `declared` plain bytes. The output is capped at
/// `declared` bytes (which the caller has checked against the region size) whatever the
/// compressed stream claims, so a zip bomb costs at most `declared` bytes of memory.
pub fn decode_chunk_data(
    codec: Codec,
    data: Vec<u8>,
    declared: u32,
    decompressor: &mut zstd::bulk::Decompressor<'static>,
) -> Result<Vec<u8>, ChunkError> {
    match codec {
        Codec::Raw => {
            if data.len() != declared as usize {
                return Err(ChunkError::RawLength {
                    declared,
                    got: data.len(),
                });
            }
            Ok(data)
        }
        Codec::Zstd => {
            let mut out = Vec::with_capacity(declared as usize);
            let n = decompressor
                .decompress_to_buffer(&data, &mut out)
                .map_err(|e| ChunkError::Decompress {
                    declared,
                    reason: e.to_string(),
                })?;
            if n != declared as usize {
                return Err(ChunkError::DecompressedLength { declared, got: n });
            }
            Ok(out)
        }
    }
}

/// Serializes a region set into pieces of at most about [`MAX_REGION_PIECE`] bytes each:
/// the first goes in `CutBegin`, the others in `CutRegions`. Always at least one piece.
pub fn region_pieces(regions: &RoaringBitmap) -> Vec<Vec<u8>> {
    let ser = |b: &RoaringBitmap| {
        let mut v = Vec::with_capacity(b.serialized_size());
        b.serialize_into(&mut v).expect("writing to a Vec");
        v
    };
    if regions.serialized_size() <= MAX_REGION_PIECE {
        return vec![ser(regions)];
    }
    // Spans of 2^24 regions = 256 containers of at most 8 KiB (+ 8 B of description)
    // each: ~2.1 MiB per piece. Cut out with a mask, container by container (no per-region
    // work); empty spans are skipped.
    const SPAN: u64 = 1 << 24;
    let (Some(min), Some(max)) = (regions.min(), regions.max()) else {
        return vec![ser(regions)];
    };
    let mut pieces = Vec::new();
    for span in u64::from(min) / SPAN..=u64::from(max) / SPAN {
        let mut mask = RoaringBitmap::new();
        mask.insert_range((span * SPAN) as u32..=((span + 1) * SPAN - 1) as u32);
        mask &= regions;
        if !mask.is_empty() {
            pieces.push(ser(&mask));
        }
    }
    pieces
}

/// Deserializes one piece of a region set (hostile input: errors, never panics).
pub fn parse_region_piece(bytes: &[u8]) -> Result<RoaringBitmap, ChunkError> {
    RoaringBitmap::deserialize_from(bytes).map_err(ChunkError::Regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        // 64 KiB regions, 10 regions and a 3.5 KiB one.
        Geometry::new(128, 128 * 10 + 7).unwrap()
    }

    #[test]
    fn plan_clips_last_region() {
        let g = geo();
        let set: RoaringBitmap = [0u32, 3, 10].into_iter().collect();
        let plan: Vec<_> = plan_chunks(&set, &g).collect();
        assert_eq!(
            plan,
            vec![
                ChunkSpec {
                    region: 0,
                    offset: 0,
                    len: 65536
                },
                ChunkSpec {
                    region: 3,
                    offset: 3 * 65536,
                    len: 65536
                },
                ChunkSpec {
                    region: 10,
                    offset: 10 * 65536,
                    len: 3584
                },
            ]
        );
        assert!(check_regions(&set, &g).is_ok());
        let bad: RoaringBitmap = [11u32].into_iter().collect();
        assert!(matches!(
            check_regions(&bad, &g),
            Err(ChunkError::OutOfRange {
                region: 11,
                nr_regions: 11
            })
        ));
    }

    #[test]
    fn zeros_compress_random_does_not() {
        let zeros = vec![0u8; 65536];
        let Frame::Chunk {
            codec,
            data,
            hash: h,
            len,
            ..
        } = encode_chunk(0, &zeros, 1)
        else {
            panic!()
        };
        assert_eq!(codec, Codec::Zstd);
        assert!(data.len() < 1000, "{}", data.len());
        assert_eq!(len, 65536);
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        let out = decode_chunk_data(codec, data, len, &mut d).unwrap();
        assert_eq!(out, zeros);
        assert_eq!(hash(&out), h);

        let mut rnd = vec![0u8; 65536];
        let mut x = 0x1234_5678_9abc_def0u64;
        for b in rnd.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let Frame::Chunk { codec, data, .. } = encode_chunk(0, &rnd, 3) else {
            panic!()
        };
        assert_eq!(codec, Codec::Raw);
        assert_eq!(data, rnd);
    }

    #[test]
    fn zip_bomb_is_capped() {
        let bomb = zstd::bulk::compress(&vec![0u8; 4 << 20], 1).unwrap();
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        let e = decode_chunk_data(Codec::Zstd, bomb, 65536, &mut d).unwrap_err();
        assert!(matches!(e, ChunkError::Decompress { .. }), "{e}");
        // Shorter than declared is refused too.
        let short = zstd::bulk::compress(&[7u8; 100], 1).unwrap();
        let e = decode_chunk_data(Codec::Zstd, short, 4096, &mut d).unwrap_err();
        assert!(
            matches!(e, ChunkError::DecompressedLength { got: 100, .. }),
            "{e}"
        );
        let e = decode_chunk_data(Codec::Zstd, vec![1, 2, 3], 4096, &mut d).unwrap_err();
        assert!(matches!(e, ChunkError::Decompress { .. }), "{e}");
        let e = decode_chunk_data(Codec::Raw, vec![0; 10], 4096, &mut d).unwrap_err();
        assert!(matches!(e, ChunkError::RawLength { .. }), "{e}");
    }

    #[test]
    fn region_pieces_roundtrip() {
        let small: RoaringBitmap = [1u32, 5, 1 << 30].into_iter().collect();
        let p = region_pieces(&small);
        assert_eq!(p.len(), 1);
        assert_eq!(parse_region_piece(&p[0]).unwrap(), small);
        assert_eq!(region_pieces(&RoaringBitmap::new()).len(), 1);

        // Dense: 600 full containers (8 KiB each) → more than one piece.
        let mut big = RoaringBitmap::new();
        big.insert_range(0..600 * 65536);
        let pieces = region_pieces(&big);
        assert!(pieces.len() >= 2, "{}", pieces.len());
        let mut union = RoaringBitmap::new();
        for p in &pieces {
            assert!(p.len() <= MAX_REGION_PIECE);
            union |= parse_region_piece(p).unwrap();
        }
        assert_eq!(union, big);
        assert!(parse_region_piece(&[0xff; 7]).is_err());
    }
}
