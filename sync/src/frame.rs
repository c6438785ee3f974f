//! Wire frames between the primary and the replica, and their async framed I/O.
//!
//! On the wire every frame is a 20-byte header followed by an rkyv payload:
//!
//! ```text
//! offset size field
//!      0    4 magic     b"BDRF"
//!      4    2 version   u16 LE, PROTO_VERSION
//!      6    2 flags     u16 LE, must be 0
//!      8    4 len       u32 LE, payload length, <= MAX_FRAME_PAYLOAD
//!     12    8 checksum  first 8 bytes of blake3(payload)
//!     20  len payload   rkyv archive of a `Frame`
//! ```
//!
//! Decoding checks, in this order and before allocating anything for the payload: magic,
//! version, flags, length limit; then it reads the payload into a 16-byte-aligned buffer,
//! checks the checksum, and validates the archive with rkyv's checked access (bytecheck)
//! before deserializing. Every failure is a typed [`FrameError`]; none panics.
//! See `docs/protocol.md`.

use std::fmt;
use std::io;
use std::time::Duration;

use rkyv::rancor;
use rkyv::util::AlignedVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Protocol version, in every frame header and in [`Frame::Hello`] / [`Frame::Welcome`].
pub const PROTO_VERSION: u16 = 2;

/// The four bytes every frame starts with.
pub const FRAME_MAGIC: [u8; 4] = *b"BDRF";

/// Size of the frame header.
pub const HEADER_LEN: usize = 20;

/// Largest accepted payload (8 MiB). Checked before anything is allocated.
pub const MAX_FRAME_PAYLOAD: u32 = 8 << 20;

/// Largest region (= chunk) size: a raw chunk of this size and its frame overhead fit
/// comfortably in [`MAX_FRAME_PAYLOAD`].
pub const MAX_REGION_BYTES: u32 = 4 << 20;

/// Largest `count` of a [`Frame::HashRequest`] (the reply is `32 * count` bytes).
pub const MAX_HASH_BATCH: u32 = 65_536;

/// Largest serialized region-set piece in [`Frame::CutBegin`] / [`Frame::CutRegions`].
pub const MAX_REGION_PIECE: usize = 4 << 20;

/// Most passes in one cut ([`Frame::CutBegin`] starts the first, each [`Frame::CutPass`]
/// another).
pub const MAX_CUT_PASSES: u32 = 64;

/// Largest [`Frame::Error`] message the encoder sends (longer ones are cut).
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// How a cut's region set was chosen.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub enum CutKind {
    /// The regions written since the parent cut; the parent must be the replica's last
    /// committed cut.
    Incremental,
    /// The regions whose hashes differ from the replica's content, whatever it holds;
    /// accepted whatever the replica's last committed cut.
    Rescan,
}

/// Encoding of a chunk's data.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub enum Codec {
    Raw,
    Zstd,
}

/// Why the replica (or the primary) gave up on a session.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub enum ErrorCode {
    /// The replica holds another volume.
    WrongVolume,
    /// The replica device is smaller than the primary's.
    DeviceTooSmall,
    /// The cut's parent is not the replica's last committed cut.
    WrongParent,
    /// A frame could not be decoded.
    BadFrame,
    /// A chunk's data does not match its blake3 hash.
    HashMismatch,
    /// A region or chunk outside the device or outside the cut's region set.
    OutOfRange,
    /// The replica's state dir is full.
    NoSpace,
    /// An I/O error on the replica.
    Io,
    /// A frame that is valid but not allowed here (order, version, busy, timeout...).
    Protocol,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One message. See `docs/protocol.md` for who sends what, when.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, PartialEq, Eq, Debug)]
