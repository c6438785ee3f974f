//! `bdr status`: what each bdr device has seen, for people and for scripts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::blockdev;
use crate::dm::{mapper_path, Dm, Table};
use crate::primary_status::{render_rows, ReplicationView};
use crate::size::{format_bytes, format_bytes_exact, SECTOR_SIZE};
use crate::target::{DevNum, InfoStatus, TableParams};

/// The lower device of a bdr device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LowerStatus {
    /// `major:minor`.
    pub dev: String,
    pub major: u32,
    pub minor: u32,
    /// `/dev/...` when sysfs knows the name, else null.
    pub path: Option<String>,
}

/// One bdr device. Field order and names are the JSON schema: keep them stable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceStatus {
    pub name: String,
    pub path: String,
    /// `major:minor` of the dm device.
    pub dev: String,
    pub lower: LowerStatus,
    pub size_bytes: u64,
    pub size_sectors: u64,
    pub region_size_bytes: u64,
    pub region_sectors: u32,
    pub nr_regions: u64,
    pub dirty_regions: u64,
    pub dirty_bytes: u64,
    pub frozen_regions: u64,
    pub frozen_bytes: u64,
    pub writes: u64,
    pub freezes: u64,
    pub generation: u64,
    /// The generation as the kernel prints it (16 hex digits).
    pub generation_hex: String,
    pub bitmap_id: String,
    pub open_count: i64,
    /// Replication state, present when the device's state dir has a status file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationView>,
}

fn covered_bytes(regions: u64, region_bytes: u64, size_bytes: u64) -> u64 {
    regions.saturating_mul(region_bytes).min(size_bytes)
}

impl DeviceStatus {
    /// Combine what the kernel reports: the table (geometry, id) and the INFO status line
    /// (counters). `len_sectors` is the target's length.
    pub fn new(
        name: &str,
        dev: DevNum,
        len_sectors: u64,
        table: &TableParams,
        info: &InfoStatus,
        lower_path: Option<PathBuf>,
        open_count: i64,
    ) -> Self {
        let size_bytes = len_sectors.saturating_mul(SECTOR_SIZE);
        let region_sectors = info.region_sectors;
        let region_size_bytes = u64::from(region_sectors) * SECTOR_SIZE;
        DeviceStatus {
            name: name.to_string(),
            path: mapper_path(name).display().to_string(),
            dev: dev.to_string(),
            lower: LowerStatus {
                dev: table.lower.to_string(),
                major: table.lower.major,
                minor: table.lower.minor,
                path: lower_path.map(|p| p.display().to_string()),
            },
            size_bytes,
            size_sectors: len_sectors,
            region_size_bytes,
            region_sectors,
            nr_regions: info.nr_regions,
            dirty_regions: info.active_regions,
            dirty_bytes: covered_bytes(info.active_regions, region_size_bytes, size_bytes),
            frozen_regions: info.frozen_regions,
            frozen_bytes: covered_bytes(info.frozen_regions, region_size_bytes, size_bytes),
            writes: info.writes,
            freezes: info.freezes,
            generation: info.generation,
            generation_hex: format!("{:016x}", info.generation),
            bitmap_id: table.bitmap_id.clone(),
            open_count,
            replication: None,
        }
    }
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0%".into();
    }
    let p = part as f64 * 100.0 / whole as f64;
    if part > 0 && p < 0.1 {
        "<0.1%".into()
    } else {
        format!("{:.1}%", p)
    }
}

