//! Device-mapper access through the `devicemapper` crate (ioctls on /dev/mapper/control).

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use devicemapper::{DevId, DeviceInfo, DmError, DmFlags, DmName, DmOptions, DmUuid, DM};

use crate::target::{DevNum, InfoStatus, TableParams, TARGET_TYPE};

pub const CONTROL_PATH: &str = "/dev/mapper/control";
/// udevd's control socket: the devicemapper crate syncs with udev whenever it exists.
pub const UDEV_CONTROL: &str = "/run/udev/control";
const DM_NOTIFY_RULES: &str = "95-dm-notify.rules";
const UDEV_RULE_DIRS: [&str; 4] = [
    "/etc/udev/rules.d",
    "/run/udev/rules.d",
    "/usr/lib/udev/rules.d",
    "/lib/udev/rules.d",
];
pub const MAPPER_DIR: &str = "/dev/mapper";

/// The errno inside a devicemapper error, if it came from an ioctl.
pub fn errno_of(e: &DmError) -> Option<i32> {
    match e {
        DmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, errno)) => Some(**errno as i32),
        _ => None,
    }
}

/// Turn a devicemapper error into a short message: the crate's own Display dumps whole
/// ioctl headers, which helps nobody reading a terminal.
fn dm_err(what: String, e: DmError) -> anyhow::Error {
    tracing::debug!("{what}: {e}");
    match errno_of(&e) {
        Some(errno) => anyhow!(io::Error::from_raw_os_error(errno)).context(what),
        None => anyhow!("{e}").context(what),
    }
}

/// Why /dev/mapper/control can't be opened, in words an admin can act on.
fn explain_unavailable(err: &io::Error) -> anyhow::Error {
    let misc = fs::read_to_string("/proc/misc").unwrap_or_default();
    let loaded = misc
        .lines()
        .any(|l| l.trim_end().ends_with(" device-mapper"));
    match err.kind() {
        io::ErrorKind::NotFound if !loaded => anyhow!(
            "device-mapper not available: {CONTROL_PATH} does not exist and the kernel has no \
             device-mapper; load it with `modprobe dm-mod` (as root)"
        ),
        io::ErrorKind::NotFound => {
            let devno = fs::read_to_string("/sys/class/misc/device-mapper/dev")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "10:236".into());
            let (ma, mi) = devno.split_once(':').unwrap_or(("10", "236"));
            anyhow!(
                "device-mapper not available: the kernel has it but {CONTROL_PATH} is missing; \
                 create it with `mkdir -p {MAPPER_DIR} && mknod {CONTROL_PATH} c {ma} {mi}`"
            )
        }
        io::ErrorKind::PermissionDenied => anyhow!(
            "device-mapper not accessible: permission denied opening {CONTROL_PATH}; run bdr as root"
        ),
        _ => anyhow!("device-mapper not available: cannot open {CONTROL_PATH}: {err}"),
    }
}

/// Whether udevd answers on its control socket: `None` if the socket doesn't exist.
fn udev_alive() -> Option<bool> {
    match std::os::unix::net::UnixStream::connect(UDEV_CONTROL) {
        Ok(_) => Some(true),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENOENT) => None,
            // A socket file nobody listens on: udevd died without cleaning up.
            Some(libc::ECONNREFUSED) => Some(false),
            // udevd listens with SOCK_SEQPACKET, so a stream connect to a live one fails
            // with EPROTOTYPE; anything else we also take as alive.
            _ => Some(true),
        },
    }
}

/// Resume and remove make the devicemapper crate wait on a semaphore that udev's DM rules
/// release; if udev is dead or lacks those rules, that wait never ends. Refuse up front
/// instead of hanging.
pub fn check_udev_sync() -> Result<()> {
    match udev_alive() {
        None => Ok(()),
        Some(false) => bail!(
            "udev is not running but its control socket {UDEV_CONTROL} is still there, so \
             device-mapper would wait forever for it; start udev, or remove the stale \
             {UDEV_CONTROL} to work without it"
        ),
        Some(true) => {
            if UDEV_RULE_DIRS
                .iter()
                .any(|d| Path::new(d).join(DM_NOTIFY_RULES).exists())
            {
                Ok(())
            } else {
                bail!(
                    "udev is running without device-mapper's rules ({DM_NOTIFY_RULES}), so \
                     device-mapper would wait forever for it; install dmsetup's udev rules \
                     (apt-get install dmsetup) or stop udev"
                )
            }
        }
    }
}

/// A bdr device's active table: one `bdr` target.
#[derive(Debug, Clone)]
pub struct BdrTable {
    pub len_sectors: u64,
    pub params: TableParams,
}

