//! The conformance suite against [`FileDirtyMap`], plus deliberately broken maps and writers
//! that the suite must reject (so a suite that passes everything would be noticed).

use std::ops::Range;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bdr_bitmap::conformance::{self, Writer};
use bdr_bitmap::{DirtyMap, Error, FileDirtyMap, Generation, Geometry, MapInfo, RoaringBitmap};

/// 64 KiB regions on a 10 MiB + 3.5 KiB device: 160 full regions and a partial 161st.
fn odd_geometry() -> Geometry {
    Geometry::new(128, (10 << 20) / 512 + 7).unwrap()
}

/// 4 KiB regions on a 1 MiB + 2.5 KiB device.
fn small_geometry() -> Geometry {
    Geometry::new(8, (1 << 20) / 512 + 5).unwrap()
}

/// Simulates I/O on the device by marking a second handle on the same file, as a separate
/// process (the device) would.
struct MarkWriter {
    dev: FileDirtyMap,
}

impl Writer for MarkWriter {
    fn write(&self, byte_off: u64, byte_len: u64) {
        self.dev.mark(byte_off, byte_len).expect("mark (write)");
    }
    fn discard(&self, byte_off: u64, byte_len: u64) {
        self.dev.mark(byte_off, byte_len).expect("mark (discard)");
    }
    fn write_zeroes(&self, byte_off: u64, byte_len: u64) {
        self.dev
            .mark(byte_off, byte_len)
            .expect("mark (write-zeroes)");
    }
    fn flush(&self) {
        self.dev.mark(0, 0).expect("mark (flush)");
    }
    fn geometry(&self) -> Geometry {
        self.dev.info().expect("info").geometry
    }
}

fn setup(geometry: Geometry) -> (tempfile::TempDir, FileDirtyMap, MarkWriter) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.map");
    let map = FileDirtyMap::create(&path, geometry).unwrap();
    let dev = FileDirtyMap::open(&path).unwrap();
    (dir, map, MarkWriter { dev })
}

bdr_bitmap::conformance_tests!(setup = setup(odd_geometry()));

