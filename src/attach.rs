//! `bdr attach NAME LOWER`.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bdr_bitmap::{DirtyMap, KernelDirtyMap, RoaringBitmap};

use crate::blockdev::{self, LowerDevice};
use crate::cli::AttachArgs;
use crate::dm;
use crate::kmod;
use crate::saved_bitmap::{self, SavedHeader};
use crate::size::{format_bytes, RegionSize};
use crate::state::{state_dir_of, StateDir};
use crate::target::{dm_uuid, format_table_params, DevNum, TARGET_TYPE};

/// How long udev gets to create /dev/mapper/NAME before we make the node ourselves.
const UDEV_WAIT: Duration = Duration::from_secs(1);

/// A fresh bitmap id: 32 hex digits from the kernel's random pool.
pub fn random_id() -> Result<String> {
    let mut buf = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("cannot read random bytes from /dev/urandom for a bitmap id")?;
    Ok(hex(&buf))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The lower device as the table line names it: its resolved path, or `major:minor`
/// when the path could not be written into a whitespace-separated table line.
fn table_lower(lower: &LowerDevice) -> String {
    match lower.path.to_str() {
        Some(p) if !p.is_empty() && !p.contains(char::is_whitespace) => p.to_string(),
        _ => lower.dev.to_string(),
    }
}

/// Number of regions covering `sectors`.
pub fn nr_regions(sectors: u64, region: RegionSize) -> u64 {
    sectors.div_ceil(u64::from(region.sectors()))
}

/// Region size when neither `--region-size` nor the config gives one.
pub const DEFAULT_REGION_BYTES: u64 = 64 << 10;

pub fn run(args: &AttachArgs) -> Result<()> {
    let name = args.name.as_str();
    let region_size = match args.region_size {
        Some(r) => r,
        None => RegionSize::from_bytes(DEFAULT_REGION_BYTES).map_err(anyhow::Error::msg)?,
    };
    // Checks that need no device-mapper come first, so their messages win.
    let lower = crate::config::required(args.lower.as_ref(), "LOWER (the device to track)", name)?;
    let lower = blockdev::check_lower(lower)?;
    blockdev::check_region_fits(&lower, region_size.bytes())?;
    let state_dir = state_dir_of(name, args.state_dir.as_deref());
    let saved = saved_bitmap::load(&state_dir)?;
    if let Some((h, _)) = &saved {
        saved_bitmap::check_fits(&state_dir, h, region_size.sectors(), lower.sectors())?;
    }

    let dm = kmod::ensure_target(args.kmod.as_deref())?;
    if let Some(info) = dm.info(name)? {
        let d = info.device();
        bail!(
            "a device-mapper device named {name} already exists ({}, {}:{}); \
             pick another NAME or `bdr detach {name}` first",
            dm::mapper_path(name).display(),
            d.major,
            d.minor
        );
    }
    let id = match &args.id {
        Some(id) => id.clone(),
        None => random_id()?,
    };
    let uuid = dm_uuid(&id);
    if let Some(other) = dm.name_by_uuid(&uuid)? {
        bail!("bitmap id {id} is already used by device {other}; choose another --id");
    }

    let sectors = lower.sectors();
    let params = format_table_params(&table_lower(&lower), region_size.sectors(), &id);
    tracing::info!("creating {name}: 0 {sectors} {TARGET_TYPE} {params} (uuid {uuid})");
    let info = dm.create(name, &uuid, (0, sectors, TARGET_TYPE, params))?;
    let d = info.device();
    let dev = DevNum::new(d.major, d.minor);
    let (path, _made) = dm::ensure_node(name, dev, UDEV_WAIT)?;
    print_created(name, &path, dev, &lower, region_size, &id);
    if let Some((h, regions)) = saved {
        if let Err(e) = restore_saved(&state_dir, &id, &h, &regions) {
            eprintln!(
                "bdr: warning: could not restore the bitmap saved in {}: {e:#}; the next sync \
                 rescans the whole device",
                state_dir.display()
            );
        }
    }
    Ok(())
}

/// Loads the bitmap `bdr detach` saved into the new bitmap `id`, records the new
/// generation as its continuation in the primary's state, and removes the saved file.
fn restore_saved(dir: &Path, id: &str, h: &SavedHeader, regions: &RoaringBitmap) -> Result<()> {
    let map = KernelDirtyMap::open(id)?;
    let g = map.info()?.generation;
    map.load(g, regions)?;
    let sd = StateDir::open(dir)?;
    let continued = match sd.read()? {
        Some(mut st) => {
            let ok = saved_bitmap::continue_state(&mut st, h, g.0, id);
            if ok {
                sd.save(&st)?;
            }
            ok
        }
        None => false,
    };
    std::fs::remove_file(dir.join(saved_bitmap::SAVED_FILE))
        .with_context(|| format!("remove {}", dir.join(saved_bitmap::SAVED_FILE).display()))?;
    println!(
        "  restored:  {} dirty regions saved at detach (generation {:016x}){}",
        h.regions,
        h.generation,
        if continued {
            "; replication continues without a rescan"
        } else {
            "; the replica was not synced from that bitmap: the next sync rescans"
        }
    );
    Ok(())
}

fn print_created(
    name: &str,
    path: &std::path::Path,
    dev: DevNum,
    lower: &LowerDevice,
    region: RegionSize,
    id: &str,
) {
    println!("attached {name}: {} ({dev})", path.display());
    println!(
        "  lower:     {} ({}), {}",
        lower.given.display(),
        lower.dev,
        format_bytes(lower.size_bytes)
    );
    println!(
        "  regions:   {} x {region}",
        nr_regions(lower.sectors(), region)
    );
    println!("  bitmap id: {id}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::validate_bitmap_id;
    use std::path::PathBuf;

    #[test]
    fn random_ids_are_valid_and_distinct() {
        let a = random_id().unwrap();
        let b = random_id().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(validate_bitmap_id(&a).is_ok());
        assert_ne!(a, b);
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }

    #[test]
    fn region_count_rounds_up() {
        let r = RegionSize::default();
        assert_eq!(nr_regions(128, r), 1);
        assert_eq!(nr_regions(129, r), 2);
        assert_eq!(nr_regions(20480, r), 160);
    }

    #[test]
    fn table_names_lower_by_path_or_number() {
        let mut l = LowerDevice {
            given: PathBuf::from("/dev/disk/by-id/x"),
            path: PathBuf::from("/dev/vdb"),
            dev: DevNum::new(254, 16),
            size_bytes: 1 << 30,
        };
        assert_eq!(table_lower(&l), "/dev/vdb");
        l.path = PathBuf::from("/dev/odd name");
        assert_eq!(table_lower(&l), "254:16");
    }
}
