//! The one test suite every [`DirtyMap`] implementation must pass.
//!
//! Each case is a function `fn(&dyn DirtyMap, &dyn Writer)` that panics with a message
//! naming the case and the difference on failure. A case starts by draining the bitmap
//! (freeze + ack) and assumes nothing else writes to the device or touches the bitmap while
//! it runs, so cases must run one at a time against one device. They need a device of at
//! least [`MIN_REGIONS`] regions whose last region is partial (`dev_sectors` not a multiple of
//! `region_sectors`).
//!
//! Host tests run the suite against [`FileDirtyMap`](crate::FileDirtyMap) with a [`Writer`]
//! that calls [`mark`](crate::FileDirtyMap::mark); the VM lab runs it against
//! [`KernelDirtyMap`](crate::KernelDirtyMap) with a writer doing real I/O on the bdr device.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use roaring::RoaringBitmap;

use crate::{DirtyMap, Error, Generation, Geometry};

/// Regions a device must have for the suite.
pub const MIN_REGIONS: u64 = 20;

/// Issues I/O to the device a [`DirtyMap`] observes. Every call returns only once the I/O
/// has completed (the map must show it), and panics if the I/O fails.
pub trait Writer: Sync {
    /// Writes `byte_len` bytes at `byte_off`.
    fn write(&self, byte_off: u64, byte_len: u64);
    /// Discards `byte_len` bytes at `byte_off`.
    fn discard(&self, byte_off: u64, byte_len: u64);
    /// Zeroes `byte_len` bytes at `byte_off` (write-zeroes).
    fn write_zeroes(&self, byte_off: u64, byte_len: u64);
    /// Flushes the device's write cache; writes no data, so must mark nothing.
    fn flush(&self);
    /// The device's geometry.
    fn geometry(&self) -> Geometry;
    /// The bytes an I/O of `byte_len` at `byte_off` actually covers: a writer that must
    /// round I/O out to the logical block size says so here, and expected regions are
    /// computed from this range. Identity by default.
    fn io_range(&self, byte_off: u64, byte_len: u64) -> Range<u64> {
        byte_off..byte_off + byte_len
    }
}

/// A conformance case.
pub type Case = fn(&dyn DirtyMap, &dyn Writer);

