//! Block devices: checks on the lower device, and what sysfs says about who uses a device.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::mountinfo::{self, Mount};
use crate::size::{format_bytes, format_bytes_exact, MAX_REGIONS, SECTOR_SIZE};
use crate::target::DevNum;

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);

/// Sysfs directory of a block device.
pub fn sysfs_dir(dev: DevNum) -> PathBuf {
    PathBuf::from(format!("/sys/dev/block/{dev}"))
}

/// `DEVNAME=` from a sysfs uevent file, as a /dev path.
pub fn uevent_devname(uevent: &str) -> Option<PathBuf> {
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| Path::new("/dev").join(n))
}

/// The /dev path of a block device, if sysfs knows it.
pub fn dev_path(dev: DevNum) -> Option<PathBuf> {
    let text = fs::read_to_string(sysfs_dir(dev).join("uevent")).ok()?;
    uevent_devname(&text)
}

fn read_dev_file(path: &Path) -> Option<DevNum> {
    let text = fs::read_to_string(path).ok()?;
    DevNum::parse(text.trim()).ok()
}

/// A kernel block device name (`sdb1`, `dm-3`) with what a person recognises it by:
/// `dm-3 (/dev/mapper/vg-lv)` or `/dev/sdb1`.
pub fn describe_kname(kname: &str) -> String {
    let dm_name = Path::new("/sys/class/block")
        .join(kname)
        .join("dm")
        .join("name");
    match fs::read_to_string(dm_name) {
        Ok(n) if !n.trim().is_empty() => format!("{kname} (/dev/mapper/{})", n.trim()),
        _ => format!("/dev/{kname}"),
    }
}

/// Kernel names of the holders of a device (`/sys/dev/block/M:m/holders/*`).
pub fn holders(dev: DevNum) -> Vec<String> {
    list_dir_names(&sysfs_dir(dev).join("holders"))
}

fn list_dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// A device together with its partitions and holders, recursively, as
/// (device number, kernel name). The device itself comes first.
pub fn stack(dev: DevNum) -> Vec<(DevNum, String)> {
    let own_name = fs::canonicalize(sysfs_dir(dev))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dev.to_string());
    let mut out = vec![(dev, own_name)];
    let mut seen = BTreeSet::from([dev]);
    let mut i = 0;
    // Bounded: every device is visited once, and sysfs stacks are shallow.
    while i < out.len() && out.len() < 1024 {
        let (d, _) = out[i].clone();
        let dir = sysfs_dir(d);
        let mut next = Vec::new();
        // Partitions: subdirectories with a `partition` file.
        for name in list_dir_names(&dir) {
            let sub = dir.join(&name);
            if sub.join("partition").exists() {
                if let Some(pd) = read_dev_file(&sub.join("dev")) {
                    next.push((pd, name));
                }
            }
        }
        for name in holders(d) {
            if let Some(hd) = read_dev_file(&Path::new("/sys/class/block").join(&name).join("dev"))
            {
                next.push((hd, name));
            }
        }
        for (nd, name) in next {
            if seen.insert(nd) {
                out.push((nd, name));
            }
        }
        i += 1;
    }
    out
}

/// Where `dev`, or a partition or holder of it, is mounted. `None` if nothing is.
pub fn mounted_where(dev: DevNum, mounts: &[Mount]) -> Option<String> {
    let stack = stack(dev);
    let devs: Vec<DevNum> = stack.iter().map(|(d, _)| *d).collect();
    let hits = mountinfo::mounts_of(mounts, &devs);
    if hits.is_empty() {
        return None;
    }
    let parts: Vec<String> = hits
        .iter()
        .map(|m| {
            let via = if m.dev == dev {
                String::new()
            } else {
                let kname = stack
                    .iter()
                    .find(|(d, _)| *d == m.dev)
                    .map(|(_, n)| describe_kname(n))
                    .unwrap_or_else(|| m.dev.to_string());
                format!("{kname} ")
            };
            format!("{via}on {} ({})", m.mount_point.display(), m.fs_type)
        })
        .collect();
    Some(parts.join(", "))
}

/// The lower device, checked and measured.
#[derive(Debug, Clone)]
pub struct LowerDevice {
    /// The path as given.
    pub given: PathBuf,
    /// The path with symlinks resolved (what goes into the table line).
    pub path: PathBuf,
    pub dev: DevNum,
    pub size_bytes: u64,
}

impl LowerDevice {
    pub fn sectors(&self) -> u64 {
        self.size_bytes / SECTOR_SIZE
    }
}

fn file_kind(ft: &fs::FileType) -> &'static str {
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a device"
    }
}

/// Check that `path` can serve as a bdr lower device: it exists, is a block device,
/// is not mounted (nor any partition or holder of it), and nobody holds it open
/// exclusively. Returns its device number and size.
pub fn check_lower(path: &Path) -> Result<LowerDevice> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!(
                "lower device {} does not exist; give the path of a block device such as /dev/vdb",
                path.display()
            )
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot examine {}", path.display()));
        }
    };
    let ft = meta.file_type();
    if !ft.is_block_device() {
        let hint = if ft.is_file() {
            "; to use a file, attach it to a loop device first (losetup --find --show FILE)"
        } else {
            ""
        };
        bail!(
            "{} is not a block device (it is {}){hint}",
            path.display(),
            file_kind(&ft)
        );
    }
    let dev = DevNum::from_dev_t(meta.rdev());
    let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    tracing::debug!(path = %canonical.display(), %dev, "lower is a block device");

    let mounts = mountinfo::read()?;
    if let Some(wh) = mounted_where(dev, &mounts) {
        bail!(
            "{} ({dev}) is mounted: {wh}; unmount it before attaching",
            path.display()
        );
    }

    let file = open_exclusive(path, dev)?;
    let size_bytes = device_size(&file)
        .with_context(|| format!("cannot read the size of {} (BLKGETSIZE64)", path.display()))?;
    drop(file);
    if size_bytes < SECTOR_SIZE {
        bail!("{} is empty (size {size_bytes} bytes)", path.display());
    }
    tracing::debug!(size_bytes, "lower device size");
    Ok(LowerDevice {
        given: path.to_path_buf(),
        path: canonical,
        dev,
        size_bytes,
    })
}