/// What the kernel's table for a device looks like, for messages about non-bdr devices.
#[derive(Debug, Clone)]
pub enum Table {
    Bdr(BdrTable),
    Other(Vec<String>),
}

pub struct Dm {
    dm: DM,
}

fn name_ref(name: &str) -> Result<&DmName> {
    DmName::new(name).map_err(|e| anyhow!("invalid device-mapper name '{name}': {e}"))
}

impl Dm {
    /// Open the device-mapper control device, explaining clearly when that's impossible.
    pub fn open() -> Result<Self> {
        if let Err(e) = fs::File::open(CONTROL_PATH) {
            return Err(explain_unavailable(&e));
        }
        let dm = DM::new().map_err(|e| anyhow!("device-mapper not available: {e}"))?;
        if let Ok(v) = dm.version() {
            tracing::debug!("device-mapper ioctl interface {}.{}.{}", v.0, v.1, v.2);
        }
        Ok(Dm { dm })
    }

    /// Whether the kernel has a target type of this name registered.
    pub fn target_registered(&self, target: &str) -> Result<bool> {
        let versions = self
            .dm
            .list_versions()
            .map_err(|e| dm_err("cannot list device-mapper target types".into(), e))?;
        tracing::debug!(
            "registered targets: {:?}",
            versions.iter().map(|v| v.0.as_str()).collect::<Vec<_>>()
        );
        Ok(versions.iter().any(|(n, ..)| n == target))
    }

    /// Info about a device, or `None` if no device has this name.
    pub fn info(&self, name: &str) -> Result<Option<DeviceInfo>> {
        let n = name_ref(name)?;
        match self.dm.device_info(&DevId::Name(n)) {
            Ok(i) => Ok(Some(i)),
            Err(e) if errno_of(&e) == Some(libc::ENXIO) => Ok(None),
            Err(e) => Err(dm_err(
                format!("cannot query device-mapper device {name}"),
                e,
            )),
        }
    }

    /// The name of the device with this DM uuid, if any.
    pub fn name_by_uuid(&self, uuid: &str) -> Result<Option<String>> {
        let u = DmUuid::new(uuid).map_err(|e| anyhow!("invalid DM uuid '{uuid}': {e}"))?;
        match self.dm.device_info(&DevId::Uuid(u)) {
            Ok(i) => Ok(Some(
                i.name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "?".into()),
            )),
            Err(e) if errno_of(&e) == Some(libc::ENXIO) => Ok(None),
            Err(e) => Err(dm_err(format!("cannot query DM uuid {uuid}"), e)),
        }
    }

    /// Names and device numbers of all device-mapper devices.
    pub fn list(&self) -> Result<Vec<(String, DevNum)>> {
        let devs = self
            .dm
            .list_devices()
            .map_err(|e| dm_err("cannot list device-mapper devices".into(), e))?;
        let mut out: Vec<(String, DevNum)> = devs
            .into_iter()
            .map(|(n, d, _)| (n.to_string(), DevNum::new(d.major, d.minor)))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The device's active table, classified.
    pub fn table(&self, name: &str) -> Result<Table> {
        let n = name_ref(name)?;
        let (_, targets) = self
            .dm
            .table_status(
                &DevId::Name(n),
                DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
            )
            .map_err(|e| dm_err(format!("cannot read the table of {name}"), e))?;
        // DM tables always start at sector 0, so one target covers the whole device.
        if let [(_, len, ty, params)] = targets.as_slice() {
            if ty == TARGET_TYPE {
                let params = TableParams::parse(params)
                    .with_context(|| format!("unexpected bdr table for {name}"))?;
                return Ok(Table::Bdr(BdrTable {
                    len_sectors: *len,
                    params,
                }));
            }
        }
        Ok(Table::Other(
            targets
                .iter()
                .map(|(s, l, t, p)| format!("{s} {l} {t} {p}").trim_end().to_string())
                .collect(),
        ))
    }

    /// The bdr target's STATUSTYPE_INFO line, parsed.
    pub fn bdr_info(&self, name: &str) -> Result<InfoStatus> {
        let n = name_ref(name)?;
        let (_, targets) = self
            .dm
            .table_status(&DevId::Name(n), DmOptions::default())
            .map_err(|e| dm_err(format!("cannot read the status of {name}"), e))?;
        match targets.as_slice() {
            [(_, _, ty, line)] if ty == TARGET_TYPE => {
                InfoStatus::parse(line).with_context(|| format!("unexpected bdr status for {name}"))
            }
            _ => bail!("{name} is no longer a bdr device"),
        }
    }

    /// Create `name` with one target and make it live. On failure nothing is left behind.
    pub fn create(
        &self,
        name: &str,
        uuid: &str,
        target: (u64, u64, &str, String),
    ) -> Result<DeviceInfo> {
        let n = name_ref(name)?;
        let u = DmUuid::new(uuid).map_err(|e| anyhow!("invalid DM uuid '{uuid}': {e}"))?;
        check_udev_sync()?;
        self.dm
            .device_create(n, Some(u), DmOptions::default())
            .map_err(|e| {
                if errno_of(&e) == Some(libc::EBUSY) {
                    anyhow!(
                        "a device-mapper device named {name} or with uuid {uuid} already exists"
                    )
                } else {
                    dm_err(format!("cannot create device-mapper device {name}"), e)
                }
            })?;
        let id = DevId::Name(n);
        let (start, len, ty, params) = target;
        let table = vec![(start, len, ty.to_string(), params.clone())];
        if let Err(e) = self.dm.table_load(&id, &table, DmOptions::default()) {
            self.rollback(name);
            return Err(dm_err(
                format!(
                    "the kernel refused the table '{start} {len} {ty} {params}' (see `dmesg` for why)"
                ),
                e,
            ));
        }
        // Resume: a DEV_SUSPEND without the suspend flag makes the loaded table live.
        match self.dm.device_suspend(&id, DmOptions::default()) {
            Ok(info) => Ok(info),
            Err(e) => {
                self.rollback(name);
                Err(dm_err(format!("cannot activate {name}"), e))
            }
        }
    }

    fn rollback(&self, name: &str) {
        if let Err(e) = self.remove(name) {
            tracing::warn!("could not remove half-created device {name}: {e:#}");
        }
    }

    /// Remove a device.
    pub fn remove(&self, name: &str) -> Result<DeviceInfo> {
        let n = name_ref(name)?;
        check_udev_sync()?;
        self.dm
            .device_remove(&DevId::Name(n), DmOptions::default())
            .map_err(|e| {
                if errno_of(&e) == Some(libc::EBUSY) {
                    anyhow!("{name} is busy: something opened it; close it and try again")
                } else {
                    dm_err(format!("cannot remove {name}"), e)
                }
            })
    }
}

