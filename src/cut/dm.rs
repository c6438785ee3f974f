//! Cuts of a real bdr device: suspend, freeze the bitmap, activate a dm-snapshot, resume.
//!
//! Between cuts the device is one layer, `NAME: bdr LOWER`. For the life of a cut:
//!
//! ```text
//!   NAME:           bdr NAME-bdr-origin          (same bitmap id: every bit is kept)
//!   NAME-bdr-origin: snapshot-origin LOWER       (copies old data out before writes)
//!   NAME-bdr-snap:   snapshot LOWER COW N 8       (the cut's image, read-only)
//! ```
//!
//! Everything that can be prepared is prepared before the window: both helper devices are
//! created, NAME's next table and the snapshot's table are loaded (inactive). The window is
//! then four ioctls: suspend NAME (lockfs: a mounted filesystem is frozen clean), freeze the
//! bitmap, resume the snapshot (activates it), resume NAME (its new table goes live). The
//! bitmap's frozen set and the snapshot therefore describe the same instant. A guard process
//! resumes NAME if the daemon dies inside the window; leftovers of a dead daemon (helper
//! devices, NAME still over the origin, frozen bits) are undone by [`DmCutSource::open`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bdr_bitmap::{DirtyMap, Generation, Geometry, KernelDirtyMap, MapInfo, RoaringBitmap};
use bdr_sync::ship::CutImage;
use devicemapper::{DevId, DmName, DmOptions, DM};

use super::ioctl::{DmControl, LoopDevice};
use super::{CowUsage, Cut, CutSource, PrecopyPass};
use crate::guard::Guard;
use crate::target::{DevNum, TableParams, TARGET_TYPE};

/// dm-snapshot chunk size in sectors: 4 KiB, the smallest copy-out per first write.
const SNAP_CHUNK_SECTORS: u32 = 8;

/// Where a cut's copy-on-write data goes.
#[derive(Clone, Debug)]
pub enum CowStore {
    /// A sparse file of this many bytes in the directory, through a loop device.
    Dir { dir: PathBuf, bytes: u64 },
    /// A block device used whole.
    Device(PathBuf),
}

/// The COW device, set up once per daemon.
enum Cow {
    /// The file's space is given back after every cut.
    File {
        file: File,
        dev: LoopDevice,
    },
    Device {
        _file: File,
        dev: DevNum,
    },
}

impl Cow {
    fn dev(&self) -> DevNum {
        match self {
            Cow::File { dev, .. } => dev.dev,
            Cow::Device { dev, .. } => *dev,
        }
    }

    fn open(store: &CowStore, name: &str) -> Result<Cow> {
        match store {
            CowStore::Dir { dir, bytes } => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create COW directory {}", dir.display()))?;
                let path = dir.join(format!("{name}.cow"));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("cannot create COW file {}", path.display()))?;
                file.set_len(*bytes)
                    .with_context(|| format!("cannot size COW file {}", path.display()))?;
                if !std::path::Path::new("/dev/loop-control").exists() {
                    // Like losetup: the loop driver may be a module nobody loaded yet.
                    let _ = std::process::Command::new("modprobe").arg("loop").status();
                }
                // The loop device keeps the file; its name can go now.
                let dev = LoopDevice::attach(&file, &path).with_context(|| {
                    format!(
                        "cannot attach {} to a loop device (is the loop module loaded? \
                         modprobe loop)",
                        path.display()
                    )
                })?;
                let _ = std::fs::remove_file(&path);
                Ok(Cow::File { file, dev })
            }
            CowStore::Device(path) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_EXCL)
                    .open(path)
                    .with_context(|| {
                        format!("cannot open COW device {} exclusively", path.display())
                    })?;
                let meta = file.metadata()?;
                if !std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
                    bail!(
                        "COW store {} is not a block device or a directory",
                        path.display()
                    );
                }
                let dev = DevNum::from_dev_t(meta.rdev());
                Ok(Cow::Device { _file: file, dev })
            }
        }
    }

    /// Give the file's space back after a cut.
    fn trim(&self) {
        if let Cow::File { file, .. } = self {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0) as libc::off_t;
            // SAFETY: fallocate on a file descriptor we own; punching a hole only frees blocks.
            unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    len,
                );
            }
        }
    }
}

