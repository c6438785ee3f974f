//! The primary's side: ship a cut (or a rescan) to a replica over a framed connection.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bdr_bitmap::Geometry;
use rkyv::util::AlignedVec;
use roaring::RoaringBitmap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::chunk::{self, ChunkSpec, DEFAULT_ZSTD_LEVEL};
use crate::frame::{
    encode_frame_buf, CutKind, EncodedFrame, ErrorCode, Frame, FrameError, FrameReader,
    FrameWriter, MAX_HASH_BATCH, PROTO_VERSION,
};

/// A frozen, consistent image of the primary device (in production a dm-snapshot).
///
/// `read_at` is called from several threads at once, with buffers aligned to 4096 bytes,
/// offsets at region boundaries and lengths that are multiples of 512, so an image opened
/// with `O_DIRECT` works.
pub trait CutImage: Send + Sync {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Reads exactly `buf.len()` bytes at `off`.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CutImage for File {
    fn len(&self) -> u64 {
        // Seeking works for block devices too (their metadata length is 0); reads use
        // pread, so moving the file position is harmless.
        (&*self).seek(SeekFrom::End(0)).unwrap_or(0)
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.read_exact_at(buf, off)
    }
}

/// Tuning of the primary's side.
#[derive(Clone, Debug)]
pub struct ShipOptions {
    /// Chunks read, hashed and compressed at the same time (on the blocking thread pool).
    /// Memory is bounded by about `in_flight * 3 * region size`.
    pub in_flight: usize,
    pub zstd_level: i32,
    /// Longest wait for a reply to Hello or HashRequest.
    pub reply_timeout: Duration,
    /// Longest wait, after CutEnd, for the replica to commit.
    pub commit_timeout: Duration,
    /// Longest time the replica may take no data while a cut is sent (a stopped or hung
    /// replica must not hold a cut, and its snapshot, forever).
    pub write_stall_timeout: Duration,
    /// Regions per HashRequest in rescans and verifies (at most [`MAX_HASH_BATCH`]).
    pub hash_batch: u32,
}

impl Default for ShipOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        ShipOptions {
            in_flight: 2 * cores,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            reply_timeout: Duration::from_secs(60),
            commit_timeout: Duration::from_secs(600),
            write_stall_timeout: Duration::from_secs(60),
            hash_batch: 1024,
        }
    }
}

/// Identity of a cut.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CutIds {
    pub cut: u64,
    /// The replica's last committed cut, `None` for a new replica.
    pub parent: Option<u64>,
}

/// What the replica said in its Welcome, kept up to date as cuts commit.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReplicaInfo {
    pub volume: Option<[u8; 16]>,
    pub last_cut: Option<u64>,
    /// Size of the replica device.
    pub dev_bytes: u64,
}

/// One pass of a cut: regions and the image they are read from (for pre-copy passes the
/// live device, for the last pass the cut's frozen image).
pub struct Pass {
    pub image: Arc<dyn CutImage>,
    pub regions: RoaringBitmap,
}

/// Called after each pass of [`PrimaryConn::ship_cut_passes`] with the counters so far;
/// returns the next pass, or `None` to end the cut.
pub type NextPass<'a> = dyn FnMut(&ShipStats) -> Result<Option<Pass>, ShipError> + Send + 'a;

/// Counters of one ship, rescan or verify.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct ShipStats {
    /// Regions in the cut.
    pub regions: u64,
    /// Chunks sent.
    pub chunks: u64,
    /// Chunks sent zstd-compressed (the others raw).
    pub compressed_chunks: u64,
    /// Bytes read from the image (for rescans: hashing included).
    pub bytes_read: u64,
    /// Plain bytes of the chunks sent.
    pub plain_bytes: u64,
    /// Wire bytes written (frames, headers included).
    pub bytes_sent: u64,
    /// Regions whose hashes were compared (rescan, verify).
    pub compared: u64,
    /// Regions of each pass of the cut, in order (one pass unless pre-copy ran; the last
    /// pass is the cut's residue, read from its image).
    pub pass_regions: Vec<u64>,
    /// Regions found different (rescan, verify).
    pub differing: u64,
    pub elapsed: Duration,
}

