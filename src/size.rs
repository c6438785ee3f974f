//! Byte sizes: parsing what a person types (`64KiB`, `1M`, `65536`) and printing
//! sizes in binary units (`64 KiB`, `1.5 GiB`).

use std::fmt;

/// Bytes in one device-mapper sector.
pub const SECTOR_SIZE: u64 = 512;

/// Smallest region the kernel target accepts: 8 sectors.
pub const MIN_REGION_BYTES: u64 = 4096;

/// Largest region dm-bdr accepts: 2^21 sectors.
pub const MAX_REGION_BYTES: u64 = 1 << 30;

/// Most regions one dm-bdr device may have (user space indexes them by u32).
pub const MAX_REGIONS: u64 = 1 << 32;

/// Default region: 128 sectors.
pub const DEFAULT_REGION_BYTES: u64 = 64 * 1024;

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeError {
    Empty,
    NoDigits(String),
    BadUnit(String),
    Overflow(String),
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::Empty => write!(f, "empty size"),
            SizeError::NoDigits(s) => write!(
                f,
                "'{s}' is not a size: expected a whole number with an optional unit, e.g. 65536, 64K, 64KiB, 1M"
            ),
            SizeError::BadUnit(u) => write!(
                f,
                "unknown size unit '{u}': use B, K/KiB, M/MiB, G/GiB (all powers of 1024)"
            ),
            SizeError::Overflow(s) => write!(f, "size '{s}' is too large"),
        }
    }
}

impl std::error::Error for SizeError {}

/// Parse a byte count: digits, then an optional unit. Units are binary (1K = 1024) and
/// case-insensitive: B, K/KiB, M/MiB, G/GiB, T/TiB. `KB` and friends are refused: they
/// are ambiguous (decimal or binary?).
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::NoDigits(s.to_string()));
    }
    let unit = unit.trim_start();
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ if unit.starts_with('.') => return Err(SizeError::NoDigits(s.to_string())),
        _ => return Err(SizeError::BadUnit(unit.to_string())),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(s.to_string()))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(s.to_string()))
}

/// Check a region size in bytes and return it in sectors: a power of two from 4 KiB
/// to 1 GiB.
pub fn region_sectors_from_bytes(bytes: u64) -> Result<u32, String> {
    if !bytes.is_power_of_two() {
        return Err(format!(
            "region size {} is not a power of two (try {} or {})",
            format_bytes_exact(bytes),
            format_bytes_exact(prev_power_of_two(bytes).max(MIN_REGION_BYTES)),
            format_bytes_exact(
                bytes
                    .checked_next_power_of_two()
                    .unwrap_or(1 << 62)
                    .max(MIN_REGION_BYTES)
            ),
        ));
    }
    if bytes < MIN_REGION_BYTES {
        return Err(format!(
            "region size {} is below the minimum of 4 KiB",
            format_bytes_exact(bytes)
        ));
    }
    if bytes > MAX_REGION_BYTES {
        return Err(format!(
            "region size {} is above the maximum of 1 GiB",
            format_bytes_exact(bytes)
        ));
    }
    u32::try_from(bytes / SECTOR_SIZE)
        .map_err(|_| format!("region size {} is too large", format_bytes_exact(bytes)))
}

fn prev_power_of_two(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        1u64 << (63 - n.leading_zeros())
    }
}

/// A validated region size, as clap parses `--region-size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionSize {
    sectors: u32,
}

impl RegionSize {
    pub fn from_bytes(bytes: u64) -> Result<Self, String> {
        region_sectors_from_bytes(bytes).map(|sectors| RegionSize { sectors })
    }

    pub fn sectors(self) -> u32 {
        self.sectors
    }

    pub fn bytes(self) -> u64 {
        u64::from(self.sectors) * SECTOR_SIZE
    }
}

impl Default for RegionSize {
    fn default() -> Self {
        RegionSize {
            sectors: (DEFAULT_REGION_BYTES / SECTOR_SIZE) as u32,
        }
    }
}

impl fmt::Display for RegionSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes_exact(self.bytes()))
    }
}

/// clap value parser for `--region-size`.
pub fn parse_region_size(s: &str) -> Result<RegionSize, String> {
    let bytes = parse_size(s).map_err(|e| e.to_string())?;
    RegionSize::from_bytes(bytes)
}

