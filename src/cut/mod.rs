//! Cuts: a consistent, point-in-time image of the primary plus the regions written since the
//! previous committed cut.
//!
//! A [`CutSource`] hands out one [`Cut`] at a time. Invariant: between [`CutSource::take`]
//! and [`CutSource::commit`] / [`CutSource::abort`], the regions of the cut are held in the
//! bitmap's frozen set, and the image does not change. `commit` drops them (the replica has
//! them); `abort` merges them back into the active set, so a failed cut loses nothing.
//! A source whose process dies mid-cut recovers at the next [`CutSource::take`]: frozen bits
//! left behind are merged back, leftover snapshot devices removed.
//!
//! # Pre-copy
//!
//! Before a cut, [`CutSource::precopy_pass`] may be called any number of times: each pass
//! moves the regions written since the previous pass (the first: since the last committed
//! cut) into the frozen set and returns exactly them; the caller copies them from the live
//! device ([`CutSource::live_image`]). The next [`CutSource::take`] then also reports the
//! cut's *residue*: the regions written since the last pass, the only ones that must be read
//! from the cut's image. This is exact because the target marks a region when a write
//! *completes*: a write that completes after a pass froze its region is in the next pass or
//! in the residue, so a region copied while a write was in flight (torn) is shipped again.
//! Passes after the first separate the regions written since the previous pass by holding
//! writers off for the two bitmap calls (a suspend without lockfs for a real device);
//! the first is a bare freeze. Until the cut commits, every pass's regions stay frozen:
//! [`CutSource::abort`] or [`CutSource::abort_precopy`] merges them back, and a process
//! dying mid-pre-copy leaves them frozen, to be merged back by the next one.

pub mod dm;
pub mod file;
pub mod ioctl;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bdr_bitmap::{DirtyMap, Generation, Geometry, MapInfo, RoaringBitmap};
use bdr_sync::ship::CutImage;

/// One frozen cut.
pub struct Cut {
    /// The device as it was at the cut's instant; stays unchanged until commit/abort.
    pub image: Arc<dyn CutImage>,
    /// Regions written since the previous committed cut (the frozen bitmap).
    pub regions: RoaringBitmap,
    pub geometry: Geometry,
    /// Generation of the bitmap the regions came from.
    pub generation: Generation,
    /// How long writers were held off to take the cut (suspend to resume).
    pub suspend: Duration,
    /// After pre-copy passes: the regions written since the last pass (a subset of
    /// `regions`), the only ones to read from `image`. `None` without pre-copy.
    pub residue: Option<RoaringBitmap>,
}

/// The image of a cut whose image was released ([`CutSource::release_image`]).
pub struct Released;

impl CutImage for Released {
    fn len(&self) -> u64 {
        0
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::other("the cut's image was released"))
    }
}

/// One pre-copy pass.
pub struct PrecopyPass {
    /// Regions written since the previous pass (the first pass: since the last committed
    /// cut), now frozen, to be copied from the live device.
    pub regions: RoaringBitmap,
    pub geometry: Geometry,
    pub generation: Generation,
    /// How long writers were held off to separate the pass (zero for the first pass).
    pub suspend: Duration,
}

/// Fill of the copy-on-write store that keeps a cut's image, if it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CowUsage {
    pub used_bytes: u64,
    pub total_bytes: u64,
    /// The store overflowed: the image is invalid and the cut must be aborted.
    pub invalid: bool,
}

/// Something that can freeze cuts of a primary device.
pub trait CutSource: Send {
    /// Bitmap geometry, generation and counters now.
    fn info(&self) -> Result<MapInfo>;
    /// Freeze a new cut. Only one cut exists at a time.
    fn take(&mut self) -> Result<Cut>;
    /// The replica committed the cut: forget its regions and release its image.
    fn commit(&mut self, cut: Cut) -> Result<()>;
    /// The cut failed: merge its regions back into the active bitmap, release its image.
    fn abort(&mut self, cut: Cut) -> Result<()>;
    /// Fill of the image's copy-on-write store while a cut is live.
    fn cow_usage(&self) -> Option<CowUsage>;
    /// Every region of the cut was read from its image: release the image (a snapshot and
    /// its copy-on-write) now, before the replica commits. The regions stay frozen until
    /// [`commit`](CutSource::commit) or [`abort`](CutSource::abort). Fails, keeping the
    /// image, if it became invalid while it was read (COW overflow): abort the cut then.
    fn release_image(&mut self, cut: &mut Cut) -> Result<()>;
    /// One pre-copy pass (see the module doc). Not while a cut is live.
    fn precopy_pass(&mut self) -> Result<PrecopyPass>;
    /// Regions written since the last pre-copy pass, without freezing them: decides whether
    /// another pass is worth it.
    fn precopy_pending(&self) -> Result<u64>;
    /// The live device, for pre-copy reads (no cache between it and the writers).
    fn live_image(&self) -> Result<Arc<dyn CutImage>>;
    /// Pre-copy ended without a cut: merge every pass's regions back. A no-op when no pass
    /// ran.
    fn abort_precopy(&mut self) -> Result<()>;
}

/// `bdr __cut`: one cut of a real device, for the VM lab: copy its image, report, finish.
/// Any failure while the cut is live aborts it (the bits are merged back).
pub fn cut_test(args: &crate::cli::CutTestArgs) -> Result<()> {
    let mut src = dm::DmCutSource::open(
        &args.name,
        dm::CowStore::Dir {
            dir: args.cow.clone(),
            bytes: args.cow_size,
        },
    )?;
    let cut = src.take()?;
    let report = (|| -> Result<serde_json::Value> {
        if let Some(path) = &args.copy_to {
            // Through the page cache, unlike the shipping path: this is a test aid.
            let snap = crate::dm::mapper_path(&format!("{}-bdr-snap", args.name));
            let mut input = std::fs::File::open(&snap)?;
            let mut out = std::fs::File::create(path)?;
            std::io::copy(&mut input, &mut out)?;
            out.sync_all()?;
        }
        std::thread::sleep(Duration::from_millis(args.hold_ms));
        let cow = src.cow_usage();
        if cow.is_some_and(|c| c.invalid) {
            anyhow::bail!("the COW store overflowed: the cut's image is invalid");
        }
        Ok(serde_json::json!({
            "regions": cut.regions.iter().collect::<Vec<u32>>(),
            "suspend_us": cut.suspend.as_micros() as u64,
            "generation": cut.generation.0,
            "cow": cow,
        }))
    })();
    match report {
        Ok(r) => {
            println!("{r}");
            if args.abort {
                src.abort(cut)
            } else {
                src.commit(cut)
            }
        }
        Err(e) => {
            src.abort(cut)?;
            Err(e.context("cut aborted, its regions merged back"))
        }
    }
}

/// The first pre-copy pass of any cut source: merge back what an unfinished cut left
/// frozen, then a bare freeze of the live device. The frozen set was empty, so it now holds
/// exactly the regions written since the last committed cut; a write completing later marks
/// the active set (and so a later pass or the residue).
pub fn first_precopy_pass(
    map: &dyn DirtyMap,
    info: &MapInfo,
    device: &str,
) -> Result<RoaringBitmap> {
    let g = info.generation;
    if info.frozen_regions > 0 {
        tracing::warn!(
            device,
            regions = info.frozen_regions,
            "frozen regions of an unfinished cut: merging them back"
        );
        map.merge_back(g)?;
    }
    map.freeze(g)?;
    Ok(map.read_frozen(g)?)
}
