//! `frame_decode`: arbitrary bytes through the sync slice decoder and the async
//! [`FrameReader`]; neither may panic or allocate more than the frame's declared length,
//! both must agree, and a decoded frame must survive a re-encode / decode round trip.
//!
//! Input layout: the first byte selects the mode.
//! * even: the rest is a wire stream, fed as is (headers are fuzzed too);
//! * odd: the rest is one *payload*: it gets a valid header (magic, version, flags, length,
//!   checksum) so the fuzzer reaches rkyv's validation instead of dying at the checksum.
//!
//! In both modes the second byte (if any) also sets the read size of the async reader
//! (1..=256 bytes per `poll_read`), to exercise its partial reads.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use bdr_sync::chunk;
use bdr_sync::frame::{
    decode_frame, encode_frame, Frame, FrameError, FrameReader, FRAME_MAGIC, HEADER_LEN,
    MAX_FRAME_PAYLOAD, PROTO_VERSION,
};
use tokio::io::{AsyncRead, ReadBuf};

/// Whether a [`CountingAlloc`] is installed (otherwise the allocation checks are skipped).
pub static COUNTING: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Accounting of the measuring thread only: other threads (the test harness runs tests
    /// in parallel) allocate as they like without disturbing it.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// A global allocator over the system one that records, on a thread inside [`measured`],
/// the largest single allocation and the peak of live bytes.
pub struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping only
// touches const-initialised thread-locals (no allocation, no reentrancy).
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        note(l.size(), 0);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        note(l.size(), 0);
        // SAFETY: as above.
        unsafe { std::alloc::System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        note(0, l.size());
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        note(new, l.size());
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(p, l, new) }
    }
}