const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// Human size with one decimal where needed: `0 B`, `512 B`, `64 KiB`, `1.5 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    let mut v = bytes as f64;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    let rounded = (v * 10.0).round() / 10.0;
    if rounded >= 1024.0 && unit < UNITS.len() - 1 {
        return format!("1 {}", UNITS[unit + 1]);
    }
    if rounded.fract() == 0.0 {
        format!("{} {}", rounded as u64, UNITS[unit])
    } else {
        format!("{rounded:.1} {}", UNITS[unit])
    }
}

/// Exact size in the largest binary unit that divides it: `65536` -> `64 KiB`,
/// `1000` -> `1000 B`.
pub fn format_bytes_exact(bytes: u64) -> String {
    let mut unit = 0;
    let mut v = bytes;
    while v != 0 && v.is_multiple_of(1024) && unit < UNITS.len() - 1 {
        v /= 1024;
        unit += 1;
    }
    format!("{v} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_suffixed_sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64kib"), Ok(65536));
        assert_eq!(parse_size("64 KiB"), Ok(65536));
        assert_eq!(parse_size(" 1M "), Ok(1 << 20));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn rejects_junk_sizes() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("   "), Err(SizeError::Empty));
        assert!(matches!(parse_size("K"), Err(SizeError::NoDigits(_))));
        assert!(matches!(parse_size("-4K"), Err(SizeError::NoDigits(_))));
        assert!(matches!(parse_size("1.5M"), Err(SizeError::NoDigits(_))));
        assert!(matches!(parse_size("64KB"), Err(SizeError::BadUnit(_))));
        assert!(matches!(parse_size("64X"), Err(SizeError::BadUnit(_))));
        assert!(matches!(parse_size("64K4"), Err(SizeError::BadUnit(_))));
        assert!(matches!(parse_size("big"), Err(SizeError::NoDigits(_))));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("17179869184G"),
            Err(SizeError::Overflow(_))
        ));
        // Messages say what is wrong.
        assert!(parse_size("64X").unwrap_err().to_string().contains("'X'"));
    }

    #[test]
    fn region_size_rules() {
        assert_eq!(parse_region_size("64KiB").map(|r| r.sectors()), Ok(128));
        assert_eq!(parse_region_size("4K").map(|r| r.sectors()), Ok(8));
        assert_eq!(parse_region_size("1M").map(|r| r.bytes()), Ok(1 << 20));
        let e = parse_region_size("2K").unwrap_err();
        assert!(e.contains("minimum of 4 KiB"), "{e}");
        let e = parse_region_size("48K").unwrap_err();
        assert!(e.contains("not a power of two"), "{e}");
        assert!(e.contains("32 KiB") && e.contains("64 KiB"), "{e}");
        let e = parse_region_size("3000").unwrap_err();
        assert!(e.contains("not a power of two"), "{e}");
        assert!(parse_region_size("0").is_err());
        assert!(parse_region_size("junk").is_err());
        assert_eq!(parse_region_size("1G").map(|r| r.sectors()), Ok(1 << 21));
        let e = parse_region_size("2G").unwrap_err();
        assert!(e.contains("maximum of 1 GiB"), "{e}");
        assert!(parse_region_size("4T").is_err());
        assert_eq!(RegionSize::default().sectors(), 128);
        assert_eq!(RegionSize::default().to_string(), "64 KiB");
    }

    #[test]
    fn human_formatting() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1 KiB");
        assert_eq!(format_bytes(65536), "64 KiB");
        assert_eq!(format_bytes(1536 * 1024 * 1024), "1.5 GiB");
        assert_eq!(format_bytes(10 * (1 << 30)), "10 GiB");
        assert_eq!(format_bytes((1 << 20) - 1), "1 MiB");
        assert_eq!(format_bytes(u64::MAX), "16 EiB");
        assert_eq!(format_bytes_exact(65536), "64 KiB");
        assert_eq!(format_bytes_exact(1000), "1000 B");
        assert_eq!(format_bytes_exact(0), "0 B");
        assert_eq!(format_bytes_exact(3 << 20), "3 MiB");
    }
}
