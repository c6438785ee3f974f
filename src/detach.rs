//! `bdr detach NAME`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bdr_bitmap::KernelDirtyMap;

use crate::blockdev;
use crate::dm::{self, BdrTable, Dm, Table};
use crate::mountinfo;
use crate::private_file;
use crate::saved_bitmap;
use crate::state::{state_dir_of, LOCK_FILE};
use crate::target::DevNum;

/// Hook run just before a bdr device is removed, while its bitmap still exists in the
/// kernel: saves the dirty bitmap (active and frozen regions) in the state dir, so
/// `bdr attach` can restore it and a clean detach/attach needs no full rescan.
pub fn save_bitmap_before_detach(
    _dm: &Dm,
    name: &str,
    table: &BdrTable,
    state_dir: &Path,
) -> Result<()> {
    let id = &table.params.bitmap_id;
    let map = KernelDirtyMap::open(id).with_context(|| format!("bitmap {id} of {name}"))?;
    let lower = blockdev::dev_path(table.params.lower)
        .map(|p| format!("{} {}", table.params.lower, p.display()))
        .unwrap_or_else(|| table.params.lower.to_string());
    let (h, regions) = saved_bitmap::capture(&map, &lower)?;
    saved_bitmap::save(state_dir, &h, &regions)?;
    println!(
        "saved the bitmap of {name} ({} dirty regions, generation {:016x}) to {}",
        h.regions,
        h.generation,
        state_dir.join(saved_bitmap::SAVED_FILE).display()
    );
    Ok(())
}

pub fn run(name: &str, state_dir: Option<&Path>) -> Result<()> {
    let state_dir = state_dir_of(name, state_dir);
    if private_file::is_locked(&state_dir.join(LOCK_FILE))? {
        bail!(
            "{name} is being replicated (a `bdr primary run`, `bdr sync` or `bdr verify` holds \
             {}); stop it before detaching",
            state_dir.display()
        );
    }
    let dm = Dm::open()?;
    let info = dm.info(name)?.with_context(|| {
        format!("no device-mapper device named {name} (`bdr status` lists bdr devices)")
    })?;
    let table = match dm.table(name)? {
        Table::Bdr(t) => t,
        Table::Other(lines) => {
            let what = if lines.is_empty() {
                "it has no active table".to_string()
            } else {
                format!("its table is '{}'", lines.join("; "))
            };
            bail!("{name} is not a bdr device ({what}); refusing to remove it");
        }
    };
    let d = info.device();
    let dev = DevNum::new(d.major, d.minor);

    let mounts = mountinfo::read()?;
    if let Some(wh) = blockdev::mounted_where(dev, &mounts) {
        bail!("{name} is mounted: {wh}; unmount it before detaching");
    }
    if info.open_count() > 0 {
        let holders: Vec<String> = blockdev::holders(dev)
            .iter()
            .map(|h| blockdev::describe_kname(h))
            .collect();
        let by = if holders.is_empty() {
            String::new()
        } else {
            format!(", held by {}", holders.join(", "))
        };
        bail!(
            "{name} is open ({} opener(s){by}); close it before detaching",
            info.open_count()
        );
    }

    save_bitmap_before_detach(&dm, name, &table, &state_dir)
        .with_context(|| format!("not detaching {name}: saving its bitmap failed"))?;
    dm.remove(name)?;
    dm::cleanup_node(name, dev, Duration::from_secs(1));
    let lower = blockdev::dev_path(table.params.lower)
        .map(|p| format!("{} ({})", p.display(), table.params.lower))
        .unwrap_or_else(|| table.params.lower.to_string());
    println!(
        "detached {name} (lower {lower}, bitmap id {})",
        table.params.bitmap_id
    );
    Ok(())
}
