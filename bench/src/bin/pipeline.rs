//! Host shipping-pipeline bench: each stage alone (MB/s per core, from the thread's CPU
//! time) on three data sets, next to memcpy and page-cache reads measured in the same run,
//! then the whole pipeline end to end over loopback TCP (`PrimaryConn::ship_cut` to
//! `replica::serve` in the same process, each on its own runtime so the CPU time of each
//! side is known).
//!
//!   pipeline [--mb N] [--e2e-mb N] [--rounds N] [--dir DIR] [--out DIR] [--region BYTES]
//!
//! Rounds alternate: every round runs every stage (in a rotated order) and the end-to-end
//! ship, so load from other processes spreads over all of them; medians are reported.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bdr_bench::{
    bar_chart, host_info, make_data, md_table, median, mix_class, process_cpu, register_chart_font,
    timed, Bar, Class, MB,
};
use bdr_sync::chunk::{self, DEFAULT_ZSTD_LEVEL};

/// The zstd level of this run (`--zstd-level`), set once in `main`.
static LEVEL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(DEFAULT_ZSTD_LEVEL);

fn level() -> i32 {
    LEVEL.load(std::sync::atomic::Ordering::Relaxed)
}
use bdr_sync::frame::{decode_frame, encode_frame_buf, Codec};
use bdr_sync::replica::{serve, CutHeader, ServeOptions, ServeStatus};
use bdr_sync::{
    CutKind, Frame, Geometry, PrimaryConn, ReplicaSession, ReplicaStore, RoaringBitmap, ShipOptions,
};

struct Args {
    mb: u64,
    e2e_mb: u64,
    rounds: usize,
    dir: PathBuf,
    out: PathBuf,
    region: usize,
    /// Only the end-to-end ship (for profiling the real pipeline).
    e2e_only: bool,
    /// zstd level of the chunks (negative: zstd's fast levels).
    level: i32,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        mb: 128,
        e2e_mb: 256,
        rounds: 3,
        dir: PathBuf::from("/dev/shm"),
        out: bdr_bench::repo_root().join("bench/results"),
        region: 64 << 10,
        e2e_only: false,
        level: DEFAULT_ZSTD_LEVEL,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().context(format!("{k} needs a value"));
        match k.as_str() {
            "--mb" => a.mb = v()?.parse()?,
            "--e2e-mb" => a.e2e_mb = v()?.parse()?,
            "--rounds" => a.rounds = v()?.parse()?,
            "--dir" => a.dir = v()?.into(),
            "--out" => a.out = v()?.into(),
            "--region" => a.region = v()?.parse()?,
            "--e2e-only" => a.e2e_only = true,
            "--zstd-level" => a.level = v()?.parse()?,
            "-h" | "--help" => {
                println!("pipeline [--mb N] [--e2e-mb N] [--rounds N] [--dir DIR] [--out DIR] [--region BYTES] [--zstd-level N]");
                std::process::exit(0);
            }
            _ => anyhow::bail!("unknown argument {k}"),
        }
    }
    Ok(a)
}

/// One data set: its bytes in memory and in a file (page cache / tmpfs) for the read stage.
struct DataSet {
    name: &'static str,
    data: Vec<u8>,
    file: File,
    region: usize,
}

impl DataSet {
    fn chunks(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.data
            .chunks(self.region)
            .enumerate()
            .map(move |(i, c)| ((i * self.region) as u64, c))
    }
    fn bytes(&self) -> u64 {
        self.data.len() as u64
    }
}

/// A 4096-aligned buffer, like the primary's read buffers (O_DIRECT-ready).
fn aligned(len: usize) -> Vec<u8> {
    // Over-allocate and slice: keep it simple, the offset stays fixed for the buffer's life.
    vec![0u8; len + 4096]
}
fn aligned_slice(v: &mut [u8], len: usize) -> &mut [u8] {
    let off = v.as_ptr().align_offset(4096);
    &mut v[off..off + len]
}

