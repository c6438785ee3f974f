//! The few ioctls a cut's suspend window needs, made directly: device-mapper suspend, resume
//! and status by name without waiting for udev (the devicemapper crate waits for udev to
//! process every resume, which would stretch the window), and loop-device setup for a
//! copy-on-write file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::target::DevNum;

const DM_CONTROL: &str = "/dev/mapper/control";
const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;

const DM_SUSPEND_FLAG: u32 = 1 << 1;
const DM_SKIP_LOCKFS_FLAG: u32 = 1 << 10;

/// `struct dm_ioctl` of <linux/dm-ioctl.h> (312 bytes).
#[repr(C)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

const _: () = assert!(std::mem::size_of::<DmIoctl>() == 312);

nix::ioctl_readwrite!(dm_dev_suspend, 0xfd, 6, DmIoctl);
nix::ioctl_readwrite!(dm_dev_status, 0xfd, 7, DmIoctl);

/// An open /dev/mapper/control for the window's ioctls.
pub struct DmControl {
    file: File,
}

impl DmControl {
    pub fn open() -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(DM_CONTROL)?;
        Ok(DmControl { file })
    }

    fn call(&self, name: &str, flags: u32, status: bool) -> io::Result<DmIoctl> {
        if name.len() >= DM_NAME_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "name too long"));
        }
        let mut hdr = DmIoctl {
            version: [4, 0, 0],
            data_size: std::mem::size_of::<DmIoctl>() as u32,
            data_start: std::mem::size_of::<DmIoctl>() as u32,
            target_count: 0,
            open_count: 0,
            flags,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: [0; DM_NAME_LEN],
            uuid: [0; DM_UUID_LEN],
            data: [0; 7],
        };
        hdr.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `hdr` is a valid, fully initialised struct dm_ioctl whose data_size says
        // exactly its own size, so the kernel reads and writes only within it.
        let r = unsafe {
            if status {
                dm_dev_status(self.file.as_raw_fd(), &mut hdr)
            } else {
                dm_dev_suspend(self.file.as_raw_fd(), &mut hdr)
            }
        };
        r.map_err(io::Error::from)?;
        Ok(hdr)
    }

    /// Suspend `name`; with `lockfs`, a filesystem on it is frozen (made clean) first.
    pub fn suspend(&self, name: &str, lockfs: bool) -> io::Result<()> {
        let skip = if lockfs { 0 } else { DM_SKIP_LOCKFS_FLAG };
        self.call(name, DM_SUSPEND_FLAG | skip, false).map(drop)
    }

    /// Resume `name`, making its inactive table live if it has one. Does not wait for udev.
    pub fn resume(&self, name: &str) -> io::Result<()> {
        self.call(name, 0, false).map(drop)
    }

    /// Whether `name` is suspended; `None` if there is no such device.
    pub fn is_suspended(&self, name: &str) -> io::Result<Option<bool>> {
        match self.call(name, 0, true) {
            Ok(h) => Ok(Some(h.flags & DM_SUSPEND_FLAG != 0)),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `struct loop_info64` of <linux/loop.h> (232 bytes).
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const LO_FLAGS_AUTOCLEAR: u32 = 4;

// The loop ioctls predate _IOC encoding: their request numbers are plain constants.
nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);

/// A loop device over a file, detached by the kernel once the last opener closes it.
pub struct LoopDevice {
    pub dev: DevNum,
    /// Held open: the device stays attached while we hold it.
    _file: File,
}

impl LoopDevice {
    /// Attach `backing` (open read-write) to a free loop device.
    pub fn attach(backing: &File, name_hint: &Path) -> io::Result<LoopDevice> {
        let ctl = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")?;
        for _ in 0..16 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
            let n = unsafe { loop_ctl_get_free(ctl.as_raw_fd()) }.map_err(io::Error::from)?;
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    OpenOptions::new().read(true).write(true).open(&path)?
                }
                Err(e) => return Err(e),
            };
            // SAFETY: LOOP_SET_FD takes a file descriptor we own for the call's duration.
            match unsafe { loop_set_fd(file.as_raw_fd(), backing.as_raw_fd() as _) } {
                Ok(_) => {}
                Err(nix::errno::Errno::EBUSY) => continue, // raced with another user
                Err(e) => return Err(e.into()),
            }
            let mut info = LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_AUTOCLEAR,
                file_name: [0; 64],
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            };
            let hint = name_hint.as_os_str().as_encoded_bytes();
            let k = hint.len().min(63);
            info.file_name[..k].copy_from_slice(&hint[..k]);
            // SAFETY: `info` is a valid loop_info64 that outlives the call.
            if let Err(e) = unsafe { loop_set_status64(file.as_raw_fd(), &info) } {
                // SAFETY: undo LOOP_SET_FD on the device we just bound.
                let _ = unsafe { loop_clr_fd(file.as_raw_fd()) };
                return Err(e.into());
            }
            let dev = DevNum::from_dev_t(file.metadata()?.rdev());
            return Ok(LoopDevice { dev, _file: file });
        }
        Err(io::Error::other("no free loop device after 16 tries"))
    }
}
