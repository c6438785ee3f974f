//! The `bdr` device-mapper target's text formats: the table line we load, the table line
//! the kernel re-emits (STATUSTYPE_TABLE) and its status line (STATUSTYPE_INFO).

use std::fmt;

use anyhow::{bail, ensure, Context, Result};

/// Target type name registered by dm-bdr.
pub const TARGET_TYPE: &str = "bdr";

/// DM uuid prefix of devices `bdr attach` creates: `BDR-<bitmap id>`.
pub const UUID_PREFIX: &str = "BDR-";

/// Longest bitmap id (BDR_ID_LEN minus the NUL).
pub const MAX_ID_LEN: usize = 63;

/// A device number, printed as `major:minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    pub fn new(major: u32, minor: u32) -> Self {
        DevNum { major, minor }
    }

    /// From a `st_rdev` / `st_dev` value.
    pub fn from_dev_t(dev: u64) -> Self {
        DevNum {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }

    pub fn to_dev_t(self) -> u64 {
        libc::makedev(self.major, self.minor)
    }

    pub fn parse(s: &str) -> Result<Self> {
        let (ma, mi) = s
            .split_once(':')
            .with_context(|| format!("'{s}' is not a major:minor device number"))?;
        let major = ma
            .parse()
            .with_context(|| format!("bad major number in '{s}'"))?;
        let minor = mi
            .parse()
            .with_context(|| format!("bad minor number in '{s}'"))?;
        Ok(DevNum { major, minor })
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Check a bitmap id: 1..=63 characters of `[A-Za-z0-9_.:-]`.
pub fn validate_bitmap_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("bitmap id is empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!(
            "bitmap id is {} characters long; at most {MAX_ID_LEN} are allowed",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(format!(
            "bitmap id '{id}' contains {c:?}; only letters, digits and _ . : - are allowed"
        ));
    }
    Ok(())
}

/// clap value parser for `--id`.
pub fn parse_bitmap_id(s: &str) -> Result<String, String> {
    validate_bitmap_id(s).map(|()| s.to_string())
}

/// Check a device-mapper device name for `bdr attach`.
pub fn validate_dm_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("device name is empty".into());
    }
    // DM_NAME_LEN is 128 including the NUL.
    if name.len() > 127 {
        return Err(format!(
            "device name is {} bytes long; at most 127 are allowed",
            name.len()
        ));
    }
    if name == "." || name == ".." || name == "control" {
        return Err(format!("'{name}' cannot be used as a device name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err(format!(
            "device name '{}' contains {c:?}; use letters, digits and _ . : - +",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// clap value parser for NAME.
pub fn parse_dm_name(s: &str) -> Result<String, String> {
    validate_dm_name(s).map(|()| s.to_string())
}

/// The DM uuid of the device using bitmap `id`.
pub fn dm_uuid(id: &str) -> String {
    format!("{UUID_PREFIX}{id}")
}

/// Parameters of the table line `bdr attach` loads:
/// `<lower_dev_path> <region_sectors> <bitmap_id>`.
pub fn format_table_params(lower: &str, region_sectors: u32, id: &str) -> String {
    format!("{lower} {region_sectors} {id}")
}

/// What STATUSTYPE_TABLE re-emits: `<major:minor> <region_sectors> <bitmap_id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableParams {
    pub lower: DevNum,
    pub region_sectors: u32,
    pub bitmap_id: String,
}

impl TableParams {
    pub fn parse(line: &str) -> Result<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        ensure!(
            fields.len() == 3,
            "bdr table line '{line}' has {} fields, expected 3 (<major:minor> <region_sectors> <bitmap_id>)",
            fields.len()
        );
        let lower = DevNum::parse(fields[0])?;
        let region_sectors = parse_region_sectors(fields[1])?;
        validate_bitmap_id(fields[2]).map_err(anyhow::Error::msg)?;
        Ok(TableParams {
            lower,
            region_sectors,
            bitmap_id: fields[2].to_string(),
        })
    }
}

impl fmt::Display for TableParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.lower, self.region_sectors, self.bitmap_id
        )
    }
}

fn parse_region_sectors(s: &str) -> Result<u32> {
    let v: u32 = s
        .parse()
        .with_context(|| format!("bad region_sectors '{s}'"))?;
    ensure!(
        v >= 8 && v.is_power_of_two(),
        "region_sectors {v} is not a power of two >= 8"
    );
    Ok(v)
}

/// What STATUSTYPE_INFO reports:
/// `<generation:16 hex> <region_sectors> <nr_regions> <active_regions> <frozen_regions> <writes> <freezes>`.
/// Extra trailing fields (a newer module) are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoStatus {
    pub generation: u64,
    pub region_sectors: u32,
    pub nr_regions: u64,
    pub active_regions: u64,
    pub frozen_regions: u64,
    pub writes: u64,
    pub freezes: u64,
}

