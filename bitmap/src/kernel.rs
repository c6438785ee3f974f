//! [`KernelDirtyMap`]: a dm-bdr bitmap through the control device.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use roaring::RoaringBitmap;

use crate::abi::{self, BdrIocBits, BdrIocInfo, BdrIocOp, BDR_ABI_VERSION, BDR_ID_LEN};
use crate::words::{self, CHUNK_WORDS};
use crate::{DirtyMap, Error, Generation, Geometry, MapInfo, LOAD_MODULE_HINT};

/// Where the module's misc device appears.
pub const DEFAULT_CONTROL_PATH: &str = "/dev/bdr-control";

/// One bitmap of the loaded dm-bdr module, named by its bitmap id.
///
/// Holds the control device open; all calls are ioctls on it and may be made from any number
/// of threads at once. Reads and loads go in chunks of 64 Ki words (4 Mi regions), so they are
/// atomic per chunk, not over the whole bitmap.
#[derive(Debug)]
pub struct KernelDirtyMap {
    ctl: File,
    path: PathBuf,
    id: String,
    raw_id: [u8; BDR_ID_LEN],
}

type Ioctl<T> = unsafe fn(libc::c_int, T) -> nix::Result<libc::c_int>;

impl KernelDirtyMap {
    /// Opens bitmap `id` through [`DEFAULT_CONTROL_PATH`].
    pub fn open(id: &str) -> Result<Self, Error> {
        Self::open_at(DEFAULT_CONTROL_PATH, id)
    }

    /// Opens bitmap `id` through the control device at `ctl_path`. Checks that the bitmap
    /// exists ([`Error::NotFound`]) and that the module speaks ABI version 1
    /// ([`Error::AbiMismatch`]).
    pub fn open_at(ctl_path: impl AsRef<Path>, id: &str) -> Result<Self, Error> {
        let path = ctl_path.as_ref().to_path_buf();
        let raw_id = encode_id(id)?;
        let ctl = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                // No node, or a stale node without a driver behind it.
                Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
                    Error::NoControlDevice {
                        path: path.clone(),
                        hint: LOAD_MODULE_HINT,
                    }
                }
                Some(libc::EACCES) | Some(libc::EPERM) => Error::io(
                    format!(
                        "open {} (the control device needs root / CAP_SYS_ADMIN)",
                        path.display()
                    ),
                    e,
                ),
                _ => Error::io(format!("open {}", path.display()), e),
            })?;
        let map = KernelDirtyMap {
            ctl,
            path,
            id: id.to_string(),
            raw_id,
        };
        let info = map.info_raw("BDR_IOC_INFO")?;
        if info.abi_version != BDR_ABI_VERSION {
            return Err(Error::AbiMismatch {
                module: info.abi_version,
                ours: BDR_ABI_VERSION,
            });
        }
        Ok(map)
    }

    /// The bitmap id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The control device path.
    pub fn control_path(&self) -> &Path {
        &self.path
    }

    fn info_raw(&self, op: &str) -> Result<BdrIocInfo, Error> {
        let mut info = BdrIocInfo {
            id: self.raw_id,
            ..BdrIocInfo::default()
        };
        // SAFETY: `self.ctl` is an open file; `info` is a valid, exclusively borrowed
        // `struct bdr_ioc_info` (layout pinned by abi tests) that outlives the call. On a
        // wrong device the request number (which encodes the size) makes the driver reject it.
        retry(|| unsafe { abi::bdr_ioc_info(self.ctl.as_raw_fd(), &mut info) })
            .map_err(|e| self.error(op, e, None))?;
        Ok(info)
    }

    /// Info, checked to be of generation `g`.
    fn info_of(&self, g: Generation) -> Result<MapInfo, Error> {
        let info = self.info()?;
        if info.generation != g {
            return Err(Error::Stale {
                id: self.id.clone(),
                expected: g,
                found: Some(info.generation),
            });
        }
        Ok(info)
    }

    fn op(&self, name: &str, call: Ioctl<*mut BdrIocOp>, g: Generation) -> Result<u64, Error> {
        let mut op = BdrIocOp {
            id: self.raw_id,
            generation: g.0,
            frozen_regions: 0,
        };
        // SAFETY: `call` is one of the abi ioctl wrappers taking `struct bdr_ioc_op`; `op` is a
        // valid, exclusively borrowed instance that outlives the call; `self.ctl` is open.
        retry(|| unsafe { call(self.ctl.as_raw_fd(), &mut op) })
            .map_err(|e| self.error(name, e, Some(g)))?;
        Ok(op.frozen_regions)
    }

    fn read(
        &self,
        name: &str,
        call: Ioctl<*const BdrIocBits>,
        g: Generation,
    ) -> Result<RoaringBitmap, Error> {
        let geometry = self.info_of(g)?.geometry;
        let total = geometry.nr_words();
        let mut out = RoaringBitmap::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut start = 0;
        while start < total {
            let n = CHUNK_WORDS.min(total - start);
            buf.clear();
            buf.resize((n * 8) as usize, 0);
            let bits = BdrIocBits {
                id: self.raw_id,
                generation: g.0,
                start_word: start,
                nr_words: n,
                buf: buf.as_mut_ptr() as usize as u64,
            };
            // SAFETY: `call` is READ_FROZEN or READ_ACTIVE, which read `bits` and write at
            // most `bits.nr_words` words to `bits.buf`; `buf` is exactly that long, is not
            // otherwise borrowed and lives past the call; `self.ctl` is open.
            retry(|| unsafe { call(self.ctl.as_raw_fd(), &bits) })
                .map_err(|e| self.error(name, e, Some(g)))?;
            out |= words::bytes_to_bitmap(start, &buf);
            start += n;
        }
        // The ABI promises these bits are 0; never hand out regions past the device.
        words::clear_tail(&mut out, geometry.nr_regions);
        Ok(out)
    }

    /// Maps an ioctl failure to an [`Error`]; `expected` is the generation the call named.
    fn error(&self, op: &str, e: Errno, expected: Option<Generation>) -> Error {
        match (e, expected) {
            (Errno::ENOENT, _) => Error::NotFound {
                id: self.id.clone(),
            },
            (Errno::ESTALE, Some(expected)) => Error::Stale {
                id: self.id.clone(),
                expected,
                found: self
                    .info_raw("BDR_IOC_INFO")
                    .ok()
                    .map(|i| Generation(i.generation)),
            },
            (Errno::ENOTTY, _) => Error::io(
                format!(
                    "{op} on {}: the device does not know this request; is it the dm-bdr \
                     control device, and does the module speak ABI version {BDR_ABI_VERSION}?",
                    self.path.display()
                ),
                io::Error::from(e),
            ),
            _ => Error::io(
                format!("{op} on bitmap {:?} via {}", self.id, self.path.display()),
                io::Error::from(e),
            ),
        }
    }
}