#[test]
fn all_cases_with_4k_regions_in_one_run() {
    let (_dir, map, w) = setup(small_geometry());
    for (name, case) in conformance::CASES {
        if *name == "concurrent_writers" {
            conformance::concurrent_writers_for(&map, &w, Duration::from_millis(500));
        } else {
            case(&map, &w);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The suite must catch broken implementations.

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// Freeze replaces the frozen bitmap instead of OR-merging into it.
    FreezeOverwrites,
    /// Reading the active bitmap clears it.
    ReadActiveClears,
    /// Ack leaves the frozen bitmap in place.
    AckKeeps,
    /// Merge-back drops the frozen bits.
    MergeDrops,
    /// Calls ignore the generation.
    IgnoresGeneration,
    /// Load replaces instead of OR-ing.
    LoadReplaces,
}

struct Broken {
    inner: FileDirtyMap,
    fault: Fault,
}

impl DirtyMap for Broken {
    fn info(&self) -> Result<MapInfo, Error> {
        self.inner.info()
    }
    fn freeze(&self, g: Generation) -> Result<u64, Error> {
        let g = self.g(g);
        if self.fault == Fault::FreezeOverwrites {
            self.inner.ack(g)?;
        }
        self.inner.freeze(g)
    }
    fn read_frozen(&self, g: Generation) -> Result<RoaringBitmap, Error> {
        self.inner.read_frozen(self.g(g))
    }
    fn read_active(&self, g: Generation) -> Result<RoaringBitmap, Error> {
        let g = self.g(g);
        let active = self.inner.read_active(g)?;
        if self.fault == Fault::ReadActiveClears {
            let frozen = self.inner.read_frozen(g)?;
            self.inner.freeze(g)?;
            self.inner.ack(g)?;
            self.inner.load(g, &frozen)?; // (lands in active: crude, but wrong anyway)
        }
        Ok(active)
    }
    fn ack(&self, g: Generation) -> Result<(), Error> {
        let g = self.g(g);
        if self.fault == Fault::AckKeeps {
            return Ok(());
        }
        self.inner.ack(g)
    }
    fn merge_back(&self, g: Generation) -> Result<(), Error> {
        let g = self.g(g);
        if self.fault == Fault::MergeDrops {
            return self.inner.ack(g);
        }
        self.inner.merge_back(g)
    }
    fn load(&self, g: Generation, regions: &RoaringBitmap) -> Result<(), Error> {
        let g = self.g(g);
        if self.fault == Fault::LoadReplaces {
            let frozen = self.inner.read_frozen(g)?;
            self.inner.freeze(g)?;
            self.inner.ack(g)?;
            self.inner.freeze(g)?;
            self.inner.load(g, &frozen)?;
            self.inner.merge_back(g)?;
            // active now holds only the old frozen bits; move them back to frozen
            self.inner.freeze(g)?;
        }
        self.inner.load(g, regions)
    }
}

impl Broken {
    fn g(&self, g: Generation) -> Generation {
        if self.fault == Fault::IgnoresGeneration {
            self.inner.info().unwrap().generation
        } else {
            g
        }
    }
}

fn broken(fault: Fault, case: conformance::Case) {
    let (_dir, inner, w) = setup(odd_geometry());
    case(&Broken { inner, fault }, &w);
}

#[test]
#[should_panic(expected = "frozen_regions after freeze 2")]
fn catches_freeze_that_overwrites() {
    broken(
        Fault::FreezeOverwrites,
        conformance::freeze_or_merges_into_unacked,
    );
}

#[test]
#[should_panic(expected = "read 2")]
fn catches_read_active_that_clears() {
    broken(
        Fault::ReadActiveClears,
        conformance::read_active_does_not_clear,
    );
}

#[test]
#[should_panic(expected = "frozen bitmap after ack")]
fn catches_ack_that_keeps() {
    broken(Fault::AckKeeps, conformance::ack_clears_frozen);
}

#[test]
#[should_panic(expected = "active bitmap after merge_back")]
fn catches_merge_that_drops() {
    broken(Fault::MergeDrops, conformance::merge_back_restores_active);
}

#[test]
#[should_panic(expected = "expected Error::Stale")]
fn catches_ignored_generation() {
    broken(
        Fault::IgnoresGeneration,
        conformance::wrong_generation_is_stale,
    );
}

#[test]
#[should_panic(expected = "active bitmap after load")]
fn catches_load_that_replaces() {
    broken(Fault::LoadReplaces, conformance::load_ors_into_active);
}

/// A mark to apply at a later instant.
type LateMark = (Instant, Range<u64>);

/// A device that marks wrongly: the suite must notice.
struct BadWriter {
    ok: MarkWriter,
    mode: BadMode,
    n: Mutex<u64>,
    late: Mutex<Option<mpsc::Sender<LateMark>>>,
}

#[derive(Clone, Copy, PartialEq)]
enum BadMode {
    /// Marks one byte too many (off-by-one at the end).
    OneByteLong,
    /// Marks a zero-length flush as a write of sector 0.
    FlushMarks,
    /// Marks only the first region of an I/O.
    FirstRegionOnly,
    /// Forgets every 50th write.
    DropsSome,
    /// Marks the next region too, every 50th write.
    PhantomSome,
    /// Marks only 5 ms after the write returned.
    MarksLate,
}

impl BadWriter {
    fn new(ok: MarkWriter, mode: BadMode) -> Self {
        BadWriter {
            ok,
            mode,
            n: Mutex::new(0),
            late: Mutex::new(None),
        }
    }

    fn mark(&self, off: u64, len: u64) {
        let n = {
            let mut n = self.n.lock().unwrap();
            *n += 1;
            *n
        };
        let geo = self.ok.geometry();
        match self.mode {
            BadMode::OneByteLong if len > 0 => {
                self.ok.write(off, (len + 1).min(geo.dev_bytes() - off))
            }
            BadMode::FirstRegionOnly if len > 0 => {
                let r = geo.region_of_byte(off);
                self.ok
                    .write(off, len.min(geo.region_byte_range(r).end - off))
            }
            BadMode::DropsSome if n % 50 == 0 => {}
            BadMode::PhantomSome if n % 50 == 0 => {
                self.ok.write(off, len);
                let r = (geo.region_of_byte(off) + 1) % geo.nr_regions;
                self.ok.write(geo.region_byte_range(r).start, 1);
            }
            BadMode::MarksLate => {
                let tx = self.late.lock().unwrap().clone().unwrap();
                tx.send((Instant::now() + Duration::from_millis(5), off..off + len))
                    .unwrap();
            }
            _ => self.ok.write(off, len),
        }
    }
}

impl Writer for BadWriter {
    fn write(&self, byte_off: u64, byte_len: u64) {
        self.mark(byte_off, byte_len)
    }
    fn discard(&self, byte_off: u64, byte_len: u64) {
        self.mark(byte_off, byte_len)
    }
    fn write_zeroes(&self, byte_off: u64, byte_len: u64) {
        self.mark(byte_off, byte_len)
    }
    fn flush(&self) {
        if self.mode == BadMode::FlushMarks {
            self.ok.write(0, 512);
        }
    }
    fn geometry(&self) -> Geometry {
        self.ok.geometry()
    }
}

fn bad_writer(mode: BadMode, case: conformance::Case) {
    let (_dir, map, ok) = setup(odd_geometry());
    let w = BadWriter::new(ok, mode);
    if mode == BadMode::MarksLate {
        let (tx, rx) = mpsc::channel::<LateMark>();
        *w.late.lock().unwrap() = Some(tx);
        std::thread::scope(|s| {
            s.spawn(|| {
                for (due, r) in rx {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    w.ok.write(r.start, r.end - r.start);
                }
            });
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&map, &w)));
            w.late.lock().unwrap().take(); // ends the marker thread
            if let Err(p) = result {
                std::panic::resume_unwind(p);
            }
        });
    } else {
        case(&map, &w);
    }
}

#[test]
#[should_panic(expected = "unexpected [11]")]
fn catches_off_by_one_at_region_end() {
    bad_writer(BadMode::OneByteLong, conformance::write_full_region_aligned);
}

#[test]
#[should_panic(expected = "[flush_marks_nothing] active bitmap")]
fn catches_flush_that_marks() {
    bad_writer(BadMode::FlushMarks, conformance::flush_marks_nothing);
}

#[test]
#[should_panic(expected = "missing [")]
fn catches_spanning_write_marking_one_region() {
    bad_writer(
        BadMode::FirstRegionOnly,
        conformance::write_spanning_regions,
    );
}

#[test]
#[should_panic(expected = "lost")]
fn catches_lost_writes_under_concurrency() {
    let (_dir, map, ok) = setup(odd_geometry());
    let w = BadWriter::new(ok, BadMode::DropsSome);
    conformance::concurrent_writers_for(&map, &w, Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "phantom bits")]
fn catches_phantom_bits_under_concurrency() {
    let (_dir, map, ok) = setup(odd_geometry());
    let w = BadWriter::new(ok, BadMode::PhantomSome);
    conformance::concurrent_writers_for(&map, &w, Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "a freeze missed a completed write")]
fn catches_marks_after_completion() {
    bad_writer(BadMode::MarksLate, |map, w| {
        conformance::concurrent_writers_for(map, w, Duration::from_secs(1))
    });
}
