//! The dirty bitmap saved by `bdr detach` and loaded back by `bdr attach`, so a clean
//! detach/attach (a clean reboot) needs no full rescan.
//!
//! File `bitmap.saved` in the volume's state dir, 0600, written atomically:
//!
//! ```text
//! bdr-saved-bitmap 1\n
//! {"bitmap_id":..., "generation":..., "region_sectors":..., "dev_sectors":..., ...}\n
//! <the regions: a RoaringBitmap in the portable serialization, `bitmap_bytes` long>
//! ```
//!
//! The regions are the union of the active and frozen bitmaps at detach (the device was
//! closed, so nothing was in flight). At attach they are OR-ed into the new bitmap with
//! `DirtyMap::load`, and if the primary's state had synced the saved generation, the new
//! generation is recorded as its continuation: the next cut is incremental.

use std::path::Path;

use anyhow::{bail, Result};
use bdr_bitmap::{DirtyMap, RoaringBitmap};
use serde::{Deserialize, Serialize};

use crate::private_file;
use crate::state::{now_ms, PrimaryState};

pub const SAVED_FILE: &str = "bitmap.saved";
const MAGIC_LINE: &str = "bdr-saved-bitmap 1";

/// What the saved bitmap belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedHeader {
    pub bitmap_id: String,
    pub generation: u64,
    pub region_sectors: u32,
    pub dev_sectors: u64,
    pub nr_regions: u64,
    /// Regions set.
    pub regions: u64,
    /// The lower device at detach (`major:minor` and path), for the record.
    pub lower: String,
    pub saved_unix_ms: u64,
    /// Length of the serialized bitmap that follows.
    pub bitmap_bytes: u64,
}

/// Serializes a saved bitmap.
pub fn encode(h: &SavedHeader, regions: &RoaringBitmap) -> Result<Vec<u8>> {
    let mut bits = Vec::with_capacity(regions.serialized_size());
    regions.serialize_into(&mut bits)?;
    let mut h = h.clone();
    h.bitmap_bytes = bits.len() as u64;
    h.regions = regions.len();
    let mut out = format!("{MAGIC_LINE}\n").into_bytes();
    out.extend(serde_json::to_vec(&h)?);
    out.push(b'\n');
    out.extend(bits);
    Ok(out)
}

/// Parses a saved bitmap, checking it against its own header.
pub fn decode(b: &[u8]) -> Result<(SavedHeader, RoaringBitmap), String> {
    let rest = b
        .strip_prefix(format!("{MAGIC_LINE}\n").as_bytes())
        .ok_or("not a bdr saved bitmap (bad first line)")?;
    let nl = rest
        .iter()
        .position(|&c| c == b'\n')
        .ok_or("truncated header")?;
    let h: SavedHeader =
        serde_json::from_slice(&rest[..nl]).map_err(|e| format!("bad header: {e}"))?;
    let bits = &rest[nl + 1..];
    if bits.len() as u64 != h.bitmap_bytes {
        return Err(format!(
            "the bitmap is {} bytes, the header says {}",
            bits.len(),
            h.bitmap_bytes
        ));
    }
    let regions = RoaringBitmap::deserialize_from(bits).map_err(|e| format!("bad bitmap: {e}"))?;
    if regions.len() != h.regions {
        return Err("region count differs from the header".to_string());
    }
    if regions.max().is_some_and(|m| u64::from(m) >= h.nr_regions) {
        return Err("a region lies past the end of the device".to_string());
    }
    Ok((h, regions))
}

/// Saves `regions` of the bitmap `h` describes in `dir` (created 0700 if missing).
pub fn save(dir: &Path, h: &SavedHeader, regions: &RoaringBitmap) -> Result<()> {
    private_file::ensure_dir(dir)?;
    private_file::write_atomic(&dir.join(SAVED_FILE), &encode(h, regions)?, true)
}

/// The saved bitmap of `dir`, if any.
pub fn load(dir: &Path) -> Result<Option<(SavedHeader, RoaringBitmap)>> {
    let path = dir.join(SAVED_FILE);
    let Some(b) = private_file::read(&path)? else {
        return Ok(None);
    };
    decode(&b).map(Some).map_err(|reason| {
        anyhow::anyhow!(
            "{} is corrupt: {reason}; remove it to attach without it (the next sync then \
             rescans the whole device)",
            path.display()
        )
    })
}

/// Refuses a saved bitmap of another device shape.
pub fn check_fits(
    dir: &Path,
    h: &SavedHeader,
    region_sectors: u32,
    dev_sectors: u64,
) -> Result<()> {
    if h.region_sectors != region_sectors || h.dev_sectors != dev_sectors {
        bail!(
            "the bitmap saved in {} is for a device of {} bytes in regions of {} bytes, this \
             one has {} bytes in regions of {} bytes: attach with the same device and \
             --region-size, or remove {} to attach without it (the next sync then rescans \
             the whole device)",
            dir.display(),
            h.dev_sectors * 512,
            u64::from(h.region_sectors) * 512,
            dev_sectors * 512,
            u64::from(region_sectors) * 512,
            dir.join(SAVED_FILE).display()
        );
    }
    Ok(())
}