/// The snapshot device of a live cut, read with O_DIRECT.
struct SnapImage {
    file: File,
    len: u64,
}

impl CutImage for SnapImage {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, off)
    }
}

/// Cuts of the bdr device `/dev/mapper/NAME`.
pub struct DmCutSource {
    dm: DM,
    ctl: DmControl,
    name: String,
    origin_name: String,
    snap_name: String,
    lower: DevNum,
    len_sectors: u64,
    params: TableParams,
    map: KernelDirtyMap,
    cow: Cow,
    guard: Guard,
    live: bool,
    /// Pre-copy passes done since the last cut ended.
    passes: u32,
}

fn dm_name(name: &str) -> Result<&DmName> {
    DmName::new(name).map_err(|e| anyhow!("invalid device-mapper name {name}: {e}"))
}

impl DmCutSource {
    /// Take charge of the bdr device NAME: undo what a dead daemon left, set up the COW store
    /// and the suspend guard.
    pub fn open(name: &str, store: CowStore) -> Result<Self> {
        let dm = DM::new().map_err(|e| anyhow!("device-mapper not available: {e}"))?;
        let ctl = DmControl::open().context("cannot open /dev/mapper/control")?;
        let origin_name = format!("{name}-bdr-origin");
        let snap_name = format!("{name}-bdr-snap");
        let (len_sectors, params) = bdr_table(&dm, name)?;
        let map = KernelDirtyMap::open(&params.bitmap_id)
            .with_context(|| format!("dirty bitmap of {name}"))?;
        let guard = Guard::spawn(&[snap_name.clone(), name.to_string()])?;
        let cow = Cow::open(&store, name)?;
        let _held = SignalsHeld::new();
        let mut src = DmCutSource {
            lower: params.lower,
            dm,
            ctl,
            name: name.to_string(),
            origin_name,
            snap_name,
            len_sectors,
            params,
            map,
            cow,
            guard,
            live: false,
            passes: 0,
        };
        src.recover()?;
        Ok(src)
    }

    /// Undo a cut that a dead daemon left behind: NAME back onto the real lower device,
    /// helper devices removed, frozen bits merged back.
    fn recover(&mut self) -> Result<()> {
        if let Some(origin) = device_num(&self.dm, &self.origin_name)? {
            if self.params.lower == origin {
                let (_, ot) = table_of(&self.dm, &self.origin_name)?;
                let real = ot
                    .split_whitespace()
                    .next()
                    .and_then(|s| DevNum::parse(s).ok())
                    .with_context(|| format!("unexpected table of {}: {ot}", self.origin_name))?;
                tracing::warn!(device = %self.name, "a previous cut was left live; undoing it");
                self.lower = real;
                self.params.lower = real;
            }
        }
        let info = self.map.info()?;
        if info.frozen_regions > 0 {
            tracing::warn!(
                device = %self.name,
                regions = info.frozen_regions,
                "frozen regions of an unfinished cut: merging them back"
            );
            self.map.merge_back(info.generation)?;
        }
        self.release()
    }

    fn table_line(&self, lower: DevNum) -> Vec<(u64, u64, String, String)> {
        vec![(
            0,
            self.len_sectors,
            TARGET_TYPE.to_string(),
            format!(
                "{} {} {}",
                lower, self.params.region_sectors, self.params.bitmap_id
            ),
        )]
    }