#[rkyv(derive(Debug))]
pub enum Frame {
    /// primary → replica, first frame of a session.
    Hello {
        proto: u16,
        volume: [u8; 16],
        dev_bytes: u64,
        region_bytes: u32,
    },
    /// replica → primary: its committed state; `dev_bytes` is the replica device's size.
    Welcome {
        proto: u16,
        volume: Option<[u8; 16]>,
        last_cut: Option<u64>,
        dev_bytes: u64,
    },
    /// primary → replica: a cut starts. `regions` is a serialized `RoaringBitmap` (the
    /// first piece of the region set; more pieces may follow in [`Frame::CutRegions`]).
    CutBegin {
        cut: u64,
        parent: Option<u64>,
        kind: CutKind,
        regions: Vec<u8>,
    },
    /// primary → replica: another piece of the region set of the current pass, only
    /// directly after `CutBegin`, `CutPass` or another `CutRegions`.
    CutRegions { regions: Vec<u8> },
    /// primary → replica, inside a cut after the previous pass's chunks: a new pass starts,
    /// with the regions it ships (first piece; more in `CutRegions`). A region shipped in
    /// an earlier pass of the cut and again in a later one takes the later content
    /// (pre-copy: earlier passes are read from the live device, the last from the cut's
    /// snapshot). Added in protocol version 2.
    CutPass { regions: Vec<u8> },
    /// primary → replica: the content of one region of the cut.
    Chunk {
        offset: u64,
        len: u32,
        hash: [u8; 32],
        codec: Codec,
        data: Vec<u8>,
    },
    /// primary → replica: the cut is complete.
    CutEnd { cut: u64, chunks: u64, bytes: u64 },
    /// replica → primary: the cut is durable on the replica.
    Committed { cut: u64 },
    /// primary → replica, outside cuts: hash the committed content of these regions.
    HashRequest { first_region: u64, count: u32 },
    /// replica → primary: blake3 of each requested region, in order.
    Hashes {
        first_region: u64,
        hashes: Vec<[u8; 32]>,
    },
    /// either way: the sender gives up on the session and closes it.
    Error { code: ErrorCode, message: String },
}

impl Frame {
    /// Short name of the variant, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Welcome { .. } => "Welcome",
            Frame::CutBegin { .. } => "CutBegin",
            Frame::CutRegions { .. } => "CutRegions",
            Frame::CutPass { .. } => "CutPass",
            Frame::Chunk { .. } => "Chunk",
            Frame::CutEnd { .. } => "CutEnd",
            Frame::Committed { .. } => "Committed",
            Frame::HashRequest { .. } => "HashRequest",
            Frame::Hashes { .. } => "Hashes",
            Frame::Error { .. } => "Error",
        }
    }

    /// An [`Frame::Error`] with the message cut to [`MAX_ERROR_MESSAGE`] bytes.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Frame {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut end = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Frame::Error { code, message }
    }
}

/// Everything that can go wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed by the peer")]
    Closed,
    #[error(
        "stream truncated: the peer closed the connection {got} bytes into a {expected}-byte frame"
    )]
    Truncated { expected: usize, got: usize },
    #[error("bad frame magic {found:02x?} (expected \"BDRF\"): the peer does not speak the bdr protocol")]
    BadMagic { found: [u8; 4] },
    #[error(
        "frame of protocol version {found}, this program speaks version {PROTO_VERSION}: \
         install matching bdr versions on the primary and the replica"
    )]
    UnsupportedVersion { found: u16 },
    #[error("frame header has unknown flags {flags:#06x}")]
    BadFlags { flags: u16 },
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversized { len: u64, max: u32 },
    #[error("frame checksum mismatch: the payload was corrupted")]
    BadChecksum,
    #[error("frame payload failed validation: {0}")]
    Invalid(String),
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    #[error("the peer took no data for {0:?} (hung, stopped or overloaded): connection dropped")]
    WriteStalled(Duration),
    #[error("frame I/O: {0}")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// The [`ErrorCode`] to report to the peer for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::Io(_) => ErrorCode::Io,
            FrameError::Timeout(_)
            | FrameError::WriteStalled(_)
            | FrameError::Closed
            | FrameError::UnsupportedVersion { .. } => ErrorCode::Protocol,
            _ => ErrorCode::BadFrame,
        }
    }
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let h = blake3::hash(payload);
    let mut c = [0u8; 8];
    c.copy_from_slice(&h.as_bytes()[..8]);
    c
}

/// Bytes before the payload in an [`EncodedFrame`]'s buffer: the header occupies the last
/// [`HEADER_LEN`] of them and the payload starts at a multiple of 16, so rkyv lays it out
/// exactly as in a buffer of its own (its padding follows the absolute position).
const ENCODE_PREFIX: usize = 32;

/// A frame encoded for the wire: header and payload in one buffer, serialized in place.
pub struct EncodedFrame {
    buf: AlignedVec<16>,
}