/// The bitmap `map` as it stands (active ∪ frozen), as a saved bitmap.
pub fn capture(map: &dyn DirtyMap, lower: &str) -> Result<(SavedHeader, RoaringBitmap)> {
    let info = map.info()?;
    let g = info.generation;
    let mut regions = map.read_active(g)?;
    regions |= map.read_frozen(g)?;
    let h = SavedHeader {
        bitmap_id: info.id.clone(),
        generation: g.0,
        region_sectors: info.geometry.region_sectors,
        dev_sectors: info.geometry.dev_sectors,
        nr_regions: info.geometry.nr_regions,
        regions: regions.len(),
        lower: lower.to_string(),
        saved_unix_ms: now_ms(),
        bitmap_bytes: 0,
    };
    Ok((h, regions))
}

/// Records in `state` that bitmap generation `new` continues the saved one; false (state
/// unchanged) if the state had not synced the saved generation, so bits may be missing.
pub fn continue_state(state: &mut PrimaryState, saved: &SavedHeader, new: u64, id: &str) -> bool {
    if state.generation != Some(saved.generation) {
        return false;
    }
    state.generation = Some(new);
    state.continued_from = Some(saved.generation);
    state.bitmap_id = Some(id.to_string());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use bdr_bitmap::{FileDirtyMap, Geometry};

    fn header() -> SavedHeader {
        SavedHeader {
            bitmap_id: "x".into(),
            generation: 7,
            region_sectors: 128,
            dev_sectors: 128 * 100,
            nr_regions: 100,
            regions: 0,
            lower: "7:0 /dev/loop0".into(),
            saved_unix_ms: 1,
            bitmap_bytes: 0,
        }
    }

    #[test]
    fn roundtrip_and_corruption() {
        let d = tempfile::tempdir().unwrap();
        let regions: RoaringBitmap = [1u32, 5, 99].into_iter().collect();
        save(d.path(), &header(), &regions).unwrap();
        let (h, r) = load(d.path()).unwrap().unwrap();
        assert_eq!(r, regions);
        assert_eq!((h.generation, h.regions), (7, 3));
        let mut b = std::fs::read(d.path().join(SAVED_FILE)).unwrap();
        b.pop();
        private_file::write_atomic(&d.path().join(SAVED_FILE), &b, false).unwrap();
        let e = load(d.path()).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("remove it"), "{e}");
        let big: RoaringBitmap = [100u32].into_iter().collect();
        let e = decode(&encode(&header(), &big).unwrap()).unwrap_err();
        assert!(e.contains("past the end"), "{e}");
    }

    #[test]
    fn other_shapes_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let h = header();
        check_fits(d.path(), &h, 128, 128 * 100).unwrap();
        let e = check_fits(d.path(), &h, 256, 128 * 100)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("regions of 65536 bytes") && e.contains("131072"),
            "{e}"
        );
        assert!(check_fits(d.path(), &h, 128, 128 * 101).is_err());
    }

    #[test]
    fn capture_load_and_continue() {
        let d = tempfile::tempdir().unwrap();
        let g = Geometry::new(128, 128 * 100).unwrap();
        let old = FileDirtyMap::create(d.path().join("m"), g).unwrap();
        old.mark(0, 10).unwrap();
        let og = old.info().unwrap().generation;
        old.freeze(og).unwrap();
        old.mark(65536 * 50, 10).unwrap();
        let (h, r) = capture(&old, "lower").unwrap();
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![0, 50]);
        assert_eq!(h.generation, og.0);

        // "Attach": a new bitmap, the saved regions loaded into it.
        let new = FileDirtyMap::create(d.path().join("m2"), g).unwrap();
        let ng = new.info().unwrap().generation;
        new.load(ng, &r).unwrap();
        assert_eq!(new.read_active(ng).unwrap(), r);

        let mut st = PrimaryState {
            volume: "00".repeat(16),
            bitmap_id: None,
            generation: Some(og.0),
            continued_from: None,
            last_cut: Some(3),
            last_cut_taken_unix_ms: None,
            last_cut_committed_unix_ms: None,
            last_error: None,
        };
        assert!(continue_state(&mut st, &h, ng.0, "m2"));
        assert_eq!(st.generation, Some(ng.0));
        assert_eq!(st.continued_from, Some(og.0));
        // A state that had not synced the saved generation is left alone.
        let mut other = st.clone();
        other.generation = Some(12345);
        assert!(!continue_state(&mut other, &h, 999, "m3"));
        assert_eq!(other.generation, Some(12345));
    }
}