    /// Put NAME back onto the lower device and remove the helpers. Idempotent.
    fn release(&mut self) -> Result<()> {
        let (_, current) = bdr_table(&self.dm, &self.name)?;
        if current.lower != self.lower {
            let id = DevId::Name(dm_name(&self.name)?);
            self.dm
                .table_load(&id, &self.table_line(self.lower), DmOptions::default())
                .map_err(|e| {
                    anyhow!(
                        "cannot load the table of {} back onto its device: {e}",
                        self.name
                    )
                })?;
            let _urgent = crate::priority::Urgent::new();
            self.guard.arm()?;
            let r = self
                .ctl
                .suspend(&self.name, false)
                .and_then(|()| self.ctl.resume(&self.name));
            self.guard.disarm()?;
            r.with_context(|| format!("cannot switch {} back onto its device", self.name))?;
        }
        for helper in [self.snap_name.clone(), self.origin_name.clone()] {
            remove_if_present(&self.dm, &helper)?;
        }
        self.cow.trim();
        self.live = false;
        Ok(())
    }

    /// Create the helper devices and load the inactive tables: all the work that can happen
    /// before the window.
    ///
    /// The snapshot's table is loaded first: its constructor registers it (inactive) with the
    /// lower device, and the snapshot-origin computes, when it is resumed, the chunk size it
    /// splits writes at from the snapshots registered then. An origin resumed before its
    /// snapshot exists would not split, and a large write would copy out only its first
    /// chunk: the image would be corrupt.
    fn prepare(&mut self) -> Result<()> {
        let len = self.len_sectors;
        let lower = self.lower;
        let snap = dm_name(&self.snap_name)?;
        self.dm
            .device_create(snap, None, DmOptions::default())
            .map_err(|e| anyhow!("cannot create {}: {e}", self.snap_name))?;
        let table = vec![(
            0,
            len,
            "snapshot".to_string(),
            format!("{lower} {} N {SNAP_CHUNK_SECTORS}", self.cow.dev()),
        )];
        self.dm
            .table_load(&DevId::Name(snap), &table, DmOptions::default())
            .map_err(|e| anyhow!("cannot load the snapshot table of {}: {e}", self.snap_name))?;
        create_live(
            &self.dm,
            &self.origin_name,
            (0, len, "snapshot-origin".into(), lower.to_string()),
        )?;
        let origin = device_num(&self.dm, &self.origin_name)?
            .with_context(|| format!("{} vanished", self.origin_name))?;
        let id = DevId::Name(dm_name(&self.name)?);
        self.dm
            .table_load(&id, &self.table_line(origin), DmOptions::default())
            .map_err(|e| anyhow!("cannot load {} over {}: {e}", self.name, self.origin_name))?;
        Ok(())
    }

    /// The window: suspend, (after pre-copy: read the residue,) freeze, activate the
    /// snapshot, resume. Returns its length and the residue.
    fn window(
        &mut self,
        generation: Generation,
        residue: bool,
    ) -> Result<(Duration, Option<RoaringBitmap>)> {
        let _urgent = crate::priority::Urgent::new();
        self.guard.arm()?;
        let t0 = Instant::now();
        let suspended = self.ctl.suspend(&self.name, true);
        let mut res = None;
        let frozen = suspended
            .as_ref()
            .map_err(|e| anyhow!("cannot suspend {}: {e}", self.name))
            .and_then(|()| {
                if residue {
                    // Suspended: no write is in flight, the active set is exactly what was
                    // written since the last pre-copy pass.
                    res = Some(self.map.read_active(generation)?);
                }
                Ok(self.map.freeze(generation)?)
            });
        let snap = frozen.as_ref().map_err(|e| anyhow!("{e:#}")).and_then(|_| {
            self.ctl
                .resume(&self.snap_name)
                .map_err(|e| anyhow!("cannot activate {}: {e}", self.snap_name))
        });
        let stolen = snap.is_ok() && self.window_stolen();
        // Resume whatever happened above: the primary must never stay suspended.
        let resumed = self.ctl.resume(&self.name);
        let elapsed = t0.elapsed();
        self.guard.disarm()?;
        resumed.with_context(|| format!("cannot resume {}", self.name))?;
        snap?;
        if stolen {
            return Err(self.stolen_error(elapsed));
        }
        Ok((elapsed, res))
    }