/// Per-stage result of one round: plain bytes, wall, CPU of the thread.
#[derive(Clone, Copy, Default)]
struct Sample {
    bytes: u64,
    wall: Duration,
    cpu: Duration,
}

impl Sample {
    fn per_core(&self) -> f64 {
        self.bytes as f64 / MB / self.cpu.as_secs_f64().max(1e-9)
    }
    fn per_wall(&self) -> f64 {
        self.bytes as f64 / MB / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Precomputed inputs of the later stages, built once per data set (not timed).
struct Prepared {
    /// (offset, hash, codec, payload) per chunk, as the primary builds them.
    parts: Vec<(u64, [u8; 32], Codec, Vec<u8>)>,
    /// The encoded frames.
    frames: Vec<Vec<u8>>,
    compressed_bytes: u64,
}

fn prepare(ds: &DataSet) -> Result<Prepared> {
    let mut parts = Vec::new();
    let mut frames = Vec::new();
    let mut compressed_bytes = 0;
    for (off, c) in ds.chunks() {
        let f = chunk::encode_chunk(off, c, level());
        frames.push(encode_frame_buf(&f)?.as_bytes().to_vec());
        if let Frame::Chunk {
            hash, codec, data, ..
        } = f
        {
            compressed_bytes += data.len() as u64;
            parts.push((off, hash, codec, data));
        }
    }
    Ok(Prepared {
        parts,
        frames,
        compressed_bytes,
    })
}

const STAGES: &[&str] = &[
    "memcpy",
    "read (page cache)",
    "blake3",
    "zstd compress",
    "frame encode",
    "primary: read+blake3+zstd+frame",
    "frame decode (checksum+rkyv)",
    "verify: unzstd+blake3",
    "apply: journal+commit",
    "replica: decode+verify+apply",
];

/// A replica store on `dir` with a committed (empty) first cut, so later cuts take the
/// journaled path of a live replica.
struct Replica {
    store: Option<ReplicaStore>,
    geometry: Geometry,
    volume: [u8; 16],
    next_cut: u64,
}

impl Replica {
    fn new(dir: &Path, bytes: u64, region: usize) -> Result<Replica> {
        let dev = dir.join("replica.img");
        let f = File::create(&dev)?;
        f.set_len(bytes)?;
        let state = dir.join("replica-state");
        let mut store = ReplicaStore::open(&dev, &state)?;
        let geometry = Geometry::new((region / 512) as u32, bytes / 512)?;
        let volume = [7u8; 16];
        store.begin_cut(header(volume, &geometry, 1, None, CutKind::Rescan), 0)?;
        store.commit_cut(1)?;
        Ok(Replica {
            store: Some(store),
            geometry,
            volume,
            next_cut: 2,
        })
    }
}

fn header(
    volume: [u8; 16],
    g: &Geometry,
    cut: u64,
    parent: Option<u64>,
    kind: CutKind,
) -> CutHeader {
    CutHeader {
        volume,
        cut,
        parent,
        dev_bytes: g.dev_bytes(),
        region_bytes: g.region_bytes() as u32,
        kind,
    }
}

fn run_stage(stage: &str, ds: &DataSet, prep: &Prepared, rep: &mut Replica) -> Result<Sample> {
    let region = ds.region;
    let bytes = ds.bytes();
    let ((), wall, cpu) = match stage {
        "memcpy" => {
            let mut dst = aligned(region);
            timed(|| {
                for (_, c) in ds.chunks() {
                    let d = aligned_slice(&mut dst, c.len());
                    d.copy_from_slice(c);
                    black_box(&d);
                }
            })
        }
        "read (page cache)" => {
            let mut buf = aligned(region);
            let mut err = Ok(());
            let r = timed(|| {
                for (off, c) in ds.chunks() {
                    let b = aligned_slice(&mut buf, c.len());
                    if let Err(e) = ds.file.read_exact_at(b, off) {
                        err = Err(e);
                        return;
                    }
                    black_box(&b);
                }
            });
            err?;
            r
        }
        "blake3" => timed(|| {
            for (_, c) in ds.chunks() {
                black_box(chunk::hash(c));
            }
        }),
        "zstd compress" => timed(|| {
            for (_, c) in ds.chunks() {
                black_box(chunk::compress(c, level()));
            }
        }),
        "frame encode" => {
            // The frames are built untimed (the payload moves into the frame).
            let frames: Vec<Frame> = prep
                .parts
                .iter()
                .zip(ds.chunks())
                .map(|((off, h, codec, d), (_, c))| Frame::Chunk {
                    offset: *off,
                    len: c.len() as u32,
                    hash: *h,
                    codec: *codec,
                    data: d.clone(),
                })
                .collect();
            let mut err = Ok(());
            let r = timed(|| {
                for f in &frames {
                    match encode_frame_buf(f) {
                        Ok(b) => {
                            black_box(b);
                        }
                        Err(e) => {
                            err = Err(e);
                            return;
                        }
                    }
                }
            });
            err?;
            r
        }
        "primary: read+blake3+zstd+frame" => {
            // What the primary's build_chunk does per chunk, on one thread.
            let mut buf = aligned(region);
            let mut err: Result<()> = Ok(());
            let r = timed(|| {
                for (off, c) in ds.chunks() {
                    let b = aligned_slice(&mut buf, c.len());
                    if let Err(e) = ds.file.read_exact_at(b, off) {
                        err = Err(e.into());
                        return;
                    }
                    let f = chunk::encode_chunk(off, b, level());
                    match encode_frame_buf(&f) {
                        Ok(b) => {
                            black_box(b);
                        }
                        Err(e) => {
                            err = Err(e.into());
                            return;
                        }
                    }
                }
            });
            err?;
            r
        }
        "frame decode (checksum+rkyv)" => {
            let mut err = Ok(());
            let r = timed(|| {
                for b in &prep.frames {
                    match decode_frame(b) {
                        Ok(f) => {
                            black_box(f);
                        }
                        Err(e) => {
                            err = Err(e);
                            return;
                        }
                    }
                }
            });
            err?;
            r
        }
        "verify: unzstd+blake3" => {
            let inputs: Vec<_> = prep.parts.clone();
            let mut d = zstd::bulk::Decompressor::new()?;
            let mut err: Result<()> = Ok(());
            let r = timed(|| {
                for ((_, h, codec, data), (_, c)) in inputs.into_iter().zip(ds.chunks()) {
                    match chunk::decode_chunk_data(codec, data, c.len() as u32, &mut d) {
                        Ok(p) => {
                            if chunk::hash(&p) != h {
                                err = Err(anyhow::anyhow!("hash mismatch"));
                                return;
                            }
                            black_box(p);
                        }
                        Err(e) => {
                            err = Err(e.into());
                            return;
                        }
                    }
                }
            });
            err?;
            r
        }
        "apply: journal+commit" => {
            let store = rep.store.as_mut().expect("store");
            let cut = rep.next_cut;
            rep.next_cut += 1;
            let n = prep.parts.len() as u64;
            let h = header(
                rep.volume,
                &rep.geometry,
                cut,
                Some(cut - 1),
                CutKind::Incremental,
            );
            let mut err: Result<()> = Ok(());
            let r = timed(|| {
                let res = (|| -> Result<()> {
                    store.begin_cut(h, ReplicaStore::journal_bytes_for(n, region as u32))?;
                    for ((off, hash, _, _), (_, c)) in prep.parts.iter().zip(ds.chunks()) {
                        store.append_chunk(*off, c, hash)?;
                    }
                    store.commit_cut(cut)?;
                    Ok(())
                })();
                err = res;
            });
            err?;
            r
        }
        "replica: decode+verify+apply" => {
            let store = rep.store.take().expect("store");
            let cut = rep.next_cut;
            rep.next_cut += 1;
            let g = rep.geometry;
            let mut regions = RoaringBitmap::new();
            regions.insert_range(0..(ds.bytes() / region as u64) as u32);
            let mut s = ReplicaSession::new(store);
            s.on_frame(Frame::Hello {
                proto: bdr_sync::PROTO_VERSION,
                volume: rep.volume,
                dev_bytes: g.dev_bytes(),
                region_bytes: g.region_bytes() as u32,
            })?;
            let pieces = chunk::region_pieces(&regions);
            let mut err: Result<()> = Ok(());
            let r = timed(|| {
                let res = (|| -> Result<()> {
                    s.on_frame(Frame::CutBegin {
                        cut,
                        parent: Some(cut - 1),
                        kind: CutKind::Incremental,
                        regions: pieces[0].clone(),
                    })?;
                    for b in &prep.frames {
                        let (f, _) = decode_frame(b)?;
                        s.on_frame(f)?;
                    }
                    let out = s.on_frame(Frame::CutEnd {
                        cut,
                        chunks: prep.frames.len() as u64,
                        bytes,
                    })?;
                    anyhow::ensure!(
                        matches!(out.as_slice(), [Frame::Committed { .. }]),
                        "no Committed: {out:?}"
                    );
                    Ok(())
                })();
                err = res;
            });
            rep.store = Some(s.into_store());
            err?;
            r
        }
        other => anyhow::bail!("unknown stage {other}"),
    };
    Ok(Sample { bytes, wall, cpu })
}

/// CPU time of this process's threads whose name starts with `prefix`, from
/// /proc/self/task/*/schedstat (nanoseconds on a CPU; the runtimes keep their threads alive).
fn threads_cpu(prefix: &str) -> Duration {
    let mut ns = 0u64;
    if let Ok(rd) = fs::read_dir("/proc/self/task") {
        for e in rd.flatten() {
            let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if !comm.trim_end().starts_with(prefix) {
                continue;
            }
            let st = fs::read_to_string(e.path().join("schedstat")).unwrap_or_default();
            ns += st
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// One end-to-end ship over loopback TCP.
#[derive(Clone, Copy, Default)]
struct E2e {
    bytes: u64,
    wire: u64,
    wall: Duration,
    cpu: Duration,
    primary_cpu: Duration,
    replica_cpu: Duration,
}

struct E2eLab {
    primary_rt: tokio::runtime::Runtime,
    _replica_rt: tokio::runtime::Runtime,
    conn: Option<PrimaryConn<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf>>,
    image: Arc<File>,
    regions: RoaringBitmap,
    bytes: u64,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl E2eLab {
    fn new(dir: &Path, data: &[u8], region: usize) -> Result<E2eLab> {
        let img_path = dir.join("e2e-primary.img");
        fs::write(&img_path, data)?;
        let image = Arc::new(File::open(&img_path)?);
        let bytes = data.len() as u64;
        let rdev = dir.join("e2e-replica.img");
        File::create(&rdev)?.set_len(bytes)?;
        let store = ReplicaStore::open(&rdev, &dir.join("e2e-replica-state"))?;
        let keep = Duration::from_secs(3600);
        let replica_rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("bench-replica")
            .thread_keep_alive(keep)
            .build()?;
        let primary_rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("bench-primary")
            .thread_keep_alive(keep)
            .build()?;
        let listener = replica_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let status = Arc::new(Mutex::new(ServeStatus::default()));
        replica_rt.spawn(async move {
            let _ = serve(listener, store, ServeOptions::default(), status, async {
                let _ = stop_rx.await;
            })
            .await;
        });
        let g = Geometry::new((region / 512) as u32, bytes / 512)?;
        let volume = [9u8; 16];
        let mut conn = primary_rt.block_on(PrimaryConn::connect(
            addr,
            volume,
            g,
            ShipOptions {
                zstd_level: level(),
                ..ShipOptions::default()
            },
        ))?;
        // An empty rescan makes the replica live (journaled commits from then on).
        let ids = conn.next_cut_ids();
        let img: Arc<dyn bdr_sync::CutImage> = image.clone();
        primary_rt.block_on(conn.ship_cut(img, &RoaringBitmap::new(), ids, CutKind::Rescan))?;
        let mut regions = RoaringBitmap::new();
        regions.insert_range(0..g.nr_regions as u32);
        Ok(E2eLab {
            primary_rt,
            _replica_rt: replica_rt,
            conn: Some(conn),
            image,
            regions,
            bytes,
            _stop: stop,
        })
    }

    fn ship(&mut self) -> Result<E2e> {
        let mut conn = self.conn.take().expect("conn");
        let ids = conn.next_cut_ids();
        let img: Arc<dyn bdr_sync::CutImage> = self.image.clone();
        let regions = self.regions.clone();
        let (c0, p0, r0) = (
            process_cpu(),
            threads_cpu("bench-primary"),
            threads_cpu("bench-replica"),
        );
        let t0 = Instant::now();
        // On a runtime thread (not this one), so the primary's CPU is its threads'.
        let (conn, st) = self.primary_rt.block_on(self.primary_rt.spawn(async move {
            let r = conn
                .ship_cut(img, &regions, ids, CutKind::Incremental)
                .await;
            (conn, r)
        }))?;
        let wall = t0.elapsed();
        self.conn = Some(conn);
        let st = st?;
        Ok(E2e {
            bytes: self.bytes,
            wire: st.bytes_sent,
            wall,
            cpu: process_cpu() - c0,
            primary_cpu: threads_cpu("bench-primary") - p0,
            replica_cpu: threads_cpu("bench-replica") - r0,
        })
    }
}

fn main() -> Result<()> {
    let a = parse_args()?;
    LEVEL.store(a.level, std::sync::atomic::Ordering::Relaxed);
    let work = tempfile::Builder::new()
        .prefix("bdr-bench-pipeline-")
        .tempdir_in(&a.dir)
        .with_context(|| format!("temp dir in {}", a.dir.display()))?;
    let region = a.region;
    let regions = (a.mb << 20) / region as u64;
    eprintln!(
        "pipeline: {} MiB per data set, {} B regions, {} rounds, files in {}",
        a.mb,
        region,
        a.rounds,
        work.path().display()
    );
    let e2e_regions = (a.e2e_mb << 20) / region as u64;
    let e2e_data = make_data(e2e_regions, region, 11, mix_class);
    let mut lab = E2eLab::new(work.path(), &e2e_data, region)?;
    drop(e2e_data);
    if a.e2e_only {
        for _ in 0..a.rounds {
            let e = lab.ship()?;
            println!(
                "e2e: {:.0} MB/s wall, {:.0} MB/s per CPU-s (primary {:.0}, replica {:.0})",
                e.bytes as f64 / MB / e.wall.as_secs_f64(),
                e.bytes as f64 / MB / e.cpu.as_secs_f64(),
                e.bytes as f64 / MB / e.primary_cpu.as_secs_f64(),
                e.bytes as f64 / MB / e.replica_cpu.as_secs_f64()
            );
        }
        return Ok(());
    }

    let mk = |name: &'static str, seed: u64, class: &dyn Fn(u64) -> Class| -> Result<DataSet> {
        let data = make_data(regions, region, seed, class);
        let p = work.path().join(format!("{name}.img"));
        fs::write(&p, &data)?;
        Ok(DataSet {
            name,
            file: File::open(&p)?,
            data,
            region,
        })
    };
    let sets = [
        mk("mix", 1, &mix_class)?,
        mk("random", 2, &|_| Class::Random)?,
        mk("text", 3, &|_| Class::Text)?,
    ];
    let preps: Vec<Prepared> = sets.iter().map(prepare).collect::<Result<_>>()?;
    let mut rep = Replica::new(work.path(), regions * region as u64, region)?;

    // samples[stage][set] = per-round samples
    let mut samples: BTreeMap<(usize, usize), Vec<Sample>> = BTreeMap::new();
    let mut e2e: Vec<E2e> = Vec::new();
    for round in 0..a.rounds {
        let n = STAGES.len();
        for k in 0..n {
            let si = (k + round * 3) % n; // rotated order per round
            for (di, ds) in sets.iter().enumerate() {
                let s = run_stage(STAGES[si], ds, &preps[di], &mut rep)
                    .with_context(|| format!("stage {} on {}", STAGES[si], ds.name))?;
                samples.entry((si, di)).or_default().push(s);
            }
        }
        let e = lab.ship()?;
        eprintln!(
            "round {}: e2e {:.0} MB/s wall, {:.0} MB/s per CPU-s",
            round + 1,
            e.bytes as f64 / MB / e.wall.as_secs_f64(),
            e.bytes as f64 / MB / e.cpu.as_secs_f64()
        );
        e2e.push(e);
    }

    // Medians.
    let med = |si: usize, di: usize, f: fn(&Sample) -> f64| -> f64 {
        median(&samples[&(si, di)].iter().map(f).collect::<Vec<_>>())
    };
    let memcpy_mix = med(0, 0, Sample::per_core);
    let mut rows = Vec::new();
    let mut stage_json = Vec::new();
    for (si, st) in STAGES.iter().enumerate() {
        let mut r = vec![st.to_string()];
        let mut per_set = serde_json::Map::new();
        for (di, ds) in sets.iter().enumerate() {
            let pc = med(si, di, Sample::per_core);
            r.push(format!("{pc:.0}"));
            per_set.insert(
                ds.name.to_string(),
                serde_json::json!({
                    "mb_per_cpu_s_median": pc,
                    "mb_per_wall_s_median": med(si, di, Sample::per_wall),
                    "rounds": samples[&(si, di)].iter().map(|s| serde_json::json!({
                        "bytes": s.bytes, "wall_s": s.wall.as_secs_f64(), "cpu_s": s.cpu.as_secs_f64(),
                    })).collect::<Vec<_>>(),
                }),
            );
        }
        r.push(format!("{:.2}", med(si, 0, Sample::per_core) / memcpy_mix));
        rows.push(r);
        stage_json.push(serde_json::json!({"stage": st, "sets": per_set}));
    }
    let e_med = |f: &dyn Fn(&E2e) -> f64| median(&e2e.iter().map(f).collect::<Vec<_>>());
    let mb = |e: &E2e| e.bytes as f64 / MB;
    let e_wall = e_med(&|e| mb(e) / e.wall.as_secs_f64());
    let e_cpu = e_med(&|e| mb(e) / e.cpu.as_secs_f64());
    let e_pcpu = e_med(&|e| mb(e) / e.primary_cpu.as_secs_f64());
    let e_rcpu = e_med(&|e| mb(e) / e.replica_cpu.as_secs_f64());
    let e_ratio = e_med(&|e| e.bytes as f64 / e.wire as f64);

    let mut md = String::new();
    md += &format!(
        "### Shipping pipeline, per stage (MB/s per core = plain MB per CPU-second of one thread; median of {} rounds; {} KiB chunks, {} MiB per data set)\n\n",
        a.rounds,
        region >> 10,
        a.mb
    );
    md += &md_table(&["stage", "mix", "random", "text", "mix vs memcpy"], &rows);
    md += &format!(
        "\nmix = 50% random, 35% text, 15% zeros; zstd level {} compresses it {:.2}x (random {:.2}x, text {:.2}x).\n\n",
        level(),
        sets[0].bytes() as f64 / preps[0].compressed_bytes as f64,
        sets[1].bytes() as f64 / preps[1].compressed_bytes as f64,
        sets[2].bytes() as f64 / preps[2].compressed_bytes as f64,
    );
    md += &format!(
        "### End to end over loopback TCP (ship_cut → replica::serve, one process, {} MiB mix per cut, journaled commit, median of {} rounds)\n\n",
        a.e2e_mb, a.rounds
    );
    md += &md_table(
        &["metric", "value"],
        &[
            vec!["MB/s wall".into(), format!("{e_wall:.0}")],
            vec![
                "MB/s per CPU-second (whole process)".into(),
                format!("{e_cpu:.0}"),
            ],
            vec![
                "MB/s per CPU-second, primary side".into(),
                format!("{e_pcpu:.0}"),
            ],
            vec![
                "MB/s per CPU-second, replica side".into(),
                format!("{e_rcpu:.0}"),
            ],
            vec!["plain / wire bytes".into(), format!("{e_ratio:.2}x")],
        ],
    );
    md += &format!(
        "\nTarget: shipping ≥ 1000 MB/s per core. Host: {}; data in {}.\n",
        host_info()["cpu"].as_str().unwrap_or("?"),
        a.dir.display()
    );
    print!("{md}");

    fs::create_dir_all(&a.out)?;
    let json = serde_json::json!({
        "bench": "host-pipeline",
        "unit": "MB/s (10^6 bytes per second)",
        "host": host_info(),
        "dir": a.dir,
        "region_bytes": region,
        "mb_per_set": a.mb,
        "rounds": a.rounds,
        "zstd_level": level(),
        "sets": sets.iter().zip(&preps).map(|(s, p)| serde_json::json!({
            "name": s.name, "bytes": s.bytes(), "zstd_bytes": p.compressed_bytes,
        })).collect::<Vec<_>>(),
        "stages": stage_json,
        "e2e": {
            "mb_per_cut": a.e2e_mb,
            "mb_per_wall_s_median": e_wall,
            "mb_per_cpu_s_median": e_cpu,
            "primary_mb_per_cpu_s_median": e_pcpu,
            "replica_mb_per_cpu_s_median": e_rcpu,
            "compression_median": e_ratio,
            "rounds": e2e.iter().map(|e| serde_json::json!({
                "bytes": e.bytes, "wire_bytes": e.wire, "wall_s": e.wall.as_secs_f64(),
                "cpu_s": e.cpu.as_secs_f64(), "primary_cpu_s": e.primary_cpu.as_secs_f64(),
                "replica_cpu_s": e.replica_cpu.as_secs_f64(),
            })).collect::<Vec<_>>(),
        },
        "markdown": md,
    });
    let jp = a.out.join("host-pipeline.json");
    fs::File::create(&jp)?.write_all(serde_json::to_string_pretty(&json)?.as_bytes())?;

    let text = register_chart_font();
    let mut bars: Vec<Bar> = STAGES
        .iter()
        .enumerate()
        .map(|(si, st)| Bar {
            label: st.to_string(),
            value: med(si, 0, Sample::per_core),
            group: if si < 2 {
                0
            } else if si < 6 {
                1
            } else {
                2
            },
        })
        .collect();
    bars.push(Bar {
        label: "end to end, per CPU-s".into(),
        value: e_cpu,
        group: 3,
    });
    bars.push(Bar {
        label: "end to end, primary per CPU-s".into(),
        value: e_pcpu,
        group: 3,
    });
    bars.push(Bar {
        label: "end to end, replica per CPU-s".into(),
        value: e_rcpu,
        group: 3,
    });
    bars.push(Bar {
        label: "end to end, wall (2 cores)".into(),
        value: e_wall,
        group: 4,
    });
    // memcpy dwarfs the rest: cap the axis so the stages stay readable.
    let cap = bars[2..].iter().map(|b| b.value).fold(1000.0, f64::max) * 1.3;
    for b in bars.iter_mut().take(2) {
        if b.value > cap {
            b.label = format!("{} ({:.0}, cut)", b.label, b.value);
            b.value = cap;
        }
    }
    let pp = a.out.join("host-pipeline.png");
    bar_chart(
        &pp,
        "bdr shipping pipeline on the host: MB/s per core (mix data)",
        "MB/s per core (plain bytes per CPU-second)",
        &bars,
        &[(1000.0, "target 1 GB/s/core")],
        text,
    )?;
    eprintln!(
        "wrote {} and {}{}",
        jp.display(),
        pp.display(),
        if text {
            ""
        } else {
            " (no font found: chart without text)"
        }
    );
    Ok(())
}