/// `/dev/mapper/NAME`.
pub fn mapper_path(name: &str) -> PathBuf {
    Path::new(MAPPER_DIR).join(name)
}

fn node_matches(path: &Path, dev: DevNum) -> bool {
    match fs::metadata(path) {
        Ok(m) => m.file_type().is_block_device() && DevNum::from_dev_t(m.rdev()) == dev,
        Err(_) => false,
    }
}

/// Wait up to `wait` for udev to create `/dev/mapper/NAME`; if it doesn't, create the
/// node ourselves from the device number, as `dmsetup mknodes` does. Returns the path and
/// whether we made the node.
pub fn ensure_node(name: &str, dev: DevNum, wait: Duration) -> Result<(PathBuf, bool)> {
    let path = mapper_path(name);
    let deadline = Instant::now() + wait;
    loop {
        if node_matches(&path, dev) {
            return Ok((path, false));
        }
        if Instant::now() >= deadline {
            break;
        }
        sleep(Duration::from_millis(50));
    }
    tracing::info!("udev did not create {}; creating the node", path.display());
    fs::create_dir_all(MAPPER_DIR).with_context(|| format!("cannot create {MAPPER_DIR}"))?;
    // A stale node or dangling link of the same name (no udev to clean up) is replaced.
    if fs::symlink_metadata(&path).is_ok() {
        fs::remove_file(&path)
            .with_context(|| format!("cannot replace stale {}", path.display()))?;
    }
    nix::sys::stat::mknod(
        &path,
        nix::sys::stat::SFlag::S_IFBLK,
        // root:root 0600, dmsetup's default mode for nodes it makes.
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        dev.to_dev_t(),
    )
    .with_context(|| format!("cannot create device node {} ({dev})", path.display()))?;
    Ok((path, true))
}

/// After removal: wait up to `wait` for udev to drop `/dev/mapper/NAME`, then remove a
/// leftover node of the old device number or a dangling link ourselves.
pub fn cleanup_node(name: &str, dev: DevNum, wait: Duration) {
    let path = mapper_path(name);
    let deadline = Instant::now() + wait;
    while fs::symlink_metadata(&path).is_ok() && Instant::now() < deadline {
        sleep(Duration::from_millis(50));
    }
    let Ok(lmeta) = fs::symlink_metadata(&path) else {
        return;
    };
    let stale = if lmeta.file_type().is_symlink() {
        fs::metadata(&path).is_err()
    } else {
        lmeta.file_type().is_block_device() && DevNum::from_dev_t(lmeta.rdev()) == dev
    };
    if stale {
        match fs::remove_file(&path) {
            Ok(()) => tracing::info!("removed leftover {}", path.display()),
            Err(e) => tracing::warn!("cannot remove leftover {}: {e}", path.display()),
        }
    }
}