impl EncodedFrame {
    /// The wire bytes: header then payload.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[ENCODE_PREFIX - HEADER_LEN..]
    }

    /// Wire size.
    pub fn len(&self) -> usize {
        self.buf.len() - (ENCODE_PREFIX - HEADER_LEN)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Payload bytes to reserve for `frame` (rkyv's metadata is well under 128 bytes), so the
/// serializer never grows (and copies) its buffer.
fn payload_size_hint(frame: &Frame) -> usize {
    128 + match frame {
        Frame::Chunk { data, .. } => data.len(),
        Frame::CutBegin { regions, .. } | Frame::CutRegions { regions } => regions.len(),
        Frame::Hashes { hashes, .. } => 32 * hashes.len(),
        Frame::Error { message, .. } => message.len(),
        _ => 0,
    }
}

/// Serializes `frame` with its header into one buffer, ready to be written: the payload is
/// serialized once, in place after the header (no copy, no regrowth).
pub fn encode_frame_buf(frame: &Frame) -> Result<EncodedFrame, FrameError> {
    let mut buf = AlignedVec::<16>::with_capacity(ENCODE_PREFIX + payload_size_hint(frame));
    buf.extend_from_slice(&[0u8; ENCODE_PREFIX]);
    let mut buf = rkyv::api::high::to_bytes_in::<_, rancor::Error>(frame, buf)
        .map_err(|e| FrameError::Invalid(format!("cannot serialize {}: {e}", frame.name())))?;
    let len = buf.len() - ENCODE_PREFIX;
    if len > MAX_FRAME_PAYLOAD as usize {
        return Err(FrameError::Oversized {
            len: len as u64,
            max: MAX_FRAME_PAYLOAD,
        });
    }
    let sum = checksum(&buf[ENCODE_PREFIX..]);
    let h = &mut buf[ENCODE_PREFIX - HEADER_LEN..ENCODE_PREFIX];
    h[0..4].copy_from_slice(&FRAME_MAGIC);
    h[4..6].copy_from_slice(&PROTO_VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&0u16.to_le_bytes());
    h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    h[12..20].copy_from_slice(&sum);
    Ok(EncodedFrame { buf })
}

/// Serializes `frame` with its header into one `Vec`, ready to be written (a copy of
/// [`encode_frame_buf`]'s bytes).
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    Ok(encode_frame_buf(frame)?.as_bytes().to_vec())
}

/// Checks a header; returns the payload length and checksum.
fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(usize, [u8; 8]), FrameError> {
    let magic: [u8; 4] = h[0..4].try_into().unwrap();
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != PROTO_VERSION {
        return Err(FrameError::UnsupportedVersion { found: version });
    }
    let flags = u16::from_le_bytes([h[6], h[7]]);
    if flags != 0 {
        return Err(FrameError::BadFlags { flags });
    }
    let len = u32::from_le_bytes(h[8..12].try_into().unwrap());
    if len > MAX_FRAME_PAYLOAD {
        return Err(FrameError::Oversized {
            len: len.into(),
            max: MAX_FRAME_PAYLOAD,
        });
    }
    Ok((len as usize, h[12..20].try_into().unwrap()))
}

/// Validates and deserializes a payload that is already in an aligned buffer.
fn decode_payload(payload: &AlignedVec, sum: [u8; 8]) -> Result<Frame, FrameError> {
    if checksum(payload) != sum {
        return Err(FrameError::BadChecksum);
    }
    rkyv::from_bytes::<Frame, rancor::Error>(payload)
        .map_err(|e| FrameError::Invalid(e.to_string()))
}

/// Decodes one frame from the start of `buf`; returns it and the bytes it used.
/// [`FrameError::Truncated`] if `buf` holds only part of a frame.
pub fn decode_frame(buf: &[u8]) -> Result<(Frame, usize), FrameError> {
    if buf.len() < HEADER_LEN {
        if buf.is_empty() {
            return Err(FrameError::Closed);
        }
        // Report a bad magic or version even in a short header.
        let mut h = [0u8; HEADER_LEN];
        h[..buf.len()].copy_from_slice(buf);
        if buf.len() >= 4 && h[0..4] != FRAME_MAGIC {
            return Err(FrameError::BadMagic {
                found: h[0..4].try_into().unwrap(),
            });
        }
        return Err(FrameError::Truncated {
            expected: HEADER_LEN,
            got: buf.len(),
        });
    }
    let (len, sum) = parse_header(buf[..HEADER_LEN].try_into().unwrap())?;
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Err(FrameError::Truncated {
            expected: total,
            got: buf.len(),
        });
    }
    let mut payload = AlignedVec::<16>::with_capacity(len);
    payload.extend_from_slice(&buf[HEADER_LEN..total]);
    Ok((decode_payload(&payload, sum)?, total))
}

