//! Frame encoding and decoding: round trips, and hostile input giving typed errors.

mod common;

use std::time::Duration;

use bdr_sync::frame::{
    decode_frame, encode_frame, Codec, CutKind, ErrorCode, Frame, FrameError, FrameReader,
    FrameWriter, HEADER_LEN, MAX_FRAME_PAYLOAD, PROTO_VERSION,
};
use common::Rng;
use tokio::io::AsyncWriteExt;

fn every_frame() -> Vec<Frame> {
    let mut regions = Vec::new();
    let set: bdr_sync::RoaringBitmap = [1u32, 2, 99, 1 << 20].into_iter().collect();
    set.serialize_into(&mut regions).unwrap();
    vec![
        Frame::Hello {
            proto: PROTO_VERSION,
            volume: [7; 16],
            dev_bytes: 1 << 40,
            region_bytes: 65536,
        },
        Frame::Welcome {
            proto: PROTO_VERSION,
            volume: Some([9; 16]),
            last_cut: Some(41),
            dev_bytes: 1 << 41,
        },
        Frame::Welcome {
            proto: PROTO_VERSION,
            volume: None,
            last_cut: None,
            dev_bytes: 0,
        },
        Frame::CutBegin {
            cut: 42,
            parent: Some(41),
            kind: CutKind::Incremental,
            regions: regions.clone(),
        },
        Frame::CutBegin {
            cut: 1,
            parent: None,
            kind: CutKind::Rescan,
            regions: vec![],
        },
        Frame::CutRegions { regions },
        Frame::Chunk {
            offset: 65536,
            len: 65536,
            hash: [3; 32],
            codec: Codec::Zstd,
            data: vec![1, 2, 3],
        },
        Frame::Chunk {
            offset: 0,
            len: 4,
            hash: [4; 32],
            codec: Codec::Raw,
            data: vec![0xde, 0xad, 0xbe, 0xef],
        },
        Frame::CutEnd {
            cut: 42,
            chunks: 3,
            bytes: 3 * 65536,
        },
        Frame::Committed { cut: 42 },
        Frame::HashRequest {
            first_region: 5,
            count: 1024,
        },
        Frame::Hashes {
            first_region: 5,
            hashes: vec![[1; 32], [2; 32]],
        },
        Frame::Error {
            code: ErrorCode::WrongVolume,
            message: "this replica holds volume x — ünïcödé".into(),
        },
        Frame::Error {
            code: ErrorCode::Protocol,
            message: String::new(),
        },
    ]
}

#[test]
fn every_frame_round_trips() {
    for f in every_frame() {
        let bytes = encode_frame(&f).unwrap();
        assert_eq!(&bytes[0..4], b"BDRF");
        let (g, used) = decode_frame(&bytes).unwrap();
        assert_eq!(g, f);
        assert_eq!(used, bytes.len());
    }
    // All error codes.
    for code in [
        ErrorCode::WrongVolume,
        ErrorCode::DeviceTooSmall,
        ErrorCode::WrongParent,
        ErrorCode::BadFrame,
        ErrorCode::HashMismatch,
        ErrorCode::OutOfRange,
        ErrorCode::NoSpace,
        ErrorCode::Io,
        ErrorCode::Protocol,
    ] {
        let f = Frame::error(code, "m");
        assert_eq!(decode_frame(&encode_frame(&f).unwrap()).unwrap().0, f);
    }
}

#[tokio::test]
async fn every_frame_round_trips_over_a_stream() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let frames = every_frame();
    let sent = frames.clone();
    let writer = tokio::spawn(async move {
        let mut w = FrameWriter::new(a);
        for f in &sent {
            w.write_frame(f).await.unwrap();
        }
        w.shutdown().await.unwrap();
        w.bytes_written()
    });
    let mut r = FrameReader::new(b);
    for f in &frames {
        assert_eq!(&r.read_frame().await.unwrap(), f);
    }
    assert!(matches!(r.read_frame().await, Err(FrameError::Closed)));
    assert_eq!(writer.await.unwrap(), r.bytes_read());
}

#[test]
fn long_error_messages_are_cut() {
    let f = Frame::error(ErrorCode::Io, "é".repeat(10_000));
    let Frame::Error { message, .. } = &f else {
        panic!()
    };
    assert!(message.len() <= bdr_sync::frame::MAX_ERROR_MESSAGE);
    assert!(encode_frame(&f).is_ok());
}

fn sample() -> Vec<u8> {
    encode_frame(&Frame::CutEnd {
        cut: 1,
        chunks: 2,
        bytes: 3,
    })
    .unwrap()
}

