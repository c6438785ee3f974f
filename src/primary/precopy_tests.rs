//! Pre-copy end to end in one process: the file stand-in as the primary (wrapped to capture
//! each cut's image, to tear copies on purpose and to fail on demand), a real replica
//! server on loopback, the engine in between. After every committed cut the replica must
//! equal that cut's image byte for byte.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use bdr_bitmap::{FileDirtyMap, Geometry, MapInfo};
use bdr_sync::replica::{serve, ServeOptions, ServeStatus};
use bdr_sync::{CutImage, ReplicaStore, ShipOptions};
use tokio::sync::watch;

use super::engine::{PrecopyOptions, Replicator, Step};
use crate::cut::file::{FileCutSource, StandInWriter};
use crate::cut::{CowUsage, Cut, CutSource, PrecopyPass};
use crate::state::StateDir;

const REGION: u64 = 64 << 10;
const REGIONS: u64 = 32;
const DEV: u64 = REGION * REGIONS;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Tears pre-copy reads on purpose: every `every`-th read of the live device happens in the
/// middle of a write to the same bytes (first half written, then the read, then the second
/// half and the dirty mark, as a write completing after the read).
struct Tearer {
    writer: Mutex<(StandInWriter, Rng)>,
    every: u64,
    reads: AtomicU64,
    torn: AtomicU64,
}

struct RacyLive {
    inner: Arc<dyn CutImage>,
    tearer: Arc<Tearer>,
}

impl CutImage for RacyLive {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let n = self.tearer.reads.fetch_add(1, Ordering::Relaxed);
        if !n.is_multiple_of(self.tearer.every) {
            return self.inner.read_at(buf, off);
        }
        let mut g = self.tearer.writer.lock().unwrap();
        let (w, rng) = &mut *g;
        let mut data = vec![0u8; buf.len()];
        rng.fill(&mut data);
        let mut res = Ok(());
        w.write_torn(off, &data, || res = self.inner.read_at(buf, off))
            .map_err(io::Error::other)?;
        if res.is_ok() && buf[0] == data[0] && buf[buf.len() - 1] != data[buf.len() - 1] {
            self.tearer.torn.fetch_add(1, Ordering::Relaxed);
        }
        res
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fail {
    /// The second pre-copy pass fails.
    SecondPass,
    /// Taking the cut after pre-copy fails.
    Take,
    /// Reading the cut's image (the residue) fails mid-ship.
    Residue,
    /// The COW store overflows while the cut is live (the snapshot becomes invalid).
    CowOverflow,
}

struct FailingImage(Arc<dyn CutImage>);
impl CutImage for FailingImage {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("injected: the snapshot cannot be read"))
    }
}

/// The stand-in, capturing each cut's image and failing on demand.
struct Racy {
    inner: FileCutSource,
    tearer: Option<Arc<Tearer>>,
    /// Every cut's image, in order (shared: the engine holds the source while it runs).
    images: Arc<Mutex<Vec<Vec<u8>>>>,
    fail: Option<Fail>,
    passes: u32,
    /// Images released before the commit.
    released: u64,
    /// A cut is live (taken, not yet committed, aborted or released).
    live: bool,
}

impl CutSource for Racy {
    fn info(&self) -> Result<MapInfo> {
        self.inner.info()
    }
    fn take(&mut self) -> Result<Cut> {
        if self.fail == Some(Fail::Take) {
            return Err(anyhow!("injected: take failed"));
        }
        let mut cut = self.inner.take()?;
        let mut img = vec![0u8; DEV as usize];
        cut.image.read_at(&mut img, 0)?;
        self.images.lock().unwrap().push(img);
        if self.fail == Some(Fail::Residue) {
            cut.image = Arc::new(FailingImage(cut.image.clone()));
        }
        self.live = true;
        Ok(cut)
    }
    fn commit(&mut self, cut: Cut) -> Result<()> {
        self.passes = 0;
        self.live = false;
        self.inner.commit(cut)
    }
    fn abort(&mut self, cut: Cut) -> Result<()> {
        self.passes = 0;
        self.live = false;
        self.inner.abort(cut)
    }
    fn cow_usage(&self) -> Option<CowUsage> {
        // As dm-snapshot reports it: an overflowed snapshot is invalid until removed.
        (self.live && self.fail == Some(Fail::CowOverflow)).then_some(CowUsage {
            used_bytes: 1 << 20,
            total_bytes: 1 << 20,
            invalid: true,
        })
    }
    fn release_image(&mut self, cut: &mut Cut) -> Result<()> {
        if self.cow_usage().is_some_and(|c| c.invalid) {
            return Err(anyhow!("injected: the COW store overflowed"));
        }
        self.released += 1;
        self.live = false;
        self.inner.release_image(cut)
    }
    fn precopy_pass(&mut self) -> Result<PrecopyPass> {
        self.passes += 1;
        if self.passes == 2 && self.fail == Some(Fail::SecondPass) {
            return Err(anyhow!("injected: pass 2 failed"));
        }
        self.inner.precopy_pass()
    }
    fn precopy_pending(&self) -> Result<u64> {
        self.inner.precopy_pending()
    }
    fn live_image(&self) -> Result<Arc<dyn CutImage>> {
        let inner = self.inner.live_image()?;
        Ok(match &self.tearer {
            Some(t) => Arc::new(RacyLive {
                inner,
                tearer: t.clone(),
            }),
            None => inner,
        })
    }
    fn abort_precopy(&mut self) -> Result<()> {
        self.passes = 0;
        self.inner.abort_precopy()
    }
}