impl InfoStatus {
    pub fn parse(line: &str) -> Result<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 7 {
            bail!(
                "bdr status line '{line}' has {} fields, expected 7 \
                 (<generation> <region_sectors> <nr_regions> <active> <frozen> <writes> <freezes>)",
                fields.len()
            );
        }
        let g = fields[0];
        ensure!(
            g.len() == 16 && g.chars().all(|c| c.is_ascii_hexdigit()),
            "bad generation '{g}' in bdr status line: expected 16 hex digits"
        );
        let generation = u64::from_str_radix(g, 16)
            .with_context(|| format!("bad generation '{g}' in bdr status line"))?;
        let num = |i: usize, what: &str| -> Result<u64> {
            fields[i]
                .parse::<u64>()
                .with_context(|| format!("bad {what} '{}' in bdr status line", fields[i]))
        };
        let status = InfoStatus {
            generation,
            region_sectors: parse_region_sectors(fields[1])?,
            nr_regions: num(2, "nr_regions")?,
            active_regions: num(3, "active_regions")?,
            frozen_regions: num(4, "frozen_regions")?,
            writes: num(5, "writes")?,
            freezes: num(6, "freezes")?,
        };
        ensure!(
            status.active_regions <= status.nr_regions
                && status.frozen_regions <= status.nr_regions,
            "bdr status line '{line}' counts more dirty regions than the device has"
        );
        Ok(status)
    }
}

impl fmt::Display for InfoStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:016x} {} {} {} {} {} {}",
            self.generation,
            self.region_sectors,
            self.nr_regions,
            self.active_regions,
            self.frozen_regions,
            self.writes,
            self.freezes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devnum_roundtrip() {
        let d = DevNum::parse("253:17").unwrap();
        assert_eq!(d, DevNum::new(253, 17));
        assert_eq!(d.to_string(), "253:17");
        assert_eq!(DevNum::from_dev_t(d.to_dev_t()), d);
        let big = DevNum::new(259, 1 << 19);
        assert_eq!(DevNum::from_dev_t(big.to_dev_t()), big);
        assert!(DevNum::parse("253").is_err());
        assert!(DevNum::parse("a:1").is_err());
        assert!(DevNum::parse("1:-1").is_err());
    }

    #[test]
    fn bitmap_ids() {
        assert!(validate_bitmap_id("a").is_ok());
        assert!(validate_bitmap_id("host-1.disk_2:x").is_ok());
        assert!(validate_bitmap_id(&"x".repeat(63)).is_ok());
        assert!(validate_bitmap_id(&"x".repeat(64))
            .unwrap_err()
            .contains("at most 63"));
        assert!(validate_bitmap_id("").is_err());
        assert!(validate_bitmap_id("a b").unwrap_err().contains("' '"));
        assert!(validate_bitmap_id("a/b").is_err());
        assert!(validate_bitmap_id("é").is_err());
        assert_eq!(dm_uuid("abc"), "BDR-abc");
    }

    #[test]
    fn dm_names() {
        assert!(validate_dm_name("bdr0").is_ok());
        assert!(validate_dm_name("vg-lv_x.1+2").is_ok());
        assert!(validate_dm_name("").is_err());
        assert!(validate_dm_name("a/b").is_err());
        assert!(validate_dm_name("a b").is_err());
        assert!(validate_dm_name("..").is_err());
        assert!(validate_dm_name("control").is_err());
        assert!(validate_dm_name(&"n".repeat(127)).is_ok());
        assert!(validate_dm_name(&"n".repeat(128)).is_err());
    }

    #[test]
    fn table_line_format() {
        assert_eq!(
            format_table_params("/dev/vdb", 128, "0123abcd"),
            "/dev/vdb 128 0123abcd"
        );
    }

    #[test]
    fn table_line_parse() {
        let t = TableParams::parse("254:16 128 0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(t.lower, DevNum::new(254, 16));
        assert_eq!(t.region_sectors, 128);
        assert_eq!(t.bitmap_id, "0123456789abcdef0123456789abcdef");
        assert_eq!(t.to_string(), "254:16 128 0123456789abcdef0123456789abcdef");
        // Trailing whitespace from the kernel is fine.
        assert!(TableParams::parse("8:0 8 x \n").is_ok());
        assert!(TableParams::parse("8:0 128").is_err());
        assert!(TableParams::parse("8:0 128 x extra").is_err());
        assert!(TableParams::parse("/dev/sda 128 x").is_err());
        assert!(TableParams::parse("8:0 100 x").is_err());
        assert!(TableParams::parse("8:0 4 x").is_err());
        assert!(TableParams::parse("8:0 128 a/b").is_err());
    }

    #[test]
    fn info_line_parse() {
        let s = InfoStatus::parse("00000000deadbeef 128 1600 12 3 4567 2").unwrap();
        assert_eq!(
            s,
            InfoStatus {
                generation: 0xdeadbeef,
                region_sectors: 128,
                nr_regions: 1600,
                active_regions: 12,
                frozen_regions: 3,
                writes: 4567,
                freezes: 2,
            }
        );
        assert_eq!(s.to_string(), "00000000deadbeef 128 1600 12 3 4567 2");
        let max = InfoStatus::parse(&format!(
            "ffffffffffffffff 8 {m} {m} {m} {m} {m}",
            m = u64::MAX
        ))
        .unwrap();
        assert_eq!(max.generation, u64::MAX);
        assert_eq!(max.writes, u64::MAX);
        // A newer module may append fields.
        assert!(InfoStatus::parse("0000000000000001 128 10 0 0 0 0 future").is_ok());
    }

    #[test]
    fn info_line_rejects_malformed() {
        for bad in [
            "",
            "0000000000000001 128 10 0 0 0",
            "1 128 10 0 0 0 0",
            "000000000000000g 128 10 0 0 0 0",
            "0000000000000001 100 10 0 0 0 0",
            "0000000000000001 128 10 -1 0 0 0",
            "0000000000000001 128 10 11 0 0 0",
            "0000000000000001 128 x 0 0 0 0",
        ] {
            assert!(InfoStatus::parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