fn note(add: usize, sub: usize) {
    COUNTING.store(1, Ordering::Relaxed);
    let _ = ACTIVE.try_with(|a| {
        if a.get() {
            LARGEST.with(|m| m.set(m.get().max(add)));
            let live = LIVE.with(|l| {
                let v = l.get().saturating_sub(sub) + add;
                l.set(v);
                v
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

/// Runs `f` and returns its result with (largest single allocation, peak live bytes above
/// the level at the start) during it, counting this thread's allocations only.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    LARGEST.with(|m| m.set(0));
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    ACTIVE.with(|a| a.set(true));
    let r = f();
    ACTIVE.with(|a| a.set(false));
    (r, LARGEST.with(Cell::get), PEAK.with(Cell::get))
}

/// Small allocations any decode may make besides the payload (error strings, rkyv's
/// validator context).
const SLACK: usize = 16 << 10;

/// The payload length a wire header declares, if the bytes hold a whole header.
fn declared_len(wire: &[u8]) -> Option<usize> {
    let h = wire.get(..HEADER_LEN)?;
    Some(u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize)
}

/// Wraps `payload` in a valid frame header.
pub fn frame_around(payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN + payload.len());
    b.extend_from_slice(&FRAME_MAGIC);
    b.extend_from_slice(&PROTO_VERSION.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&blake3::hash(payload).as_bytes()[..8]);
    b.extend_from_slice(payload);
    b
}

/// An in-memory reader that hands out at most `step` bytes per read.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// Polls a future that never waits (its reader is in memory) to completion.
fn run_ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory FrameReader returned Pending"),
    }
}

fn same_error_kind(a: &FrameError, b: &FrameError) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Decodes one frame from `wire` with the sync decoder, checking the allocation bounds and
/// the round trip. Returns the decoder's result.
fn decode_checked(wire: &[u8]) -> Result<(Frame, usize), FrameError> {
    let (r, largest, peak) = measured(|| decode_frame(wire));
    if COUNTING.load(Ordering::Relaxed) != 0 {
        // The slice decoder copies the payload only once the whole frame is in `wire`.
        let bound = declared_len(wire).map_or(0, |l| l.min(wire.len()));
        assert!(
            largest <= bound + SLACK,
            "decode_frame made a {largest}-byte allocation for a frame declaring {bound} bytes"
        );
        assert!(
            peak <= 2 * bound + SLACK,
            "decode_frame had {peak} bytes live for a frame declaring {bound} bytes"
        );
    }
    match &r {
        Ok((frame, used)) => {
            let len = declared_len(wire).expect("a decoded frame has a header");
            assert_eq!(*used, HEADER_LEN + len, "bytes used by {}", frame.name());
            assert!(len <= MAX_FRAME_PAYLOAD as usize);
            round_trip(frame);
        }
        Err(FrameError::Oversized { len, .. }) => assert!(*len > u64::from(MAX_FRAME_PAYLOAD)),
        Err(FrameError::Timeout(_)) | Err(FrameError::Io(_)) => {
            panic!("the slice decoder returned {r:?}")
        }
        Err(_) => {}
    }
    r
}

/// encode(frame) decodes to the same frame, and encoding is canonical (encode ∘ decode ∘
/// encode = encode).
fn round_trip(frame: &Frame) {
    let bytes = encode_frame(frame).expect("a decoded frame re-encodes");
    let (again, used) = decode_frame(&bytes).expect("a re-encoded frame decodes");
    assert_eq!(used, bytes.len());
    assert_eq!(&again, frame, "round trip changed the frame");
    assert_eq!(
        encode_frame(&again).unwrap(),
        bytes,
        "encoding is not canonical"
    );
}

/// Cheap extra decoding of hostile fields, as the replica would do it.
fn decode_fields(frame: &Frame) {
    match frame {
        Frame::Chunk {
            len, codec, data, ..
        } if *len <= 1 << 20 => {
            let mut d = zstd::bulk::Decompressor::new().unwrap();
            if let Ok(plain) = chunk::decode_chunk_data(*codec, data.clone(), *len, &mut d) {
                assert_eq!(plain.len(), *len as usize);
            }
        }
        Frame::CutBegin { regions, .. } | Frame::CutRegions { regions } => {
            let _ = chunk::parse_region_piece(regions);
        }
        _ => {}
    }
}

/// The whole `frame_decode` property for one input.
pub fn check(data: &[u8]) {
    let (mode, body) = data.split_first().map_or((0, data), |(m, b)| (*m, b));
    let step = body.first().map_or(7, |b| 1 + *b as usize);
    let owned;
    let wire: &[u8] = if mode & 1 == 1 {
        owned = frame_around(body);
        &owned
    } else {
        body
    };

    // The sync decoder, frame after frame.
    let mut sync_results = Vec::new();
    let mut rest = wire;
    for _ in 0..16 {
        let r = decode_checked(rest);
        let stop = r.is_err();
        if let Ok((f, used)) = &r {
            decode_fields(f);
            rest = &rest[*used..];
        }
        sync_results.push(r.map(|(f, _)| f));
        if stop {
            break;
        }
    }

    // The async reader over the same bytes, in `step`-byte reads, must agree frame by frame.
    let mut reader = FrameReader::new(Trickle { data: wire, step });
    let mut consumed = 0u64;
    for (i, want) in sync_results.iter().enumerate() {
        let (got, largest, _) = measured(|| run_ready(reader.read_frame()));
        if COUNTING.load(Ordering::Relaxed) != 0 {
            // The reader allocates the declared length before reading (after checking it
            // against MAX_FRAME_PAYLOAD).
            let bound = declared_len(&wire[consumed as usize..]).unwrap_or(0);
            assert!(
                largest <= bound + SLACK,
                "FrameReader made a {largest}-byte allocation for a frame declaring {bound} bytes"
            );
        }
        match (want, &got) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "frame {i}: sync and async decoders differ"),
            (Err(a), Err(b)) => assert!(
                same_error_kind(a, b),
                "frame {i}: sync decoder says {a:?}, async reader says {b:?}"
            ),
            _ => panic!("frame {i}: sync decoder says {want:?}, async reader says {got:?}"),
        }
        if let Ok(f) = &got {
            consumed += encode_len_of(&wire[consumed as usize..]) as u64;
            assert_eq!(reader.bytes_read(), consumed, "after {}", f.name());
        }
    }
}

fn encode_len_of(wire: &[u8]) -> usize {
    HEADER_LEN + declared_len(wire).unwrap()
}
