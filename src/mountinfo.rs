//! `/proc/self/mountinfo`: which block devices are mounted, and where.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::target::DevNum;

pub const MOUNTINFO_PATH: &str = "/proc/self/mountinfo";

/// One mount from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub dev: DevNum,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// Undo the octal escapes the kernel puts in mountinfo paths (`\040` for a space).
pub fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse mountinfo text. Lines that don't parse are skipped (and logged).
///
/// Format: `id parent major:minor root mount_point options [optional...] - fstype source super_opts`.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| {
            let m = parse_line(line);
            if m.is_none() {
                tracing::debug!("skipping unparsable mountinfo line: {line}");
            }
            m
        })
        .collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.len() < 10 {
        return None;
    }
    let dev = DevNum::parse(fields[2]).ok()?;
    let mount_point = PathBuf::from(unescape(fields[4]));
    let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    let fs_type = unescape(fields.get(sep + 1)?);
    let source = unescape(fields.get(sep + 2)?);
    Some(Mount {
        dev,
        mount_point,
        fs_type,
        source,
    })
}

/// Read and parse this process's mountinfo.
pub fn read() -> Result<Vec<Mount>> {
    let text = std::fs::read_to_string(MOUNTINFO_PATH)
        .with_context(|| format!("cannot read {MOUNTINFO_PATH}"))?;
    Ok(parse(&text))
}

/// Mounts of any of `devs`.
pub fn mounts_of<'a>(mounts: &'a [Mount], devs: &[DevNum]) -> Vec<&'a Mount> {
    mounts.iter().filter(|m| devs.contains(&m.dev)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
25 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro
36 25 253:0 / /mnt/my\\040data rw,noatime master:1 shared:7 - xfs /dev/mapper/bdr0 rw,attr2
37 25 8:17 /sub /srv rw - ext4 /dev/sdb1 rw
garbage line
40 25 8:33 / /x rw shared:9
";

    #[test]
    fn parses_mountinfo() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].dev, DevNum::new(8, 2));
        assert_eq!(m[1].mount_point, PathBuf::from("/"));
        assert_eq!(m[1].fs_type, "ext4");
        assert_eq!(m[1].source, "/dev/sda2");
        // Several optional fields, escaped space.
        assert_eq!(m[2].dev, DevNum::new(253, 0));
        assert_eq!(m[2].mount_point, PathBuf::from("/mnt/my data"));
        assert_eq!(m[2].fs_type, "xfs");
        // No optional fields at all.
        assert_eq!(m[3].mount_point, PathBuf::from("/srv"));
    }

    #[test]
    fn finds_mounts_of_devices() {
        let m = parse(SAMPLE);
        let hits = mounts_of(&m, &[DevNum::new(8, 17), DevNum::new(9, 9)]);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].mount_point, PathBuf::from("/srv"));
        assert!(mounts_of(&m, &[DevNum::new(8, 16)]).is_empty());
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("tab\\011x\\134y"), "tab\tx\\y");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        assert_eq!(unescape("\\999"), "\\999");
        assert_eq!(unescape("plain"), "plain");
    }

    #[test]
    fn reads_own_mountinfo() {
        // Every Linux process has at least its root mounted.
        if std::path::Path::new(MOUNTINFO_PATH).exists() {
            assert!(!read().unwrap().is_empty());
        }
    }
}