/// One `#[test]` per case, for an implementation's test file:
/// `bdr_bitmap::conformance_tests!(setup = setup());` where `setup()` returns
/// `(keep_alive, map, writer)`; attributes before `setup` (e.g. `#[ignore = "..."]`) go on
/// every test. The list is the one of [`CASES`], so a new case reaches every implementation.
#[macro_export]
macro_rules! conformance_tests {
    ($(#[$attr:meta])* setup = $setup:expr) => {
        $crate::conformance_tests!(@cases [$(#[$attr])*] $setup;
            write_unaligned, write_512_bytes, write_spanning_regions, write_full_region_aligned,
            write_partial_last_region, discard_marks, write_zeroes_marks, flush_marks_nothing,
            freeze_or_merges_into_unacked, ack_clears_frozen, merge_back_restores_active,
            read_active_does_not_clear, load_ors_into_active, wrong_generation_is_stale,
            concurrent_writers);
        #[test]
        fn every_case_has_a_test() {
            assert_eq!($crate::conformance::CASES.len(), 15, "add the new case to conformance_tests!");
        }
    };
    (@cases $attrs:tt $setup:expr; $($name:ident),*) => {
        $($crate::conformance_tests!(@one $attrs $setup; $name);)*
    };
    (@one [$($attr:tt)*] $setup:expr; $name:ident) => {
        #[test]
        $($attr)*
        fn $name() {
            let (_keep, map, w) = $setup;
            $crate::conformance::$name(&map, &w);
        }
    };
}

/// Every case, by name.
pub const CASES: &[(&str, Case)] = &[
    ("write_unaligned", write_unaligned),
    ("write_512_bytes", write_512_bytes),
    ("write_spanning_regions", write_spanning_regions),
    ("write_full_region_aligned", write_full_region_aligned),
    ("write_partial_last_region", write_partial_last_region),
    ("discard_marks", discard_marks),
    ("write_zeroes_marks", write_zeroes_marks),
    ("flush_marks_nothing", flush_marks_nothing),
    (
        "freeze_or_merges_into_unacked",
        freeze_or_merges_into_unacked,
    ),
    ("ack_clears_frozen", ack_clears_frozen),
    ("merge_back_restores_active", merge_back_restores_active),
    ("read_active_does_not_clear", read_active_does_not_clear),
    ("load_ors_into_active", load_ors_into_active),
    ("wrong_generation_is_stale", wrong_generation_is_stale),
    ("concurrent_writers", concurrent_writers),
];

/// Runs every case in turn.
pub fn run_all(map: &dyn DirtyMap, w: &dyn Writer) {
    for (name, case) in CASES {
        eprintln!("conformance: {name}");
        case(map, w);
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

fn ok<T>(case: &str, what: &str, r: Result<T, Error>) -> T {
    r.unwrap_or_else(|e| panic!("[{case}] {what} failed: {e}"))
}

/// Checks the geometry the suite needs; freezes and acks whatever is dirty; returns the
/// generation.
fn drain(case: &str, map: &dyn DirtyMap, w: &dyn Writer) -> Generation {
    let info = ok(case, "info", map.info());
    let geo = w.geometry();
    assert_eq!(
        info.geometry, geo,
        "[{case}] the map's geometry differs from the writer's device"
    );
    assert!(
        geo.nr_regions >= MIN_REGIONS,
        "[{case}] the device has {} regions; the suite needs at least {MIN_REGIONS}",
        geo.nr_regions
    );
    assert!(
        geo.dev_sectors % u64::from(geo.region_sectors) != 0,
        "[{case}] the device ({} sectors) is a multiple of the region size ({} sectors); \
         the suite needs a partial last region",
        geo.dev_sectors,
        geo.region_sectors
    );
    let g = info.generation;
    ok(case, "drain: freeze", map.freeze(g));
    ok(case, "drain: ack", map.ack(g));
    assert_eq!(
        ok(case, "drain: read_active", map.read_active(g)),
        RoaringBitmap::new(),
        "[{case}] the active bitmap is not empty right after a freeze: is something else \
         writing to the device?"
    );
    g
}

/// Regions an I/O touches, from the range the writer really covers.
fn regions_of(w: &dyn Writer, off: u64, len: u64) -> Range<u64> {
    let io = w.io_range(off, len);
    w.geometry().regions_for_range(io.start, io.end - io.start)
}

fn set(regions: impl IntoIterator<Item = u64>) -> RoaringBitmap {
    regions.into_iter().map(|r| r as u32).collect()
}

fn show(map: &RoaringBitmap) -> String {
    let v: Vec<u32> = map.iter().take(20).collect();
    if map.len() > 20 {
        format!("{v:?}... ({} in all)", map.len())
    } else {
        format!("{v:?}")
    }
}

#[track_caller]
fn assert_set(case: &str, what: &str, got: &RoaringBitmap, want: &RoaringBitmap) {
    if got != want {
        panic!(
            "[{case}] {what}: got {}, expected {}; missing {}, unexpected {}",
            show(got),
            show(want),
            show(&(want - got)),
            show(&(got - want))
        );
    }
}

fn assert_stale(
    case: &str,
    what: &str,
    r: Result<impl std::fmt::Debug, Error>,
    bad: Generation,
    g: Generation,
) {
    match r {
        Err(Error::Stale {
            expected, found, ..
        }) => {
            assert_eq!(
                expected, bad,
                "[{case}] {what}: Stale names the wrong expected generation"
            );
            assert_eq!(
                found,
                Some(g),
                "[{case}] {what}: Stale names the wrong current generation"
            );
        }
        other => panic!(
            "[{case}] {what} with wrong generation {bad}: expected Error::Stale, got {other:?}"
        ),
    }
}

/// One I/O of a case.
#[derive(Clone, Copy, Debug)]
enum Io {
    Write(u64, u64),
    Discard(u64, u64),
    Zeroes(u64, u64),
    Flush,
}

/// Drains, issues `ios`, and checks that exactly the regions they touch (computed from the
/// writer's real I/O ranges) are active, then frozen after a freeze, and gone after an ack.
fn exact(case: &str, map: &dyn DirtyMap, w: &dyn Writer, ios: &[Io]) {
    let g = drain(case, map, w);
    let before = ok(case, "info", map.info());
    let mut want = RoaringBitmap::new();
    let mut data_ios = 0;
    for &io in ios {
        let (off, len) = match io {
            Io::Write(o, l) => {
                w.write(o, l);
                (o, l)
            }
            Io::Discard(o, l) => {
                w.discard(o, l);
                (o, l)
            }
            Io::Zeroes(o, l) => {
                w.write_zeroes(o, l);
                (o, l)
            }
            Io::Flush => {
                w.flush();
                (0, 0)
            }
        };
        if len > 0 {
            data_ios += 1;
            want |= set(regions_of(w, off, len));
        }
    }
    let what = format!("after {ios:?}");
    assert_set(
        case,
        &format!("active bitmap {what}"),
        &ok(case, "read_active", map.read_active(g)),
        &want,
    );
    let info = ok(case, "info", map.info());
    assert_eq!(
        info.active_regions,
        want.len(),
        "[{case}] info.active_regions {what}"
    );
    if data_ios > 0 {
        assert!(
            info.writes > before.writes,
            "[{case}] info.writes did not grow ({} -> {}) {what}",
            before.writes,
            info.writes
        );
    }
    let n = ok(case, "freeze", map.freeze(g));
    assert_eq!(n, want.len(), "[{case}] freeze's frozen_regions {what}");
    assert_set(
        case,
        &format!("frozen bitmap {what}"),
        &ok(case, "read_frozen", map.read_frozen(g)),
        &want,
    );
    assert_set(
        case,
        "active bitmap after the freeze",
        &ok(case, "read_active", map.read_active(g)),
        &RoaringBitmap::new(),
    );
    ok(case, "ack", map.ack(g));
    assert_set(
        case,
        "frozen bitmap after the ack",
        &ok(case, "read_frozen", map.read_frozen(g)),
        &RoaringBitmap::new(),
    );
}

fn rb(w: &dyn Writer) -> u64 {
    w.geometry().region_bytes()
}

// ---------------------------------------------------------------------------------------
// Cases: which regions I/O marks

/// Unaligned writes inside one region and across a region boundary.
pub fn write_unaligned(map: &dyn DirtyMap, w: &dyn Writer) {
    let case = "write_unaligned";
    let rb = rb(w);
    exact(case, map, w, &[Io::Write(rb + 777, 1000)]);
    exact(case, map, w, &[Io::Write(3 * rb - 300, 600)]);
}

/// One 512-byte sector, at the start and at the very end of a region.
pub fn write_512_bytes(map: &dyn DirtyMap, w: &dyn Writer) {
    let case = "write_512_bytes";
    let rb = rb(w);
    exact(case, map, w, &[Io::Write(4 * rb + 512, 512)]);
    exact(case, map, w, &[Io::Write(5 * rb - 512, 512)]);
    exact(case, map, w, &[Io::Write(0, 512)]);
}

/// Writes spanning two and three regions.
pub fn write_spanning_regions(map: &dyn DirtyMap, w: &dyn Writer) {
    let case = "write_spanning_regions";
    let rb = rb(w);
    exact(case, map, w, &[Io::Write(6 * rb - 4096, 8192)]);
    exact(case, map, w, &[Io::Write(8 * rb - 4096, rb + 8192)]);
}

/// A write of exactly one whole, aligned region marks that region only (and two, two).
pub fn write_full_region_aligned(map: &dyn DirtyMap, w: &dyn Writer) {
    let case = "write_full_region_aligned";
    let rb = rb(w);
    exact(case, map, w, &[Io::Write(10 * rb, rb)]);
    exact(case, map, w, &[Io::Write(11 * rb, 2 * rb)]);
}

/// The partial last region: all of it, its last sector, and a write from the region before.
pub fn write_partial_last_region(map: &dyn DirtyMap, w: &dyn Writer) {
    let case = "write_partial_last_region";
    let geo = w.geometry();
    let last = geo.nr_regions - 1;
    let r = geo.region_byte_range(last);
    exact(case, map, w, &[Io::Write(r.start, r.end - r.start)]);
    exact(case, map, w, &[Io::Write(r.end - 512, 512)]);
    exact(
        case,
        map,
        w,
        &[Io::Write(r.start - 4096, r.end - r.start + 4096)],
    );
}

/// Discards mark what they cover.
pub fn discard_marks(map: &dyn DirtyMap, w: &dyn Writer) {
    let case = "discard_marks";
    let rb = rb(w);
    exact(case, map, w, &[Io::Discard(12 * rb, 2 * rb)]);
    exact(case, map, w, &[Io::Discard(14 * rb + 4096, 4096)]);
}

/// Write-zeroes marks what it covers.
pub fn write_zeroes_marks(map: &dyn DirtyMap, w: &dyn Writer) {
    let case = "write_zeroes_marks";
    let rb = rb(w);
    exact(case, map, w, &[Io::Zeroes(14 * rb + 4096, 4096)]);
    exact(case, map, w, &[Io::Zeroes(15 * rb, rb)]);
}

/// A flush alone marks nothing; a flush after a write adds nothing to it.
pub fn flush_marks_nothing(map: &dyn DirtyMap, w: &dyn Writer) {
    let case = "flush_marks_nothing";
    exact(case, map, w, &[Io::Flush]);
    exact(case, map, w, &[Io::Flush, Io::Flush]);
    exact(case, map, w, &[Io::Write(16 * rb(w), 4096), Io::Flush]);
}

// ---------------------------------------------------------------------------------------
// Cases: freeze / ack / merge / read / load semantics

/// Writes one whole region per element of `regions`.
fn write_regions(w: &dyn Writer, regions: &[u64]) {
    for &r in regions {
        let range = w.geometry().region_byte_range(r);
        w.write(range.start, 4096.min(range.end - range.start));
    }
}

/// A second freeze without ack OR-merges into the frozen bitmap.
pub fn freeze_or_merges_into_unacked(map: &dyn DirtyMap, w: &dyn Writer) {
    let case = "freeze_or_merges_into_unacked";
    let g = drain(case, map, w);
    let freezes = ok(case, "info", map.info()).freezes;
    write_regions(w, &[1, 2]);
    assert_eq!(
        ok(case, "freeze 1", map.freeze(g)),
        2,
        "[{case}] frozen_regions after freeze 1"
    );
    write_regions(w, &[2, 5]);
    assert_eq!(
        ok(case, "freeze 2", map.freeze(g)),
        3,
        "[{case}] frozen_regions after freeze 2 (must be the union {{1,2,5}})"
    );
    assert_set(
        case,
        "frozen bitmap after two freezes",
        &ok(case, "read_frozen", map.read_frozen(g)),
        &set([1, 2, 5]),
    );
    assert_set(
        case,
        "active bitmap after two freezes",
        &ok(case, "read_active", map.read_active(g)),
        &RoaringBitmap::new(),
    );
    let info = ok(case, "info", map.info());
    assert_eq!(
        (info.active_regions, info.frozen_regions),
        (0, 3),
        "[{case}] info (active_regions, frozen_regions)"
    );
    assert_eq!(
        info.freezes,
        freezes + 2,
        "[{case}] info.freezes after two freezes"
    );
    // A freeze with nothing active changes nothing.
    assert_eq!(
        ok(case, "freeze 3", map.freeze(g)),
        3,
        "[{case}] empty freeze"
    );
    ok(case, "ack", map.ack(g));
}

/// Ack drops the frozen bitmap and leaves the active one alone.
pub fn ack_clears_frozen(map: &dyn DirtyMap, w: &dyn Writer) {
    let case = "ack_clears_frozen";
    let g = drain(case, map, w);
    write_regions(w, &[2, 3]);
    ok(case, "freeze", map.freeze(g));
    write_regions(w, &[7]);
    ok(case, "ack", map.ack(g));
    assert_set(
        case,
        "frozen bitmap after ack",
        &ok(case, "read_frozen", map.read_frozen(g)),
        &RoaringBitmap::new(),
    );
    assert_eq!(
        ok(case, "info", map.info()).frozen_regions,
        0,
        "[{case}] info.frozen_regions after ack"
    );
    assert_set(
        case,
        "active bitmap after ack (ack must not touch it)",
        &ok(case, "read_active", map.read_active(g)),
        &set([7]),
    );
    ok(case, "second ack", map.ack(g));
    assert_eq!(
        ok(case, "freeze", map.freeze(g)),
        1,
        "[{case}] freeze after ack"
    );
    assert_set(
        case,
        "frozen bitmap after ack and a new freeze",
        &ok(case, "read_frozen", map.read_frozen(g)),
        &set([7]),
    );
    ok(case, "ack", map.ack(g));
}

/// Merge-back ORs the frozen bitmap into the active one, exactly, and empties it.
pub fn merge_back_restores_active(map: &dyn DirtyMap, w: &dyn Writer) {
    let case = "merge_back_restores_active";
    let g = drain(case, map, w);
    let last = w.geometry().nr_regions - 1;
    write_regions(w, &[1, 2, last]);
    ok(case, "freeze", map.freeze(g));
    write_regions(w, &[2, 5]);
    ok(case, "merge_back", map.merge_back(g));
    assert_set(
        case,
        "frozen bitmap after merge_back",
        &ok(case, "read_frozen", map.read_frozen(g)),
        &RoaringBitmap::new(),
    );
    let want = set([1, 2, 5, last]);
    assert_set(
        case,
        "active bitmap after merge_back",
        &ok(case, "read_active", map.read_active(g)),
        &want,
    );
    let info = ok(case, "info", map.info());
    assert_eq!(
        (info.active_regions, info.frozen_regions),
        (4, 0),
        "[{case}] info (active_regions, frozen_regions) after merge_back"
    );
    // Merging an empty frozen bitmap changes nothing.
    ok(case, "second merge_back", map.merge_back(g));
    assert_set(
        case,
        "active bitmap after an empty merge_back",
        &ok(case, "read_active", map.read_active(g)),
        &want,
    );
    assert_eq!(
        ok(case, "freeze", map.freeze(g)),
        4,
        "[{case}] freeze after merge_back"
    );
    ok(case, "ack", map.ack(g));
}

/// Reading the active bitmap does not clear it.
pub fn read_active_does_not_clear(map: &dyn DirtyMap, w: &dyn Writer) {
    let case = "read_active_does_not_clear";
    let g = drain(case, map, w);
    write_regions(w, &[3, 9]);
    for i in 1..=3 {
        assert_set(
            case,
            &format!("active bitmap, read {i}"),
            &ok(case, "read_active", map.read_active(g)),
            &set([3, 9]),
        );
    }
    assert_eq!(
        ok(case, "info", map.info()).active_regions,
        2,
        "[{case}] info.active_regions"
    );
    assert_set(
        case,
        "frozen bitmap (no freeze yet)",
        &ok(case, "read_frozen", map.read_frozen(g)),
        &RoaringBitmap::new(),
    );
    assert_eq!(
        ok(case, "freeze", map.freeze(g)),
        2,
        "[{case}] freeze after reads"
    );
    assert_set(
        case,
        "frozen bitmap",
        &ok(case, "read_frozen", map.read_frozen(g)),
        &set([3, 9]),
    );
    ok(case, "ack", map.ack(g));
}

/// Load ORs into the active bitmap; out-of-range regions are refused and change nothing.
pub fn load_ors_into_active(map: &dyn DirtyMap, w: &dyn Writer) {
    let case = "load_ors_into_active";
    let g = drain(case, map, w);
    let nr = w.geometry().nr_regions;
    let last = nr - 1;
    // A region in the second bitmap word, when there is one.
    let far = if nr > 66 { 64 } else { nr - 2 };
    write_regions(w, &[1]);
    ok(case, "load", map.load(g, &set([4, 9, far, last])));
    let want = set([1, 4, 9, far, last]);
    assert_set(
        case,
        "active bitmap after load",
        &ok(case, "read_active", map.read_active(g)),
        &want,
    );
    ok(case, "load of present regions", map.load(g, &set([1, 4])));
    ok(case, "load of nothing", map.load(g, &RoaringBitmap::new()));
    assert_set(
        case,
        "active bitmap after loading regions already set",
        &ok(case, "read_active", map.read_active(g)),
        &want,
    );
    let mut bad = vec![set([2, nr])];
    if nr < u64::from(u32::MAX) {
        bad.push(set([3, u64::from(u32::MAX)]));
    }
    for regions in bad {
        match map.load(g, &regions) {
            Err(Error::OutOfRange { region, nr_regions }) => {
                assert!(
                    region >= nr,
                    "[{case}] OutOfRange names region {region} < {nr}"
                );
                assert_eq!(nr_regions, nr, "[{case}] OutOfRange nr_regions");
            }
            other => panic!(
                "[{case}] load of {} (past {nr} regions): expected OutOfRange, got {other:?}",
                show(&regions)
            ),
        }
    }
    assert_set(
        case,
        "active bitmap after refused loads (must be unchanged)",
        &ok(case, "read_active", map.read_active(g)),
        &want,
    );
    assert_eq!(
        ok(case, "freeze", map.freeze(g)),
        5,
        "[{case}] freeze after load"
    );
    ok(case, "ack", map.ack(g));
}

/// Every call but info, given the wrong generation, fails with Stale and changes nothing.
pub fn wrong_generation_is_stale(map: &dyn DirtyMap, w: &dyn Writer) {
    let case = "wrong_generation_is_stale";
    let g = drain(case, map, w);
    write_regions(w, &[1]);
    ok(case, "freeze", map.freeze(g));
    write_regions(w, &[2]);
    let before = ok(case, "info", map.info());
    let bad = Generation(if g.0 == u64::MAX { 1 } else { !g.0 });
    assert_stale(case, "freeze", map.freeze(bad), bad, g);
    assert_stale(case, "read_frozen", map.read_frozen(bad), bad, g);
    assert_stale(case, "read_active", map.read_active(bad), bad, g);
    assert_stale(case, "ack", map.ack(bad), bad, g);
    assert_stale(case, "merge_back", map.merge_back(bad), bad, g);
    assert_stale(case, "load", map.load(bad, &set([3])), bad, g);
    let after = ok(case, "info", map.info());
    assert_eq!(
        after, before,
        "[{case}] info changed by calls with a wrong generation"
    );
    assert_set(
        case,
        "frozen bitmap after stale calls",
        &ok(case, "read_frozen", map.read_frozen(g)),
        &set([1]),
    );
    assert_set(
        case,
        "active bitmap after stale calls",
        &ok(case, "read_active", map.read_active(g)),
        &set([2]),
    );
    ok(case, "ack", map.ack(g));
}

// ---------------------------------------------------------------------------------------
// Case: concurrency

/// How long [`concurrent_writers`] runs: `BDR_CONFORMANCE_SECS` (default 2).
fn concurrent_duration() -> Duration {
    let secs = std::env::var("BDR_CONFORMANCE_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

struct WriteRec {
    /// Sequence number taken just before the write was issued.
    before: u64,
    /// Sequence number taken just after it returned.
    after: u64,
    regions: Range<u64>,
}

struct FreezeRec {
    /// Sequence number taken just before the freeze call.
    start: u64,
    /// Sequence number taken just after it returned.
    end: u64,
    frozen: RoaringBitmap,
}

/// Four threads write 512 bytes at a time into random even-numbered regions while a fifth
/// freezes, reads and acks in a loop.
///
/// Checks (a) no bit is lost and none appears from nowhere: the union of all frozen sets and
/// the final active set is exactly the set of regions written; (b) timing: a region written
/// by a write that returned before freeze k began is in a frozen set of a freeze that had
/// not ended when the write began and is no later than k, and a region appears in frozen set
/// k only if some write to it began before freeze k ended.
pub fn concurrent_writers(map: &dyn DirtyMap, w: &dyn Writer) {
    concurrent_writers_for(map, w, concurrent_duration())
}

/// [`concurrent_writers`], running for `duration`.
pub fn concurrent_writers_for(map: &dyn DirtyMap, w: &dyn Writer, duration: Duration) {
    let case = "concurrent_writers";
    let g = drain(case, map, w);
    let geo = w.geometry();
    let seq = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (writes, freezes) = std::thread::scope(|s| {
        let writers: Vec<_> = (0..4u64)
            .map(|t| {
                let (seq, stop) = (&seq, &stop);
                s.spawn(move || {
                    let mut rng =
                        0x9E37_79B9_7F4A_7C15u64 ^ (t + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
                    let mut recs = Vec::new();
                    while !stop.load(SeqCst) {
                        // Even regions only, so phantom bits (odd regions) stand out.
                        let r = 2 * (xorshift(&mut rng) % geo.nr_regions.div_ceil(2));
                        let range = geo.region_byte_range(r);
                        let sectors = (range.end - range.start) / 512;
                        let off = range.start + xorshift(&mut rng) % sectors * 512;
                        let before = seq.fetch_add(1, SeqCst);
                        w.write(off, 512);
                        let after = seq.fetch_add(1, SeqCst);
                        recs.push(WriteRec {
                            before,
                            after,
                            regions: regions_of(w, off, 512),
                        });
                    }
                    recs
                })
            })
            .collect();
        let freezer = s.spawn(|| {
            let mut recs = Vec::new();
            while !stop.load(SeqCst) {
                let start = seq.fetch_add(1, SeqCst);
                let n = ok(case, "freeze", map.freeze(g));
                let end = seq.fetch_add(1, SeqCst);
                let frozen = ok(case, "read_frozen", map.read_frozen(g));
                assert_eq!(
                    frozen.len(),
                    n,
                    "[{case}] freeze said {n} frozen regions, read_frozen gave {}",
                    frozen.len()
                );
                ok(case, "ack", map.ack(g));
                recs.push(FreezeRec { start, end, frozen });
                std::thread::sleep(Duration::from_millis(1));
            }
            recs
        });
        std::thread::sleep(duration);
        stop.store(true, SeqCst);
        let writes: Vec<WriteRec> = writers
            .into_iter()
            .flat_map(|h| h.join().expect("a writer thread panicked"))
            .collect();
        let freezes = freezer.join().expect("the freezer thread panicked");
        (writes, freezes)
    });
    let active = ok(case, "final read_active", map.read_active(g));
    assert_set(
        case,
        "frozen bitmap at the end (every freeze was acked)",
        &ok(case, "final read_frozen", map.read_frozen(g)),
        &RoaringBitmap::new(),
    );
    assert!(
        writes.len() >= 100 && freezes.len() >= 10,
        "[{case}] too little happened to test anything: {} writes, {} freezes",
        writes.len(),
        freezes.len()
    );
    eprintln!(
        "[{case}] {} writes, {} freezes, {} regions left active",
        writes.len(),
        freezes.len(),
        active.len()
    );

    // (a) Exactly the written regions, no more, no less.
    let mut written = RoaringBitmap::new();
    for wr in &writes {
        written |= set(wr.regions.clone());
    }
    let mut seen = active.clone();
    for f in &freezes {
        seen |= &f.frozen;
    }
    let lost = &written - &seen;
    let phantom = &seen - &written;
    assert!(
        lost.is_empty(),
        "[{case}] {} written regions were never frozen nor left active (lost bits): {}",
        lost.len(),
        show(&lost)
    );
    assert!(
        phantom.is_empty(),
        "[{case}] {} regions were frozen or active but never written (phantom bits): {}",
        phantom.len(),
        show(&phantom)
    );

    // (b) Timing, freeze by freeze.
    let mut freezes_of: HashMap<u32, Vec<usize>> = HashMap::new();
    for (k, f) in freezes.iter().enumerate() {
        for r in &f.frozen {
            freezes_of.entry(r).or_default().push(k);
        }
    }
    for wr in &writes {
        // Freezes that ended before the write began cannot hold its bit.
        let lo = freezes.partition_point(|f| f.end < wr.before);
        // The first freeze that began after the write returned must (with earlier ones).
        let k = freezes.partition_point(|f| f.start < wr.after);
        for r in wr.regions.clone() {
            let r = r as u32;
            let ks = freezes_of.get(&r).map_or(&[][..], |v| &v[..]);
            let caught = ks.iter().any(|&j| j >= lo && j <= k);
            let left_active = k == freezes.len() && active.contains(r);
            assert!(
                caught || left_active,
                "[{case}] region {r}, written between sequence numbers {} and {}, is in none \
                 of the frozen sets of freezes {lo}..={k} (it is in freezes {ks:?}; freeze \
                 {k} began at {}): a freeze missed a completed write (a lost or late bit)",
                wr.before,
                wr.after,
                freezes
                    .get(k)
                    .map_or("never".to_string(), |f| f.start.to_string())
            );
        }
    }
    let mut first_write: HashMap<u32, u64> = HashMap::new();
    for wr in &writes {
        for r in wr.regions.clone() {
            let e = first_write.entry(r as u32).or_insert(u64::MAX);
            *e = (*e).min(wr.before);
        }
    }
    for (k, f) in freezes.iter().enumerate() {
        for r in &f.frozen {
            let first = first_write.get(&r).copied().unwrap_or(u64::MAX);
            assert!(
                first < f.end,
                "[{case}] region {r} is in the frozen set of freeze {k} (ended at sequence \
                 number {}), but no write to it began before that (first at {first})",
                f.end
            );
        }
    }
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}