/// Reads frames from an async byte stream.
pub struct FrameReader<R> {
    inner: R,
    bytes_read: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            bytes_read: 0,
        }
    }

    /// Wire bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads exactly `buf.len()` bytes; `Ok(n < len)` on EOF.
    async fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.inner.read(&mut buf[got..]).await?;
            if n == 0 {
                break;
            }
            got += n;
            self.bytes_read += n as u64;
        }
        Ok(got)
    }

    /// Reads the next frame. [`FrameError::Closed`] on a clean end of stream (between
    /// frames). Not cancel-safe: a frame read half-way is lost if the future is dropped.
    pub async fn read_frame(&mut self) -> Result<Frame, FrameError> {
        let mut h = [0u8; HEADER_LEN];
        let got = self.fill(&mut h).await?;
        if got == 0 {
            return Err(FrameError::Closed);
        }
        if got >= 4 && h[0..4] != FRAME_MAGIC {
            return Err(FrameError::BadMagic {
                found: h[0..4].try_into().unwrap(),
            });
        }
        if got < HEADER_LEN {
            return Err(FrameError::Truncated {
                expected: HEADER_LEN,
                got,
            });
        }
        let (len, sum) = parse_header(&h)?;
        let mut payload = AlignedVec::<16>::with_capacity(len);
        payload.resize(len, 0);
        let got = self.fill(payload.as_mut_slice()).await?;
        if got < len {
            return Err(FrameError::Truncated {
                expected: HEADER_LEN + len,
                got: HEADER_LEN + got,
            });
        }
        decode_payload(&payload, sum)
    }

    /// [`read_frame`](Self::read_frame) that fails with [`FrameError::Timeout`] if no
    /// complete frame arrives within `limit`.
    pub async fn read_frame_timeout(&mut self, limit: Duration) -> Result<Frame, FrameError> {
        match tokio::time::timeout(limit, self.read_frame()).await {
            Ok(r) => r,
            Err(_) => Err(FrameError::Timeout(limit)),
        }
    }
}

/// Writes frames to an async byte stream. Each frame is one `write_all` of header and
/// payload together (no small writes for Nagle to delay). With a stall limit, a write or
/// flush that makes no progress for that long fails with [`FrameError::WriteStalled`]: a
/// peer that stops reading (a stopped process keeps its socket's window at zero forever)
/// cannot hold the writer.
pub struct FrameWriter<W> {
    inner: W,
    bytes_written: u64,
    stall_limit: Option<Duration>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            bytes_written: 0,
            stall_limit: None,
        }
    }

    /// Fails writes that make no progress for `limit` (see the type's documentation).
    pub fn with_stall_limit(mut self, limit: Duration) -> Self {
        self.stall_limit = Some(limit);
        self
    }

    /// Wire bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    pub fn into_inner(self) -> W {
        self.inner
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Encodes and writes one frame; returns its wire size.
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<usize, FrameError> {
        let bytes = encode_frame_buf(frame)?;
        self.write_encoded(bytes.as_bytes()).await?;
        Ok(bytes.len())
    }

    /// Writes a frame produced by [`encode_frame_buf`] or [`encode_frame`].
    pub async fn write_encoded(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let write = self.inner.write(rest);
            let n = match self.stall_limit {
                None => write.await?,
                Some(limit) => tokio::time::timeout(limit, write)
                    .await
                    .map_err(|_| FrameError::WriteStalled(limit))??,
            };
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            rest = &rest[n..];
            self.bytes_written += n as u64;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), FrameError> {
        match self.stall_limit {
            None => self.inner.flush().await?,
            Some(limit) => tokio::time::timeout(limit, self.inner.flush())
                .await
                .map_err(|_| FrameError::WriteStalled(limit))??,
        }
        Ok(())
    }

    /// Flushes and shuts down the write half.
    pub async fn shutdown(&mut self) -> Result<(), FrameError> {
        self.inner.shutdown().await?;
        Ok(())
    }
}