/// Open a block device with O_EXCL: the kernel then refuses (EBUSY) if anything else
/// holds it exclusively (a mounted filesystem, a device-mapper table, md, swap...).
fn open_exclusive(path: &Path, dev: DevNum) -> Result<File> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let users: Vec<String> = stack(dev)
                .into_iter()
                .skip(1)
                .map(|(_, n)| describe_kname(&n))
                .collect();
            let by = if users.is_empty() {
                "something else (a filesystem, swap, md/LVM or another program)".to_string()
            } else {
                users.join(", ")
            };
            bail!(
                "{} ({dev}) is in use: it is held open exclusively by {by}; stop that user first",
                path.display()
            )
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
            Err(e).with_context(|| format!("cannot open {} (run bdr as root)", path.display()))
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO) | Some(libc::ENODEV)) => Err(e)
            .with_context(|| {
                format!(
                    "{} is a device node without a device behind it ({dev})",
                    path.display()
                )
            }),
        Err(e) => Err(e).with_context(|| format!("cannot open {}", path.display())),
    }
}

/// Size in bytes of an open block device.
pub fn device_size(file: &File) -> Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to a live,
    // properly aligned local; the fd is valid for the lifetime of `file`.
    unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }?;
    Ok(size)
}

/// Check that a region of `region_bytes` fits the device, and that the device doesn't
/// need more regions than dm-bdr allows.
pub fn check_region_fits(lower: &LowerDevice, region_bytes: u64) -> Result<()> {
    let regions = lower.size_bytes.div_ceil(region_bytes.max(1));
    if regions > MAX_REGIONS {
        let need = lower.size_bytes.div_ceil(MAX_REGIONS).next_power_of_two();
        bail!(
            "{} ({}) would need {regions} regions of {}, more than the {MAX_REGIONS} allowed; \
             use --region-size {} or larger",
            lower.given.display(),
            format_bytes(lower.size_bytes),
            format_bytes_exact(region_bytes),
            format_bytes_exact(need)
        );
    }
    if region_bytes > lower.size_bytes {
        bail!(
            "region size {} is bigger than {} ({}); choose a smaller --region-size",
            format_bytes_exact(region_bytes),
            lower.given.display(),
            format_bytes(lower.size_bytes)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_path_is_refused_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope");
        let e = check_lower(&p).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn regular_file_is_not_a_block_device() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        let e = check_lower(&p).unwrap_err().to_string();
        assert!(e.contains("is not a block device"), "{e}");
        assert!(e.contains("regular file"), "{e}");
        assert!(e.contains("losetup"), "{e}");
    }

    #[test]
    fn directory_and_char_device_are_not_block_devices() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_lower(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a block device (it is a directory)"), "{e}");
        let e = check_lower(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.contains("character device"), "{e}");
    }

    #[test]
    fn symlink_to_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = check_lower(&link).unwrap_err().to_string();
        assert!(e.contains("not a block device"), "{e}");
    }

    #[test]
    fn uevent_parsing() {
        let u = "MAJOR=8\nMINOR=16\nDEVNAME=sdb\nDEVTYPE=disk\n";
        assert_eq!(uevent_devname(u), Some(PathBuf::from("/dev/sdb")));
        assert_eq!(
            uevent_devname("DEVNAME=mapper/x\n"),
            Some(PathBuf::from("/dev/mapper/x"))
        );
        assert_eq!(uevent_devname("MAJOR=8\n"), None);
        assert_eq!(uevent_devname("DEVNAME=\n"), None);
    }

    #[test]
    fn region_must_fit_device() {
        let lower = LowerDevice {
            given: PathBuf::from("/dev/tiny"),
            path: PathBuf::from("/dev/tiny"),
            dev: DevNum::new(7, 0),
            size_bytes: 32 * 1024,
        };
        assert!(check_region_fits(&lower, 4096).is_ok());
        assert!(check_region_fits(&lower, 32 * 1024).is_ok());
        let e = check_region_fits(&lower, 64 * 1024)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bigger than /dev/tiny (32 KiB)"), "{e}");
        assert_eq!(lower.sectors(), 64);

        let huge = LowerDevice {
            size_bytes: 64 << 40, // 64 TiB: 2^34 regions of 4 KiB
            ..lower
        };
        let e = check_region_fits(&huge, 4096).unwrap_err().to_string();
        assert!(e.contains("use --region-size 16 KiB or larger"), "{e}");
        assert!(check_region_fits(&huge, 16384).is_ok());
    }

    #[test]
    fn stack_of_unknown_device_is_just_itself() {
        let d = DevNum::new(4095, 1_048_000);
        let s = stack(d);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, d);
        assert!(mounted_where(d, &[]).is_none());
    }
}