/// The human block for one device.
pub fn render_one(s: &DeviceStatus) -> String {
    let lower = match &s.lower.path {
        Some(p) => format!("{p} ({})", s.lower.dev),
        None => s.lower.dev.clone(),
    };
    let rows: Vec<(&str, String)> = vec![
        ("device", format!("{} ({})", s.path, s.dev)),
        ("lower", lower),
        (
            "size",
            format!("{} ({} bytes)", format_bytes(s.size_bytes), s.size_bytes),
        ),
        (
            "regions",
            format!(
                "{} x {}",
                s.nr_regions,
                format_bytes_exact(s.region_size_bytes)
            ),
        ),
        (
            "dirty",
            format!(
                "{} regions, {} ({} of device)",
                s.dirty_regions,
                format_bytes(s.dirty_bytes),
                pct(s.dirty_bytes, s.size_bytes)
            ),
        ),
        (
            "frozen",
            format!(
                "{} regions, {}",
                s.frozen_regions,
                format_bytes(s.frozen_bytes)
            ),
        ),
        ("writes", s.writes.to_string()),
        ("freezes", s.freezes.to_string()),
        ("generation", s.generation_hex.clone()),
        ("bitmap id", s.bitmap_id.clone()),
        ("open count", s.open_count.to_string()),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = format!("{}\n", s.name);
    for (k, v) in rows {
        let _ = writeln!(out, "  {:<width$} {v}", format!("{k}:"));
    }
    if let Some(r) = &s.replication {
        out.push_str(&render_rows("  replication", &r.rows()).replace("\n  ", "\n    "));
    }
    out
}

/// Human output for several devices, separated by blank lines.
pub fn render_human(all: &[DeviceStatus]) -> String {
    all.iter().map(render_one).collect::<Vec<_>>().join("\n")
}

/// JSON: an object for one named device, an array for "all".
pub fn render_json(all: &[DeviceStatus], single: bool) -> Result<String> {
    let text = if single {
        match all {
            [one] => serde_json::to_string_pretty(one)?,
            _ => bail!("expected exactly one device"),
        }
    } else {
        serde_json::to_string_pretty(all)?
    };
    Ok(text)
}

/// Status of one named device: `None` if it exists but is not a bdr device.
fn collect_one(dm: &Dm, name: &str, dev: DevNum) -> Result<Option<DeviceStatus>> {
    let Table::Bdr(table) = dm.table(name)? else {
        return Ok(None);
    };
    let info = dm.bdr_info(name)?;
    if info.region_sectors != table.params.region_sectors {
        tracing::warn!(
            "{name}: table says {} sectors per region, status says {}",
            table.params.region_sectors,
            info.region_sectors
        );
    }
    let open_count = dm
        .info(name)?
        .map(|i| i64::from(i.open_count()))
        .unwrap_or(0);
    Ok(Some(DeviceStatus::new(
        name,
        dev,
        table.len_sectors,
        &table.params,
        &info,
        blockdev::dev_path(table.params.lower),
        open_count,
    )))
}

/// Replication status of a volume without a bdr device (detached, or a test stand-in):
/// `bdr status NAME` shows what its state dir says.
#[derive(Debug, Serialize)]
struct StateOnly<'a> {
    name: &'a str,
    device: Option<String>,
    replication: &'a ReplicationView,
}

fn state_only(name: &str, r: &ReplicationView, json: bool) -> Result<()> {
    if json {
        let s = StateOnly {
            name,
            device: None,
            replication: r,
        };
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!(
            "{}",
            render_rows(
                &format!("{name} (no bdr device; replication state only)"),
                &r.rows()
            )
        );
    }
    Ok(())
}