/// Progress of a rescan or verify, for a progress bar.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Progress {
    /// `done` of `total` regions compared, `differing` found so far.
    Comparing {
        done: u64,
        total: u64,
        differing: u64,
    },
    /// `done` of `total` differing chunks shipped.
    Shipping { done: u64, total: u64 },
}

/// The result of [`PrimaryConn::verify`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VerifyReport {
    /// Byte ranges whose content differs, merged, in order.
    pub differing: Vec<Range<u64>>,
    pub stats: ShipStats,
}

/// Errors of the primary's side. After any of them the connection is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("replica connection: {0}")]
    Frame(#[from] FrameError),
    #[error("the replica refused ({code}): {message}")]
    Rejected { code: ErrorCode, message: String },
    #[error("the replica sent {got} where {expected} was expected")]
    Unexpected { expected: String, got: String },
    #[error("cannot read the cut image at {offset}: {source}")]
    Image {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Source(String),
    #[error("a chunk worker failed: {0}")]
    Worker(String),
    #[error("the connection broke earlier; reconnect")]
    Broken,
}

impl ShipError {
    /// The replica's error code, if the replica refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ShipError::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn reply_error(f: Result<Frame, FrameError>, expected: &str) -> ShipError {
    match f {
        Ok(Frame::Error { code, message }) => ShipError::Rejected { code, message },
        Ok(other) => ShipError::Unexpected {
            expected: expected.to_string(),
            got: other.name().to_string(),
        },
        Err(e) => ShipError::Frame(e),
    }
}

/// A 4096-byte-aligned read buffer.
fn aligned_buf(len: usize) -> AlignedVec<4096> {
    let mut b = AlignedVec::<4096>::with_capacity(len);
    b.resize(len, 0);
    b
}

/// Reads, hashes, compresses and encodes one chunk (on a blocking thread).
fn build_chunk(
    image: &dyn CutImage,
    spec: ChunkSpec,
    level: i32,
) -> Result<(EncodedFrame, bool), ShipError> {
    let mut buf = aligned_buf(spec.len as usize);
    image
        .read_at(buf.as_mut_slice(), spec.offset)
        .map_err(|source| ShipError::Image {
            offset: spec.offset,
            source,
        })?;
    let frame = chunk::encode_chunk(spec.offset, &buf, level);
    let compressed = matches!(
        frame,
        Frame::Chunk {
            codec: crate::frame::Codec::Zstd,
            ..
        }
    );
    Ok((encode_frame_buf(&frame)?, compressed))
}

/// Hashes regions `range` of the image (on a blocking thread).
fn hash_range(
    image: &dyn CutImage,
    g: &Geometry,
    range: Range<u64>,
) -> Result<Vec<[u8; 32]>, ShipError> {
    let mut buf = aligned_buf(g.region_bytes() as usize);
    let mut out = Vec::with_capacity((range.end - range.start) as usize);
    for r in range {
        let br = g.region_byte_range(r);
        let b = &mut buf.as_mut_slice()[..(br.end - br.start) as usize];
        image
            .read_at(b, br.start)
            .map_err(|source| ShipError::Image {
                offset: br.start,
                source,
            })?;
        out.push(chunk::hash(b));
    }
    Ok(out)
}

/// The primary's connection to a replica, after the Hello/Welcome handshake.
pub struct PrimaryConn<R, W> {
    reader: FrameReader<R>,
    writer: FrameWriter<W>,
    volume: [u8; 16],
    geometry: Geometry,
    replica: ReplicaInfo,
    opts: ShipOptions,
    broken: bool,
}

impl PrimaryConn<OwnedReadHalf, OwnedWriteHalf> {
    /// Connects over TCP (no Nagle) and does the handshake.
    pub async fn connect(
        addr: impl ToSocketAddrs,
        volume: [u8; 16],
        geometry: Geometry,
        opts: ShipOptions,
    ) -> Result<Self, ShipError> {
        let sock = TcpStream::connect(addr).await.map_err(FrameError::Io)?;
        sock.set_nodelay(true).map_err(FrameError::Io)?;
        let (r, w) = sock.into_split();
        Self::handshake(r, w, volume, geometry, opts).await
    }
}

impl<R, W> PrimaryConn<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Sends Hello and waits for Welcome (or the replica's refusal).
    pub async fn handshake(
        reader: R,
        writer: W,
        volume: [u8; 16],
        geometry: Geometry,
        opts: ShipOptions,
    ) -> Result<Self, ShipError> {
        geometry
            .validate()
            .map_err(|e| ShipError::Input(e.to_string()))?;
        chunk::check_geometry(&geometry).map_err(|e| ShipError::Input(e.to_string()))?;
        let mut conn = PrimaryConn {
            reader: FrameReader::new(reader),
            writer: FrameWriter::new(writer).with_stall_limit(opts.write_stall_timeout),
            volume,
            geometry,
            replica: ReplicaInfo {
                volume: None,
                last_cut: None,
                dev_bytes: 0,
            },
            opts,
            broken: false,
        };
        conn.writer
            .write_frame(&Frame::Hello {
                proto: PROTO_VERSION,
                volume,
                dev_bytes: geometry.dev_bytes(),
                region_bytes: geometry.region_bytes() as u32,
            })
            .await?;
        conn.writer.flush().await?;
        match conn
            .reader
            .read_frame_timeout(conn.opts.reply_timeout)
            .await
        {
            Ok(Frame::Welcome {
                proto,
                volume,
                last_cut,
                dev_bytes,
            }) => {
                if proto != PROTO_VERSION {
                    return Err(FrameError::UnsupportedVersion { found: proto }.into());
                }
                conn.replica = ReplicaInfo {
                    volume,
                    last_cut,
                    dev_bytes,
                };
                Ok(conn)
            }
            other => Err(reply_error(other, "Welcome")),
        }
    }

    /// The replica's committed state as of the handshake and the cuts committed since.
    pub fn replica(&self) -> &ReplicaInfo {
        &self.replica
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The ids of the next cut: the replica's last committed cut + 1, parented on it.
    pub fn next_cut_ids(&self) -> CutIds {
        CutIds {
            cut: self.replica.last_cut.map_or(1, |c| c + 1),
            parent: self.replica.last_cut,
        }
    }

    /// Closes the connection cleanly.
    pub async fn close(mut self) {
        let _ = self.writer.shutdown().await;
    }

    fn check_usable(&self, image: &dyn CutImage) -> Result<(), ShipError> {
        if self.broken {
            return Err(ShipError::Broken);
        }
        if image.len() < self.geometry.dev_bytes() {
            return Err(ShipError::Input(format!(
                "the cut image has {} bytes, the volume {}",
                image.len(),
                self.geometry.dev_bytes()
            )));
        }
        Ok(())
    }

    /// Ships one cut: CutBegin (+ CutRegions), a Chunk per region of `regions` in offset
    /// order, CutEnd, then waits for Committed. Reads, hashes and compresses up to
    /// `in_flight` chunks in parallel on tokio's blocking pool; socket backpressure stops
    /// the reading. An Error from the replica at any time aborts with
    /// [`ShipError::Rejected`].
    pub async fn ship_cut(
        &mut self,
        image: Arc<dyn CutImage>,
        regions: &RoaringBitmap,
        ids: CutIds,
        kind: CutKind,
    ) -> Result<ShipStats, ShipError> {
        let first = Pass {
            image,
            regions: regions.clone(),
        };
        self.ship_inner(first, ids, kind, None, None).await
    }

    /// Ships one cut in several passes (pre-copy): `first` in the `CutBegin`, then, after
    /// each pass's chunks were read and sent (the pass and its image dropped), `next` is
    /// called with the counters so far and returns the next pass (announced with
    /// `CutPass`) or `None` to end the cut (`CutEnd`, then wait for `Committed`). A region in several passes ends with its content of the last one.
    /// `next` runs on the task that ships (it may block: wrap blocking work in
    /// `block_in_place` on a multi-threaded runtime); an error from it aborts the cut.
    pub async fn ship_cut_passes(
        &mut self,
        first: Pass,
        ids: CutIds,
        kind: CutKind,
        next: &mut NextPass<'_>,
    ) -> Result<ShipStats, ShipError> {
        self.ship_inner(first, ids, kind, None, Some(next)).await
    }

    async fn ship_inner(
        &mut self,
        first: Pass,
        ids: CutIds,
        kind: CutKind,
        progress: Option<&mut (dyn FnMut(Progress) + Send)>,
        mut next: Option<&mut NextPass<'_>>,
    ) -> Result<ShipStats, ShipError> {
        self.check_usable(&*first.image)?;
        chunk::check_regions(&first.regions, &self.geometry)
            .map_err(|e| ShipError::Input(e.to_string()))?;
        self.broken = true; // until the cut is committed
        let t0 = Instant::now();
        let wire0 = self.writer.bytes_written();
        let g = self.geometry;
        let level = self.opts.zstd_level;
        let in_flight = self.opts.in_flight.max(1);
        let commit_timeout = self.opts.commit_timeout;
        let outcome = {
            let reader = &mut self.reader;
            let writer = &mut self.writer;
            let send = async {
                let mut st = ShipStats::default();
                let mut union = RoaringBitmap::new();
                let mut progress = progress;
                let mut pass = first;
                loop {
                    let total = pass.regions.len();
                    let mut pieces = chunk::region_pieces(&pass.regions).into_iter();
                    let first_piece = pieces.next().unwrap_or_default();
                    let announce = if st.pass_regions.is_empty() {
                        Frame::CutBegin {
                            cut: ids.cut,
                            parent: ids.parent,
                            kind,
                            regions: first_piece,
                        }
                    } else {
                        Frame::CutPass {
                            regions: first_piece,
                        }
                    };
                    writer.write_frame(&announce).await?;
                    for p in pieces {
                        writer
                            .write_frame(&Frame::CutRegions { regions: p })
                            .await?;
                    }
                    let mut plan = chunk::plan_chunks(&pass.regions, &g);
                    let mut pending = VecDeque::with_capacity(in_flight);
                    let mut done = 0u64;
                    loop {
                        while pending.len() < in_flight {
                            let Some(spec) = plan.next() else { break };
                            let img = pass.image.clone();
                            pending.push_back((
                                spec,
                                tokio::task::spawn_blocking(move || {
                                    build_chunk(&*img, spec, level)
                                }),
                            ));
                        }
                        let Some((spec, h)) = pending.pop_front() else {
                            break;
                        };
                        let (bytes, compressed) =
                            h.await.map_err(|e| ShipError::Worker(e.to_string()))??;
                        writer.write_encoded(bytes.as_bytes()).await?;
                        st.chunks += 1;
                        done += 1;
                        st.compressed_chunks += u64::from(compressed);
                        st.bytes_read += u64::from(spec.len);
                        st.plain_bytes += u64::from(spec.len);
                        if let Some(p) = progress.as_mut() {
                            p(Progress::Shipping { done, total });
                        }
                    }
                    drop(plan);
                    union |= &pass.regions;
                    st.regions = union.len();
                    st.pass_regions.push(total);
                    // Every chunk of the pass was read: its image is no longer needed here
                    // (`next` may release it, e.g. a snapshot, before the replica commits).
                    drop(pass);
                    let Some(next) = next.as_mut() else { break };
                    writer.flush().await?;
                    let Some(p) = next(&st)? else { break };
                    if p.image.len() < g.dev_bytes() {
                        return Err(ShipError::Input(format!(
                            "the image of pass {} has {} bytes, the volume {}",
                            st.pass_regions.len() + 1,
                            p.image.len(),
                            g.dev_bytes()
                        )));
                    }
                    chunk::check_regions(&p.regions, &g)
                        .map_err(|e| ShipError::Input(e.to_string()))?;
                    pass = p;
                }
                writer
                    .write_frame(&Frame::CutEnd {
                        cut: ids.cut,
                        chunks: st.chunks,
                        bytes: st.plain_bytes,
                    })
                    .await?;
                writer.flush().await?;
                Ok::<_, ShipError>(st)
            };
            // The replica only speaks during a cut to refuse it: listen while sending.
            let reply = reader.read_frame();
            tokio::pin!(reply);
            tokio::pin!(send);
            let sent = tokio::select! {
                biased;
                r = &mut reply => return Err(reply_error(r, "nothing before CutEnd")),
                s = &mut send => s,
            };
            match sent {
                Err(e) => {
                    // A write failing because the replica closed: its reason is more useful.
                    if let Ok(Ok(Frame::Error { code, message })) =
                        tokio::time::timeout(Duration::from_secs(2), &mut reply).await
                    {
                        return Err(ShipError::Rejected { code, message });
                    }
                    Err(e)
                }
                Ok(st) => match tokio::time::timeout(commit_timeout, &mut reply).await {
                    Err(_) => Err(FrameError::Timeout(commit_timeout).into()),
                    Ok(Ok(Frame::Committed { cut })) if cut == ids.cut => Ok(st),
                    Ok(other) => Err(reply_error(
                        other,
                        &format!("Committed {{ cut: {} }}", ids.cut),
                    )),
                },
            }
        };
        let mut stats = outcome?;
        self.broken = false;
        self.replica.last_cut = Some(ids.cut);
        self.replica.volume = Some(self.volume);
        stats.bytes_sent = self.writer.bytes_written() - wire0;
        stats.elapsed = t0.elapsed();
        tracing::info!(
            cut = ids.cut,
            ?kind,
            chunks = stats.chunks,
            bytes_sent = stats.bytes_sent,
            "cut committed by the replica"
        );
        Ok(stats)
    }

    /// Compares the image's region hashes with the replica's committed content; returns the
    /// differing regions. Two HashRequests are kept in flight; local hashing runs in
    /// parallel on the blocking pool meanwhile.
    async fn diff(
        &mut self,
        image: &Arc<dyn CutImage>,
        stats: &mut ShipStats,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<RoaringBitmap, ShipError> {
        self.check_usable(&**image)?;
        self.broken = true;
        let g = self.geometry;
        let total = g.nr_regions;
        // At most ~64 MiB of reading per request, whatever the region size, so the
        // replica answers well within the reply timeout.
        let by_bytes = ((64u64 << 20) / g.region_bytes()).max(1);
        let batch = u64::from(self.opts.hash_batch.clamp(1, MAX_HASH_BATCH)).min(by_bytes);
        let workers = self.opts.in_flight.max(1) as u64;
        let wire0 = self.writer.bytes_written();
        let mut next = 0u64;
        let mut asked: VecDeque<(u64, u32)> = VecDeque::new();
        let mut diff = RoaringBitmap::new();
        loop {
            while asked.len() < 2 && next < total {
                let count = batch.min(total - next) as u32;
                self.writer
                    .write_frame(&Frame::HashRequest {
                        first_region: next,
                        count,
                    })
                    .await?;
                self.writer.flush().await?;
                asked.push_back((next, count));
                next += u64::from(count);
            }
            let Some((first, count)) = asked.pop_front() else {
                break;
            };
            // Local hashes of the batch, split across workers.
            let end = first + u64::from(count);
            let per = u64::from(count).div_ceil(workers).max(1);
            let mut jobs = Vec::new();
            let mut s = first;
            while s < end {
                let e = (s + per).min(end);
                let img = image.clone();
                jobs.push(tokio::task::spawn_blocking(move || {
                    hash_range(&*img, &g, s..e)
                }));
                s = e;
            }
            let mut local = Vec::with_capacity(count as usize);
            for j in jobs {
                local.extend(j.await.map_err(|e| ShipError::Worker(e.to_string()))??);
            }
            stats.bytes_read += g
                .region_byte_range(first)
                .start
                .abs_diff(g.region_byte_range(end - 1).end);
            let theirs = match self
                .reader
                .read_frame_timeout(self.opts.reply_timeout)
                .await
            {
                Ok(Frame::Hashes {
                    first_region,
                    hashes,
                }) if first_region == first && hashes.len() == count as usize => hashes,
                other => {
                    return Err(reply_error(
                        other,
                        &format!("Hashes {{ first_region: {first}, {count} hashes }}"),
                    ))
                }
            };
            for (i, (a, b)) in local.iter().zip(&theirs).enumerate() {
                if a != b {
                    diff.insert((first + i as u64) as u32);
                }
            }
            stats.compared += u64::from(count);
            stats.differing = diff.len();
            progress(Progress::Comparing {
                done: end,
                total,
                differing: diff.len(),
            });
        }
        stats.bytes_sent += self.writer.bytes_written() - wire0;
        self.broken = false;
        Ok(diff)
    }

    /// Rescan: compares every region's hash with the replica's committed content, then
    /// ships only the differing regions in one `Rescan` cut with ids `ids` (accepted by
    /// the replica whatever its last cut; a new replica's first cut). The replica keeps
    /// its last committed cut until this one commits.
    pub async fn ship_rescan(
        &mut self,
        image: Arc<dyn CutImage>,
        ids: CutIds,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<ShipStats, ShipError> {
        self.ship_rescan_checked(image, ids, progress, None).await
    }

    /// [`Self::ship_rescan`] with `next` called once all chunks are sent and before
    /// `CutEnd`: it may add passes, or refuse to end the cut (an error: the replica never
    /// commits it) when the image turned out invalid while it was read.
    pub async fn ship_rescan_checked(
        &mut self,
        image: Arc<dyn CutImage>,
        ids: CutIds,
        progress: &mut (dyn FnMut(Progress) + Send),
        next: Option<&mut NextPass<'_>>,
    ) -> Result<ShipStats, ShipError> {
        let t0 = Instant::now();
        let mut stats = ShipStats::default();
        let diff = self.diff(&image, &mut stats, progress).await?;
        let first = Pass {
            image,
            regions: diff,
        };
        let shipped = self
            .ship_inner(first, ids, CutKind::Rescan, Some(progress), next)
            .await?;
        stats.regions = shipped.regions;
        stats.pass_regions = shipped.pass_regions;
        stats.chunks = shipped.chunks;
        stats.compressed_chunks = shipped.compressed_chunks;
        stats.bytes_read += shipped.bytes_read;
        stats.plain_bytes = shipped.plain_bytes;
        stats.bytes_sent += shipped.bytes_sent;
        stats.elapsed = t0.elapsed();
        Ok(stats)
    }

    /// Compares the image with the replica's committed content by region hashes only;
    /// returns the differing byte ranges (empty: identical).
    pub async fn verify(
        &mut self,
        image: Arc<dyn CutImage>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<VerifyReport, ShipError> {
        let t0 = Instant::now();
        let mut stats = ShipStats::default();
        let diff = self.diff(&image, &mut stats, progress).await?;
        let g = self.geometry;
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for r in &diff {
            let br = g.region_byte_range(r.into());
            match ranges.last_mut() {
                Some(last) if last.end == br.start => last.end = br.end,
                _ => ranges.push(br),
            }
        }
        stats.elapsed = t0.elapsed();
        Ok(VerifyReport {
            differing: ranges,
            stats,
        })
    }
}