struct Lab {
    _tmp: tempfile::TempDir,
    dev: PathBuf,
    map: PathBuf,
    rdev: PathBuf,
    rstate: PathBuf,
    pstate: PathBuf,
}

impl Lab {
    fn new(seed: u64) -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let mut data = vec![0u8; DEV as usize];
        Rng(seed | 1).fill(&mut data);
        let dev = root.join("dev");
        fs::write(&dev, &data).unwrap();
        let map = root.join("map");
        FileDirtyMap::create(
            &map,
            Geometry::new((REGION / 512) as u32, DEV / 512).unwrap(),
        )
        .unwrap();
        let rdev = root.join("replica");
        fs::write(&rdev, vec![0u8; DEV as usize]).unwrap();
        Lab {
            dev,
            map,
            rdev,
            rstate: root.join("rstate"),
            pstate: root.join("pstate"),
            _tmp: tmp,
        }
    }

    fn source(&self, tear_every: Option<u64>, seed: u64) -> Racy {
        Racy {
            inner: FileCutSource::open(&self.dev, &self.map, None).unwrap(),
            tearer: tear_every.map(|every| {
                Arc::new(Tearer {
                    writer: Mutex::new((
                        StandInWriter::open(&self.dev, &self.map).unwrap(),
                        Rng(seed),
                    )),
                    every,
                    reads: AtomicU64::new(0),
                    torn: AtomicU64::new(0),
                })
            }),
            images: Arc::default(),
            fail: None,
            passes: 0,
            released: 0,
            live: false,
        }
    }

    async fn replica(&self) -> String {
        let store = ReplicaStore::open(&self.rdev, &self.rstate).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let status = Arc::new(Mutex::new(ServeStatus::default()));
        tokio::spawn(serve(
            listener,
            store,
            ServeOptions::default(),
            status,
            std::future::pending::<()>(),
        ));
        addr
    }

    fn replica_bytes(&self) -> Vec<u8> {
        fs::read(&self.rdev).unwrap()
    }

    fn replica_last_cut(&self) -> u64 {
        let t = fs::read_to_string(self.rstate.join("state")).unwrap();
        t.lines()
            .find_map(|l| l.strip_prefix("last_cut "))
            .unwrap()
            .parse()
            .unwrap()
    }
}

#[track_caller]
fn assert_same(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!(
            "{what}: first difference at byte {i} (region {})",
            i as u64 / REGION
        );
    }
}

/// Background writers: random writes (some torn, i.e. slow) over the whole device until
/// `stop`, each thread with its own writer (the stand-in's lock is per open file).
fn writers(
    dev: &Path,
    map: &Path,
    n: u64,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<u64>> {
    (0..n)
        .map(|i| {
            let w = StandInWriter::open(dev, map).unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(1000 + i);
                let mut count = 0;
                while !stop.load(Ordering::Relaxed) {
                    let len = 512 * (1 + rng.next() % 256);
                    let off = (rng.next() % ((DEV - len) / 512)) * 512;
                    let mut d = vec![0u8; len as usize];
                    rng.fill(&mut d);
                    if rng.next().is_multiple_of(2) {
                        w.write_torn(off, &d, || std::thread::sleep(Duration::from_micros(200)))
                            .unwrap();
                    } else {
                        w.write(off, &d).unwrap();
                    }
                    count += 1;
                    std::thread::sleep(Duration::from_micros(300));
                }
                count
            })
        })
        .collect()
}

fn precopy_opts() -> PrecopyOptions {
    PrecopyOptions {
        enabled: true,
        max_passes: 4,
        min_regions: 0,
        shrink: 0.9,
    }
}