impl DirtyMap for KernelDirtyMap {
    fn info(&self) -> Result<MapInfo, Error> {
        let i = self.info_raw("BDR_IOC_INFO")?;
        Ok(MapInfo {
            id: self.id.clone(),
            geometry: Geometry {
                region_sectors: i.region_sectors,
                dev_sectors: i.dev_sectors,
                nr_regions: i.nr_regions,
            },
            generation: Generation(i.generation),
            writes: i.writes,
            freezes: i.freezes,
            active_regions: i.active_regions,
            frozen_regions: i.frozen_regions,
            users: i.users,
        })
    }

    fn freeze(&self, g: Generation) -> Result<u64, Error> {
        self.op("BDR_IOC_FREEZE", abi::bdr_ioc_freeze, g)
    }

    fn read_frozen(&self, g: Generation) -> Result<RoaringBitmap, Error> {
        self.read("BDR_IOC_READ_FROZEN", abi::bdr_ioc_read_frozen, g)
    }

    fn read_active(&self, g: Generation) -> Result<RoaringBitmap, Error> {
        self.read("BDR_IOC_READ_ACTIVE", abi::bdr_ioc_read_active, g)
    }

    fn ack(&self, g: Generation) -> Result<(), Error> {
        self.op("BDR_IOC_ACK", abi::bdr_ioc_ack, g).map(drop)
    }

    fn merge_back(&self, g: Generation) -> Result<(), Error> {
        self.op("BDR_IOC_MERGE", abi::bdr_ioc_merge, g).map(drop)
    }

    fn load(&self, g: Generation, regions: &RoaringBitmap) -> Result<(), Error> {
        let geometry = self.info_of(g)?.geometry;
        words::check_range(regions, geometry.nr_regions)?;
        words::for_each_chunk(regions, geometry.nr_words(), CHUNK_WORDS, |start, bytes| {
            let bits = BdrIocBits {
                id: self.raw_id,
                generation: g.0,
                start_word: start,
                nr_words: bytes.len() as u64 / 8,
                buf: bytes.as_ptr() as usize as u64,
            };
            // SAFETY: LOAD only reads `bits` and `bits.nr_words` words from `bits.buf`,
            // which points at `bytes`, exactly that long and alive for the call.
            retry(|| unsafe { abi::bdr_ioc_load(self.ctl.as_raw_fd(), &bits) })
                .map(drop)
                .map_err(|e| self.error("BDR_IOC_LOAD", e, Some(g)))
        })
    }
}

/// Repeats a call interrupted by a signal.
fn retry(mut f: impl FnMut() -> nix::Result<libc::c_int>) -> nix::Result<libc::c_int> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// `id` as the NUL-terminated `char id[BDR_ID_LEN]` of the ABI.
fn encode_id(id: &str) -> Result<[u8; BDR_ID_LEN], Error> {
    let invalid = |reason: &str| Error::InvalidId {
        id: id.to_string(),
        reason: reason.to_string(),
    };
    if id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if id.len() >= BDR_ID_LEN {
        return Err(invalid("it is longer than 63 bytes"));
    }
    if id.as_bytes().contains(&0) {
        return Err(invalid("it contains a NUL byte"));
    }
    let mut raw = [0u8; BDR_ID_LEN];
    raw[..id.len()].copy_from_slice(id.as_bytes());
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_encoded_nul_terminated() {
        let raw = encode_id("vol0").unwrap();
        assert_eq!(&raw[..5], b"vol0\0");
        assert!(encode_id(&"x".repeat(63)).is_ok());
        assert!(matches!(
            encode_id(&"x".repeat(64)),
            Err(Error::InvalidId { .. })
        ));
        assert!(matches!(encode_id(""), Err(Error::InvalidId { .. })));
        assert!(matches!(encode_id("a\0b"), Err(Error::InvalidId { .. })));
    }

    #[test]
    fn missing_control_device_says_load_the_module() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bdr-control");
        let e = KernelDirtyMap::open_at(&path, "vol0").unwrap_err();
        assert!(
            matches!(&e, Error::NoControlDevice { path: p, .. } if *p == path),
            "{e:?}"
        );
        assert!(e.to_string().contains("modprobe dm-bdr"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_the_control_device_is_rejected() {
        // A regular file answers ENOTTY to the ioctl.
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = KernelDirtyMap::open_at(f.path(), "vol0").unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("dm-bdr control device"), "{e}");
    }
}