    /// Whether the guard resumed the device while we held it suspended (we were stopped
    /// past its deadline): writes then ran inside what should have been one instant.
    fn window_stolen(&self) -> bool {
        !matches!(self.ctl.is_suspended(&self.name), Ok(Some(true)))
    }

    fn stolen_error(&self, held: Duration) -> anyhow::Error {
        anyhow!(
            "the suspend guard resumed {} after {:.1} s because this process was stopped or \
             hung inside the suspend window: the cut is void (its regions are merged back)",
            self.name,
            held.as_secs_f64()
        )
    }

    /// A later pre-copy pass: suspend without lockfs (writes in flight complete and mark),
    /// read the active set, freeze it, resume.
    fn separate(&mut self, generation: Generation) -> Result<(Duration, RoaringBitmap)> {
        let _urgent = crate::priority::Urgent::new();
        self.guard.arm()?;
        let t0 = Instant::now();
        let got = self
            .ctl
            .suspend(&self.name, false)
            .map_err(|e| anyhow!("cannot suspend {}: {e}", self.name))
            .and_then(|()| {
                let r = self.map.read_active(generation)?;
                self.map.freeze(generation)?;
                Ok(r)
            });
        let stolen = got.is_ok() && self.window_stolen();
        let resumed = self.ctl.resume(&self.name);
        let elapsed = t0.elapsed();
        self.guard.disarm()?;
        resumed.with_context(|| format!("cannot resume {}", self.name))?;
        let got = got?;
        if stolen {
            // A write completing between the read and the freeze would be frozen without
            // being copied: the pass is void (the caller merges every frozen region back).
            return Err(self.stolen_error(elapsed));
        }
        Ok((elapsed, got))
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP on this thread while it lives. Device-mapper steps wait
/// for udev in semop(2), which a signal handler interrupts (EINTR) even with SA_RESTART: a
/// Ctrl-C must reach the daemon's signal handling on another thread, or after the step, but
/// never break a step of a cut halfway.
struct SignalsHeld {
    old: libc::sigset_t,
}

impl SignalsHeld {
    fn new() -> SignalsHeld {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset/sigaddset before use;
        // pthread_sigmask only changes this thread's mask and writes the old one to `old`.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            SignalsHeld { old }
        }
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new` on the same thread.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

impl CutSource for DmCutSource {
    fn info(&self) -> Result<MapInfo> {
        Ok(self.map.info()?)
    }

    fn take(&mut self) -> Result<Cut> {
        let _held = SignalsHeld::new();
        if self.live {
            bail!("a cut of {} is already live", self.name);
        }
        let info = self.map.info()?;
        let geometry: Geometry = info.geometry;
        if let Err(e) = self.prepare() {
            let _ = self.release();
            return Err(e);
        }
        sync_mounted_fs(self.name_dev()?);
        self.live = true;
        let precopied = self.passes > 0;
        self.passes = 0;
        let (suspend, residue) = match self.window(info.generation, precopied) {
            Ok(d) => d,
            Err(e) => {
                let _ = self.map.merge_back(info.generation);
                let _ = self.release();
                return Err(e);
            }
        };
        let image = match self.open_snapshot() {
            Ok(i) => i,
            Err(e) => {
                let _ = self.map.merge_back(info.generation);
                let _ = self.release();
                return Err(e);
            }
        };
        let regions = match self.map.read_frozen(info.generation) {
            Ok(r) => r,
            Err(e) => {
                let _ = self.map.merge_back(info.generation);
                let _ = self.release();
                return Err(e.into());
            }
        };
        tracing::info!(
            device = %self.name,
            regions = regions.len(),
            suspend_ms = suspend.as_secs_f64() * 1e3,
            "cut taken"
        );
        Ok(Cut {
            image,
            regions,
            geometry,
            generation: info.generation,
            suspend,
            residue,
        })
    }

    fn commit(&mut self, cut: Cut) -> Result<()> {
        let _held = SignalsHeld::new();
        let acked = self.map.ack(cut.generation);
        drop(cut);
        self.release()?;
        Ok(acked?)
    }

    fn abort(&mut self, cut: Cut) -> Result<()> {
        let _held = SignalsHeld::new();
        let merged = self.map.merge_back(cut.generation);
        drop(cut);
        self.release()?;
        Ok(merged?)
    }

    fn release_image(&mut self, cut: &mut Cut) -> Result<()> {
        let _held = SignalsHeld::new();
        if self.cow_usage().is_some_and(|c| c.invalid) {
            bail!(
                "the copy-on-write store overflowed while the cut was read: its image is \
                 invalid; use a larger --cow-size"
            );
        }
        // Our descriptor of the snapshot must be closed before the device goes.
        cut.image = Arc::new(super::Released);
        self.release()
    }

    fn precopy_pass(&mut self) -> Result<PrecopyPass> {
        let _held = SignalsHeld::new();
        if self.live {
            bail!("pre-copy of {} while a cut is live", self.name);
        }
        let info = self.map.info()?;
        let g = info.generation;
        let (suspend, regions) = if self.passes == 0 {
            (
                Duration::ZERO,
                super::first_precopy_pass(&self.map, &info, &self.name)?,
            )
        } else {
            self.separate(g)?
        };
        self.passes += 1;
        Ok(PrecopyPass {
            regions,
            geometry: info.geometry,
            generation: g,
            suspend,
        })
    }

    fn precopy_pending(&self) -> Result<u64> {
        Ok(self.map.info()?.active_regions)
    }

    fn live_image(&self) -> Result<Arc<dyn CutImage>> {
        let path = crate::dm::mapper_path(&self.name);
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .with_context(|| format!("cannot open {} for pre-copy", path.display()))?;
        Ok(Arc::new(SnapImage {
            file,
            len: self.len_sectors * 512,
        }))
    }

    fn abort_precopy(&mut self) -> Result<()> {
        if self.passes == 0 {
            return Ok(());
        }
        let _held = SignalsHeld::new();
        self.passes = 0;
        let g = self.map.info()?.generation;
        Ok(self.map.merge_back(g)?)
    }

    fn cow_usage(&self) -> Option<CowUsage> {
        if !self.live {
            return None;
        }
        let (_, status) = status_of(&self.dm, &self.snap_name).ok()?;
        parse_snapshot_status(&status)
    }
}

impl DmCutSource {
    fn name_dev(&self) -> Result<DevNum> {
        device_num(&self.dm, &self.name)?.with_context(|| format!("{} vanished", self.name))
    }

    fn open_snapshot(&self) -> Result<Arc<dyn CutImage>> {
        let dev = device_num(&self.dm, &self.snap_name)?
            .with_context(|| format!("{} vanished", self.snap_name))?;
        let (path, _) = crate::dm::ensure_node(&self.snap_name, dev, Duration::from_secs(2))?;
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .with_context(|| format!("cannot open the cut's snapshot {}", path.display()))?;
        Ok(Arc::new(SnapImage {
            file,
            len: self.len_sectors * 512,
        }))
    }
}

/// `used/total` sectors of a dm-snapshot status line, or its Invalid/Overflow state.
pub fn parse_snapshot_status(status: &str) -> Option<CowUsage> {
    let first = status.split_whitespace().next()?;
    if first == "Invalid" || first == "Overflow" {
        return Some(CowUsage {
            used_bytes: 0,
            total_bytes: 0,
            invalid: true,
        });
    }
    let (used, total) = first.split_once('/')?;
    Some(CowUsage {
        used_bytes: used.parse::<u64>().ok()? * 512,
        total_bytes: total.parse::<u64>().ok()? * 512,
        invalid: false,
    })
}

/// Flush a filesystem mounted on the device before the window, so that the lockfs freeze
/// inside it has little left to write.
fn sync_mounted_fs(dev: DevNum) {
    let Ok(mounts) = crate::mountinfo::read() else {
        return;
    };
    for m in crate::mountinfo::mounts_of(&mounts, &[dev]) {
        if let Ok(dir) = File::open(&m.mount_point) {
            // SAFETY: syncfs on a descriptor we own.
            unsafe { libc::syncfs(dir.as_raw_fd()) };
        }
    }
}

fn device_num(dm: &DM, name: &str) -> Result<Option<DevNum>> {
    match dm.device_info(&DevId::Name(dm_name(name)?)) {
        Ok(info) => {
            let d = info.device();
            Ok(Some(DevNum::new(d.major, d.minor)))
        }
        Err(e) if crate::dm::errno_of(&e) == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(anyhow!("cannot query {name}: {e}")),
    }
}

/// The single target of `name`: its length, type and table (`table`) or status parameters.
fn one_target(dm: &DM, name: &str, table: bool) -> Result<(u64, String, String)> {
    let flags = if table {
        devicemapper::DmFlags::DM_STATUS_TABLE
    } else {
        devicemapper::DmFlags::empty()
    };
    let (_, t) = dm
        .table_status(
            &DevId::Name(dm_name(name)?),
            DmOptions::default().set_flags(flags),
        )
        .map_err(|e| anyhow!("cannot read the table or status of {name}: {e}"))?;
    match t.as_slice() {
        [(_, len, ty, params)] => Ok((*len, ty.clone(), params.clone())),
        _ => bail!("{name} does not have exactly one target"),
    }
}

fn table_of(dm: &DM, name: &str) -> Result<(u64, String)> {
    one_target(dm, name, true).map(|(len, _, p)| (len, p))
}

fn status_of(dm: &DM, name: &str) -> Result<(u64, String)> {
    one_target(dm, name, false).map(|(len, _, p)| (len, p))
}

fn bdr_table(dm: &DM, name: &str) -> Result<(u64, TableParams)> {
    match one_target(dm, name, true) {
        Ok((len, ty, params)) if ty == TARGET_TYPE => Ok((len, TableParams::parse(&params)?)),
        Ok(_) => bail!("{name} is not a bdr device; attach it first with `bdr attach`"),
        Err(e) => Err(e),
    }
}

fn create_live(dm: &DM, name: &str, target: (u64, u64, String, String)) -> Result<()> {
    let n = dm_name(name)?;
    remove_if_present(dm, name)?;
    dm.device_create(n, None, DmOptions::default())
        .map_err(|e| anyhow!("cannot create {name}: {e}"))?;
    let id = DevId::Name(n);
    if let Err(e) = dm.table_load(&id, &[target], DmOptions::default()) {
        let _ = dm.device_remove(&id, DmOptions::default());
        bail!("cannot load the table of {name}: {e}");
    }
    let ctl = DmControl::open()?;
    if let Err(e) = ctl.resume(name) {
        let _ = dm.device_remove(&id, DmOptions::default());
        bail!("cannot activate {name}: {e}");
    }
    Ok(())
}

fn remove_if_present(dm: &DM, name: &str) -> Result<()> {
    let n = dm_name(name)?;
    let id = DevId::Name(n);
    for attempt in 0..50 {
        match dm.device_remove(&id, DmOptions::default()) {
            Ok(_) => return Ok(()),
            Err(e) if crate::dm::errno_of(&e) == Some(libc::ENXIO) => return Ok(()),
            // udev may still be probing the device it just saw appear.
            Err(e) if crate::dm::errno_of(&e) == Some(libc::EBUSY) && attempt < 49 => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => bail!("cannot remove {name}: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_status_lines() {
        assert_eq!(
            parse_snapshot_status("16/2097152 16"),
            Some(CowUsage {
                used_bytes: 16 * 512,
                total_bytes: 2097152 * 512,
                invalid: false
            })
        );
        assert!(parse_snapshot_status("Invalid").unwrap().invalid);
        assert!(parse_snapshot_status("Overflow").unwrap().invalid);
        assert_eq!(parse_snapshot_status(""), None);
        assert_eq!(parse_snapshot_status("junk"), None);
    }
}