/// Many cuts with pre-copy while writers write everywhere and every third live read is
/// torn on purpose (a write to the very bytes being copied is in flight during the read):
/// after each commit the replica equals that cut's image exactly; torn copies happened and
/// regions were shipped again by later passes or the residue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precopy_under_concurrent_and_torn_writes_commits_exact_cuts() {
    let lab = Lab::new(7);
    let addr = lab.replica().await;
    let mut src = lab.source(Some(3), 99);
    let (_tx, stop) = watch::channel(false);
    let opts = ShipOptions {
        in_flight: 4,
        ..ShipOptions::default()
    };
    let halt = Arc::new(AtomicBool::new(false));
    let threads = writers(&lab.dev, &lab.map, 2, halt.clone());
    let (mut reshipped, mut passes, mut cuts) = (0u64, 0u64, 0u64);
    let images = src.images.clone();
    {
        let dir = StateDir::open_locked(&lab.pstate).unwrap();
        let mut rep = Replicator::new(&mut src, dir, &addr, "test", opts).unwrap();
        rep.set_precopy(precopy_opts());
        for i in 0..40 {
            let Step::Committed(s) = rep.step(false, &stop).await.unwrap() else {
                panic!("no cut");
            };
            if i == 0 {
                assert_eq!(s.kind, "rescan");
                assert_eq!(s.precopy_passes, 0);
            } else {
                assert_eq!(s.kind, "incremental");
                assert!(s.precopy_passes >= 1, "{s:?}");
                assert!(s.snapshot_ms <= s.cut_ms, "{s:?}");
                reshipped += s.chunks - s.regions;
                assert_eq!(s.precopy_regions + s.residue_regions, s.chunks, "{s:?}");
                passes += u64::from(s.precopy_passes);
                cuts += 1;
            }
            // Exact: the replica is the cut's image, byte for byte.
            assert_same(
                &lab.replica_bytes(),
                images.lock().unwrap().last().unwrap(),
                &format!(
                    "replica after cut {} ({} pre-copy passes)",
                    s.cut, s.precopy_passes
                ),
            );
            assert_eq!(lab.replica_last_cut(), s.cut);
        }
        rep.finish().await;
    }
    halt.store(true, Ordering::Relaxed);
    let written: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    // Every committed cut was exact; the replica checked after each one below.
    let t = src.tearer.as_ref().unwrap();
    let torn = t.torn.load(Ordering::Relaxed);
    eprintln!(
        "{cuts} pre-copy cuts, {passes} passes, {reshipped} chunks re-shipped, \
         {torn} torn copies, {written} background writes"
    );
    assert!(torn > 0, "no copy was torn: the race was not exercised");
    assert_eq!(
        src.released, cuts,
        "each pre-copy cut released its image before the commit"
    );
    assert!(reshipped > 0, "no region was shipped twice");
}

/// A failure in the second pass, at the cut, or while the residue ships: the replica stays
/// at the previous cut, every frozen region is merged back, the next cut catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_mid_precopy_or_mid_residue_lose_nothing() {
    let lab = Lab::new(9);
    let addr = lab.replica().await;
    let (_tx, stop) = watch::channel(false);
    // Every live read is torn: writes land during each pass, so pass 2 is always due.
    let mut src = lab.source(Some(1), 1);
    let w = StandInWriter::open(&lab.dev, &lab.map).unwrap();
    let mut rng = Rng(77);
    let mut scribble = |n: usize| {
        for _ in 0..n {
            let off = (rng.next() % (DEV / 4096 - 32)) * 4096;
            let mut d = vec![0u8; 4096 * (1 + (rng.next() % 31) as usize)];
            rng.fill(&mut d);
            w.write(off, &d).unwrap();
        }
    };
    async fn step(
        lab: &Lab,
        addr: &str,
        stop: &watch::Receiver<bool>,
        src: &mut Racy,
        fail: Option<Fail>,
    ) -> Result<Step> {
        src.fail = fail;
        let dir = StateDir::open_locked(&lab.pstate).unwrap();
        let mut rep = Replicator::new(src, dir, addr, "test", ShipOptions::default()).unwrap();
        rep.set_precopy(PrecopyOptions {
            shrink: 1.0,
            ..precopy_opts()
        });
        let r = rep.step(false, stop).await;
        rep.finish().await;
        r
    }
    step(&lab, &addr, &stop, &mut src, None).await.unwrap(); // the seed
    let mut last = lab.replica_bytes();
    for fail in [Fail::SecondPass, Fail::Take, Fail::Residue] {
        let before_cut = lab.replica_last_cut();
        scribble(20);
        let pending = src.info().unwrap().active_regions;
        assert!(pending > 0);
        let e = step(&lab, &addr, &stop, &mut src, Some(fail))
            .await
            .expect_err("injected failure");
        let msg = format!("{e:#}");
        assert!(msg.contains("injected"), "{fail:?}: {msg}");
        assert_eq!(lab.replica_last_cut(), before_cut, "{fail:?}");
        assert_same(
            &lab.replica_bytes(),
            &last,
            &format!("replica after {fail:?}"),
        );
        let info = src.info().unwrap();
        assert_eq!(info.frozen_regions, 0, "{fail:?}: frozen bits left");
        assert!(info.active_regions >= pending, "{fail:?}: bits lost");
        // The next cut catches up exactly.
        // The replica may still be closing the failed session (a loaded host): "busy"
        // then, and the daemon would try again a second later; so does this test.
        let mut tries = 0;
        let r = loop {
            match step(&lab, &addr, &stop, &mut src, None).await {
                Err(e) if tries < 10 && format!("{e:#}").contains("busy") => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                r => break r.unwrap_or_else(|e| panic!("{fail:?}: catch-up: {e:#}")),
            }
        };
        let Step::Committed(s) = r else { panic!() };
        assert!(s.regions >= pending, "{s:?}");
        assert_same(
            &lab.replica_bytes(),
            src.images.lock().unwrap().last().unwrap(),
            &format!("catch-up after {fail:?}"),
        );
        last = lab.replica_bytes();
        let info = src.info().unwrap();
        assert_eq!((info.active_regions, info.frozen_regions), (0, 0));
    }
}

