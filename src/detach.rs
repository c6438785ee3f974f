//! `bdr detach NAME`.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::blockdev;
use crate::dm::{self, BdrTable, Dm, Table};
use crate::mountinfo;
use crate::target::DevNum;

/// Hook run just before a bdr device is removed, while its bitmap still exists in the
/// kernel. It will save the dirty bitmap so a later attach can restore it; for now there
/// is nothing to save it to.
pub fn save_bitmap_before_detach(_dm: &Dm, _name: &str, _table: &BdrTable) -> Result<()> {
    Ok(())
}

pub fn run(name: &str) -> Result<()> {
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

    save_bitmap_before_detach(&dm, name, &table)
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