#[test]
fn truncated_frames_at_every_length() {
    let bytes = sample();
    assert!(matches!(decode_frame(&[]), Err(FrameError::Closed)));
    for n in 1..bytes.len() {
        match decode_frame(&bytes[..n]) {
            Err(FrameError::Truncated { expected, got }) => {
                assert_eq!(got, n);
                assert!(expected > n);
            }
            other => panic!("prefix of {n} bytes: {other:?}"),
        }
    }
}

#[tokio::test]
async fn truncated_stream_is_a_typed_error() {
    let bytes = sample();
    for n in [1, 4, HEADER_LEN - 1, HEADER_LEN, bytes.len() - 1] {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        a.write_all(&bytes[..n]).await.unwrap();
        drop(a);
        let mut r = FrameReader::new(b);
        let e = r.read_frame().await.unwrap_err();
        assert!(matches!(e, FrameError::Truncated { .. }), "{n}: {e}");
        assert_eq!(e.code(), ErrorCode::BadFrame);
    }
}

#[test]
fn garbage_bad_magic() {
    let e = decode_frame(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap_err();
    assert!(
        matches!(e, FrameError::BadMagic { found } if &found == b"GET "),
        "{e}"
    );
    assert!(e.to_string().contains("does not speak the bdr protocol"));
}

#[test]
fn unknown_version_and_flags() {
    let mut b = sample();
    b[4..6].copy_from_slice(&7u16.to_le_bytes());
    let e = decode_frame(&b).unwrap_err();
    assert!(
        matches!(e, FrameError::UnsupportedVersion { found: 7 }),
        "{e}"
    );
    assert!(e.to_string().contains("matching bdr versions"));
    let mut b = sample();
    b[6] = 1;
    assert!(matches!(
        decode_frame(&b).unwrap_err(),
        FrameError::BadFlags { flags: 1 }
    ));
}

#[tokio::test]
async fn oversized_length_is_refused_before_reading_the_payload() {
    let mut b = sample();
    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = decode_frame(&b).unwrap_err();
    assert!(
        matches!(e, FrameError::Oversized { len, max } if len == u64::from(u32::MAX) && max == MAX_FRAME_PAYLOAD),
        "{e}"
    );
    // Over a stream: only the header was sent; the error must come without waiting for
    // (or allocating) 4 GiB.
    let (mut a, b2) = tokio::io::duplex(1 << 16);
    a.write_all(&b[..HEADER_LEN]).await.unwrap();
    let mut r = FrameReader::new(b2);
    let e = tokio::time::timeout(Duration::from_secs(5), r.read_frame())
        .await
        .expect("no wait for the payload")
        .unwrap_err();
    assert!(matches!(e, FrameError::Oversized { .. }), "{e}");
    // Just over the limit.
    b[8..12].copy_from_slice(&(MAX_FRAME_PAYLOAD + 1).to_le_bytes());
    assert!(matches!(
        decode_frame(&b).unwrap_err(),
        FrameError::Oversized { .. }
    ));
}

#[test]
fn encoder_refuses_oversized_frames() {
    let f = Frame::Chunk {
        offset: 0,
        len: 0,
        hash: [0; 32],
        codec: Codec::Raw,
        data: vec![0; MAX_FRAME_PAYLOAD as usize + 1],
    };
    assert!(matches!(
        encode_frame(&f).unwrap_err(),
        FrameError::Oversized { .. }
    ));
}

#[test]
fn bad_checksum() {
    let mut b = sample();
    let last = b.len() - 1;
    b[last] ^= 0x40;
    assert!(matches!(
        decode_frame(&b).unwrap_err(),
        FrameError::BadChecksum
    ));
    let mut b = sample();
    b[12] ^= 1;
    assert!(matches!(
        decode_frame(&b).unwrap_err(),
        FrameError::BadChecksum
    ));
}

/// A header with a correct checksum around `payload`.
fn frame_around(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(b"BDRF");
    v.extend_from_slice(&PROTO_VERSION.to_le_bytes());
    v.extend_from_slice(&0u16.to_le_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(&blake3::hash(payload).as_bytes()[..8]);
    v.extend_from_slice(payload);
    v
}

#[test]
fn rkyv_validation_failure_is_typed() {
    // Valid header and checksum, garbage archive.
    for payload in [&[0xffu8; 64][..], &[0u8; 3][..], &[][..], &[0x41; 1000][..]] {
        let e = decode_frame(&frame_around(payload)).unwrap_err();
        assert!(matches!(e, FrameError::Invalid(_)), "{e}");
    }
    // A real payload with its enum tag corrupted.
    let good = sample();
    let mut payload = good[HEADER_LEN..].to_vec();
    for i in 0..payload.len() {
        payload[i] ^= 0xff;
        match decode_frame(&frame_around(&payload)) {
            Ok(_) | Err(FrameError::Invalid(_)) => {}
            Err(e) => panic!("byte {i}: {e}"),
        }
        payload[i] ^= 0xff;
    }
    // A Chunk whose data length or pointer is made to point past the payload: somewhere in
    // the root object at the end of the archive; at least one such edit must be caught.
    let chunk = encode_frame(&Frame::Chunk {
        offset: 0,
        len: 4,
        hash: [0; 32],
        codec: Codec::Raw,
        data: vec![1; 300],
    })
    .unwrap();
    let payload = chunk[HEADER_LEN..].to_vec();
    let mut invalid = 0;
    for i in (payload.len() - 64..=payload.len() - 4).step_by(4) {
        let mut p = payload.clone();
        p[i..i + 4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
        match decode_frame(&frame_around(&p)) {
            Err(FrameError::Invalid(_)) => invalid += 1,
            Ok(_) => {}
            Err(e) => panic!("offset {i}: {e}"),
        }
    }
    assert!(invalid > 0, "no out-of-bounds edit was caught");
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let good: Vec<Vec<u8>> = every_frame()
        .iter()
        .map(|f| encode_frame(f).unwrap())
        .collect();
    for i in 0..20_000 {
        let mut b = good[i % good.len()].clone();
        // Mutate a few bytes, keeping or fixing the checksum half of the time.
        for _ in 0..1 + rng.below(4) {
            let p = rng.below(b.len() as u64) as usize;
            b[p] = rng.next() as u8;
        }
        if rng.below(2) == 0 && b.len() >= HEADER_LEN {
            let len = (b.len() - HEADER_LEN) as u32;
            b[0..4].copy_from_slice(b"BDRF");
            b[4..6].copy_from_slice(&PROTO_VERSION.to_le_bytes());
            b[6..8].fill(0);
            b[8..12].copy_from_slice(&len.to_le_bytes());
            let sum = blake3::hash(&b[HEADER_LEN..]);
            b[12..20].copy_from_slice(&sum.as_bytes()[..8]);
        }
        let _ = decode_frame(&b);
    }
}

#[tokio::test]
async fn read_timeout_helper() {
    let (_a, b) = tokio::io::duplex(64);
    let mut r = FrameReader::new(b);
    let e = r
        .read_frame_timeout(Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(e, FrameError::Timeout(d) if d == Duration::from_millis(50)));
    assert_eq!(e.code(), ErrorCode::Protocol);
}

/// The in-place encoder writes exactly the bytes of a payload serialized on its own: the
/// wire format does not depend on the encoder.
#[test]
fn in_place_encoding_is_byte_identical() {
    use bdr_sync::frame::{encode_frame_buf, HEADER_LEN};
    let frames = [
        Frame::Hello {
            proto: 1,
            volume: [3; 16],
            dev_bytes: 1 << 30,
            region_bytes: 65536,
        },
        Frame::Welcome {
            proto: 1,
            volume: Some([4; 16]),
            last_cut: None,
            dev_bytes: 7,
        },
        Frame::CutBegin {
            cut: 9,
            parent: Some(8),
            kind: CutKind::Rescan,
            regions: vec![1, 2, 3, 4, 5],
        },
        Frame::CutRegions { regions: vec![] },
        Frame::Chunk {
            offset: 65536,
            len: 65536,
            hash: [7; 32],
            codec: Codec::Raw,
            data: (0..65536u32).map(|i| (i * 7) as u8).collect(),
        },
        Frame::Chunk {
            offset: 0,
            len: 4096,
            hash: [1; 32],
            codec: Codec::Zstd,
            data: vec![9; 13],
        },
        Frame::CutEnd {
            cut: 9,
            chunks: 2,
            bytes: 3,
        },
        Frame::Committed { cut: 9 },
        Frame::HashRequest {
            first_region: 5,
            count: 6,
        },
        Frame::Hashes {
            first_region: 5,
            hashes: vec![[2; 32]; 3],
        },
        Frame::error(ErrorCode::Io, "disk on fire"),
    ];
    for f in &frames {
        let alone = rkyv::to_bytes::<rkyv::rancor::Error>(f).unwrap();
        let enc = encode_frame_buf(f).unwrap();
        assert_eq!(&enc.as_bytes()[HEADER_LEN..], &alone[..], "{f:?}");
        assert_eq!(enc.len(), HEADER_LEN + alone.len());
        assert_eq!(encode_frame(f).unwrap(), enc.as_bytes());
        assert_eq!(&decode_frame(enc.as_bytes()).unwrap().0, f);
    }
}