/// The COW store overflows while a cut is read, with and without pre-copy, for an
/// incremental cut and for a rescan: `CutEnd` is never sent, so the replica never commits
/// the (invalid) image and stays at its last cut; every region is merged back and the next
/// cut, an incremental one, catches up exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cow_overflow_never_lets_the_replica_commit_the_cut() {
    let lab = Lab::new(11);
    let addr = lab.replica().await;
    let (_tx, stop) = watch::channel(false);
    let mut src = lab.source(None, 1);
    let w = StandInWriter::open(&lab.dev, &lab.map).unwrap();
    let mut rng = Rng(5);
    async fn step(
        lab: &Lab,
        addr: &str,
        stop: &watch::Receiver<bool>,
        src: &mut Racy,
        fail: Option<Fail>,
        precopy: bool,
    ) -> Result<Step> {
        src.fail = fail;
        let dir = StateDir::open_locked(&lab.pstate).unwrap();
        let mut rep = Replicator::new(src, dir, addr, "test", ShipOptions::default()).unwrap();
        rep.set_precopy(PrecopyOptions {
            enabled: precopy,
            ..precopy_opts()
        });
        let r = rep.step(false, stop).await;
        rep.finish().await;
        r
    }
    // The seed is a rescan: an overflow there must not commit either.
    let e = step(&lab, &addr, &stop, &mut src, Some(Fail::CowOverflow), false)
        .await
        .expect_err("overflow during the seed");
    assert!(format!("{e:#}").contains("overflow"), "{e:#}");
    assert!(!lab.rstate.join("state").exists(), "the seed was committed");
    step(&lab, &addr, &stop, &mut src, None, false)
        .await
        .unwrap();
    let mut last = lab.replica_bytes();
    for precopy in [false, true] {
        let before = lab.replica_last_cut();
        for _ in 0..20 {
            let off = (rng.next() % (DEV / 4096 - 4)) * 4096;
            let mut d = vec![0u8; 16384];
            rng.fill(&mut d);
            w.write(off, &d).unwrap();
        }
        let e = step(
            &lab,
            &addr,
            &stop,
            &mut src,
            Some(Fail::CowOverflow),
            precopy,
        )
        .await
        .expect_err("overflow");
        assert!(format!("{e:#}").contains("overflow"), "{e:#}");
        assert_eq!(
            lab.replica_last_cut(),
            before,
            "precopy {precopy}: committed"
        );
        assert_same(&lab.replica_bytes(), &last, "replica after the overflow");
        let info = src.info().unwrap();
        assert_eq!(info.frozen_regions, 0, "frozen bits left");
        assert!(info.active_regions > 0, "bits lost");
        let Step::Committed(s) = step(&lab, &addr, &stop, &mut src, None, precopy)
            .await
            .unwrap()
        else {
            panic!("no cut")
        };
        // The replica never saw the cut end: no rescan is needed to catch up.
        assert_eq!(s.rescan_reason, None, "precopy {precopy}: {s:?}");
        assert_same(
            &lab.replica_bytes(),
            src.images.lock().unwrap().last().unwrap(),
            "catch-up after the overflow",
        );
        last = lab.replica_bytes();
    }
}