/// Run `bdr status [NAME] [--json] [--state-dir DIR]`.
pub fn run(name: Option<&str>, json: bool, state_dir: Option<&Path>) -> Result<()> {
    if let Some(name) = name {
        let dir = crate::state::state_dir_of(name, state_dir);
        let repl = ReplicationView::load(&dir)?;
        let present = Dm::open()
            .ok()
            .and_then(|dm| dm.info(name).ok().flatten())
            .is_some();
        if let (Some(r), false) = (&repl, present) {
            return state_only(name, r, json);
        }
    }
    let dm = Dm::open()?;
    let statuses = match name {
        Some(name) => {
            let info = dm.info(name)?.with_context(|| {
                format!("no device-mapper device named {name} (`bdr status` lists bdr devices)")
            })?;
            let d = info.device();
            match collect_one(&dm, name, DevNum::new(d.major, d.minor))? {
                Some(s) => vec![s],
                None => bail!("{name} is a device-mapper device but not a bdr device"),
            }
        }
        None => {
            let mut v = Vec::new();
            for (n, dev) in dm.list()? {
                // A device may vanish between the listing and the query: skip it quietly.
                match collect_one(&dm, &n, dev) {
                    Ok(Some(s)) => v.push(s),
                    Ok(None) => tracing::debug!("{n}: not a bdr device"),
                    Err(e) => match dm.info(&n) {
                        Ok(None) => tracing::debug!("{n} disappeared"),
                        _ => return Err(e),
                    },
                }
            }
            v
        }
    };
    let mut statuses = statuses;
    for s in &mut statuses {
        let dir = crate::state::state_dir_of(&s.name, state_dir);
        s.replication = ReplicationView::load(&dir).unwrap_or_else(|e| {
            tracing::warn!("{}: replication status unreadable: {e:#}", s.name);
            None
        });
    }
    if json {
        println!("{}", render_json(&statuses, name.is_some())?);
    } else if statuses.is_empty() {
        println!("no bdr devices");
    } else {
        print!("{}", render_human(&statuses));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeviceStatus {
        let table = TableParams::parse("254:16 128 0123456789abcdef0123456789abcdef").unwrap();
        let info = InfoStatus::parse("00000000000000a7 128 160 12 3 4567 2").unwrap();
        // 10 MiB minus 4 KiB: the last region is partial.
        let len = 10 * 2048 - 8;
        DeviceStatus::new(
            "bdr0",
            DevNum::new(253, 0),
            len,
            &table,
            &info,
            Some(PathBuf::from("/dev/vdb")),
            1,
        )
    }

    #[test]
    fn derives_bytes_from_regions() {
        let s = sample();
        assert_eq!(s.size_bytes, 10 * 1024 * 1024 - 4096);
        assert_eq!(s.region_size_bytes, 65536);
        assert_eq!(s.dirty_bytes, 12 * 65536);
        assert_eq!(s.frozen_bytes, 3 * 65536);
        assert_eq!(s.generation, 0xa7);
        assert_eq!(s.generation_hex, "00000000000000a7");
        assert_eq!(s.path, "/dev/mapper/bdr0");
        assert_eq!(s.lower.dev, "254:16");
        // All regions dirty: clipped at the device size.
        assert_eq!(covered_bytes(160, 65536, s.size_bytes), s.size_bytes);
        assert_eq!(covered_bytes(u64::MAX, 65536, 100), 100);
    }

    #[test]
    fn human_block_is_aligned_and_readable() {
        let out = render_one(&sample());
        let expected = "\
bdr0
  device:     /dev/mapper/bdr0 (253:0)
  lower:      /dev/vdb (254:16)
  size:       10 MiB (10481664 bytes)
  regions:    160 x 64 KiB
  dirty:      12 regions, 768 KiB (7.5% of device)
  frozen:     3 regions, 192 KiB
  writes:     4567
  freezes:    2
  generation: 00000000000000a7
  bitmap id:  0123456789abcdef0123456789abcdef
  open count: 1
";
        assert_eq!(out, expected);
        let mut s = sample();
        s.lower.path = None;
        assert!(render_one(&s).contains("  lower:      254:16\n"));
        let two = render_human(&[sample(), sample()]);
        assert!(two.contains("open count: 1\n\nbdr0\n"));
    }

    #[test]
    fn percentages() {
        assert_eq!(pct(0, 0), "0%");
        assert_eq!(pct(0, 10), "0.0%");
        assert_eq!(pct(1, 1_000_000), "<0.1%");
        assert_eq!(pct(5, 10), "50.0%");
    }

    #[test]
    fn json_shape() {
        let one = render_json(&[sample()], true).unwrap();
        let v: serde_json::Value = serde_json::from_str(&one).unwrap();
        let o = v.as_object().unwrap();
        let keys: Vec<&str> = o.keys().map(String::as_str).collect();
        let mut expected = vec![
            "name",
            "path",
            "dev",
            "lower",
            "size_bytes",
            "size_sectors",
            "region_size_bytes",
            "region_sectors",
            "nr_regions",
            "dirty_regions",
            "dirty_bytes",
            "frozen_regions",
            "frozen_bytes",
            "writes",
            "freezes",
            "generation",
            "generation_hex",
            "bitmap_id",
            "open_count",
        ];
        let mut keys_sorted = keys.clone();
        keys_sorted.sort();
        expected.sort();
        assert_eq!(keys_sorted, expected);
        for k in [
            "size_bytes",
            "size_sectors",
            "region_size_bytes",
            "region_sectors",
            "nr_regions",
            "dirty_regions",
            "dirty_bytes",
            "frozen_regions",
            "frozen_bytes",
            "writes",
            "freezes",
            "generation",
            "open_count",
        ] {
            assert!(o[k].is_u64(), "{k} is not a number: {}", o[k]);
        }
        assert_eq!(o["dirty_regions"], 12);
        assert_eq!(o["generation"], 0xa7);
        assert_eq!(o["name"], "bdr0");
        assert_eq!(o["lower"]["dev"], "254:16");
        assert_eq!(o["lower"]["major"], 254);
        assert_eq!(o["lower"]["minor"], 16);
        assert_eq!(o["lower"]["path"], "/dev/vdb");

        let all = render_json(&[sample(), sample()], false).unwrap();
        let v: serde_json::Value = serde_json::from_str(&all).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        let none = render_json(&[], false).unwrap();
        assert_eq!(none, "[]");

        // A huge generation survives exactly (u64, not f64).
        let mut s = sample();
        s.generation = u64::MAX;
        let v: serde_json::Value = serde_json::from_str(&render_json(&[s], true).unwrap()).unwrap();
        assert_eq!(v["generation"].as_u64(), Some(u64::MAX));
    }

    #[test]
    fn missing_lower_path_is_null() {
        let mut s = sample();
        s.lower.path = None;
        let v: serde_json::Value = serde_json::from_str(&render_json(&[s], true).unwrap()).unwrap();
        assert!(v["lower"]["path"].is_null());
    }
}
