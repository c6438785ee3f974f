//! The conformance suite against the real dm-bdr module, through [`KernelDirtyMap`].
//!
//! Every test is `#[ignore]`d: they need the module loaded and a bdr device, which only the
//! VM lab has. There, with a bdr device whose data may be overwritten:
//!
//! ```text
//! BDR_TEST_DEV=/dev/mapper/NAME BDR_TEST_ID=BITMAP_ID \
//!     cargo test -p bdr-bitmap --test conformance_kernel -- --ignored
//! ```
//!
//! (or run the built test binary with `--ignored`). Optional: `BDR_TEST_CONTROL` (control
//! device, default `/dev/bdr-control`), `BDR_CONFORMANCE_SECS` (length of the concurrency
//! case, default 2). The device needs at least 20 regions and a partial last region, e.g.
//! 64 KiB regions (128 sectors) on a device of 10 MiB + 4 KiB (20488 sectors). The tests
//! serialize themselves; they write, discard and zero the device's data and assume nothing
//! else writes to it or uses its bitmap meanwhile.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::{Mutex, MutexGuard};

use bdr_bitmap::conformance::Writer;
use bdr_bitmap::{DirtyMap, Error, Geometry, KernelDirtyMap, DEFAULT_CONTROL_PATH};

// <linux/fs.h>: BLKSSZGET _IO(0x12,104), BLKGETSIZE64 _IOR(0x12,114,size_t),
// BLKDISCARD _IO(0x12,119), BLKZEROOUT _IO(0x12,127). The last two take a u64[2] of
// {start, length} in bytes, both multiples of the logical block size.
nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);
nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
nix::ioctl_write_ptr_bad!(blkdiscard, 0x1277, [u64; 2]);
nix::ioctl_write_ptr_bad!(blkzeroout, 0x127f, [u64; 2]);

const MEM_ALIGN: usize = 4096;

/// Real I/O on the bdr device: O_DIRECT writes rounded out to the logical block size,
/// BLKDISCARD, BLKZEROOUT, fsync.
struct DevWriter {
    path: String,
    file: File,
    lbs: u64,
    geometry: Geometry,
}

impl DevWriter {
    fn open(path: &str, geometry: Geometry) -> DevWriter {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .unwrap_or_else(|e| panic!("open {path} O_DIRECT: {e}"));
        let mut lbs: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer, which points at `lbs`.
        unsafe { blksszget(file.as_raw_fd(), &mut lbs) }
            .unwrap_or_else(|e| panic!("BLKSSZGET on {path}: {e} (is it a block device?)"));
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
        unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }
            .unwrap_or_else(|e| panic!("BLKGETSIZE64 on {path}: {e}"));
        assert_eq!(
            size,
            geometry.dev_bytes(),
            "{path} is {size} bytes but the bitmap says {} sectors: is BDR_TEST_ID the \
             bitmap of BDR_TEST_DEV?",
            geometry.dev_sectors
        );
        assert!(lbs >= 512, "{path}: odd logical block size {lbs}");
        DevWriter {
            path: path.to_string(),
            file,
            lbs: lbs as u64,
            geometry,
        }
    }

    fn range_ioctl(
        &self,
        name: &str,
        call: unsafe fn(libc::c_int, *const [u64; 2]) -> nix::Result<libc::c_int>,
        off: u64,
        len: u64,
    ) {
        let r = self.io_range(off, len);
        if r.is_empty() {
            return;
        }
        let arg = [r.start, r.end - r.start];
        // SAFETY: `call` is BLKDISCARD or BLKZEROOUT, which only read the u64[2] that `arg`
        // provides for the duration of the call; the fd is our open block device.
        unsafe { call(self.file.as_raw_fd(), &arg) }.unwrap_or_else(|e| {
            panic!(
                "{name} {}+{} on {}: {e} (does the lower device support it?)",
                arg[0], arg[1], self.path
            )
        });
    }
}

impl Writer for DevWriter {
    fn write(&self, byte_off: u64, byte_len: u64) {
        let r = self.io_range(byte_off, byte_len);
        let len = (r.end - r.start) as usize;
        if len == 0 {
            return;
        }
        // O_DIRECT: buffer address, offset and length aligned.
        let mut mem = vec![0u8; len + MEM_ALIGN];
        let pad = mem.as_ptr().align_offset(MEM_ALIGN);
        let buf = &mut mem[pad..pad + len];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (r.start as usize + i) as u8 | 1;
        }
        self.file
            .write_all_at(buf, r.start)
            .unwrap_or_else(|e| panic!("pwrite {}+{len} on {}: {e}", r.start, self.path));
    }

    fn discard(&self, byte_off: u64, byte_len: u64) {
        self.range_ioctl("BLKDISCARD", blkdiscard, byte_off, byte_len)
    }

    fn write_zeroes(&self, byte_off: u64, byte_len: u64) {
        self.range_ioctl("BLKZEROOUT", blkzeroout, byte_off, byte_len)
    }

    fn flush(&self) {
        self.file
            .sync_all()
            .unwrap_or_else(|e| panic!("fsync {}: {e}", self.path));
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Rounded out to the logical block size.
    fn io_range(&self, byte_off: u64, byte_len: u64) -> Range<u64> {
        if byte_len == 0 {
            return byte_off..byte_off;
        }
        let start = byte_off / self.lbs * self.lbs;
        let end = (byte_off + byte_len).div_ceil(self.lbs) * self.lbs;
        assert!(
            end <= self.geometry.dev_bytes(),
            "I/O {byte_off}+{byte_len} rounded to {start}..{end} ends past the device"
        );
        start..end
    }
}

/// The tests share one device: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the dm-bdr module and a bdr device; run them \
             in the VM lab with BDR_TEST_DEV=/dev/mapper/NAME BDR_TEST_ID=BITMAP_ID ... \
             -- --ignored"
        )
    })
}

fn control() -> String {
    std::env::var("BDR_TEST_CONTROL").unwrap_or_else(|_| DEFAULT_CONTROL_PATH.to_string())
}

fn setup() -> (MutexGuard<'static, ()>, KernelDirtyMap, DevWriter) {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dev, id) = (env("BDR_TEST_DEV"), env("BDR_TEST_ID"));
    let map = KernelDirtyMap::open_at(control(), &id)
        .unwrap_or_else(|e| panic!("KernelDirtyMap::open_at({}, {id}): {e}", control()));
    let geometry = map.info().expect("info").geometry;
    let w = DevWriter::open(&dev, geometry);
    (guard, map, w)
}

bdr_bitmap::conformance_tests!(
    #[ignore = "needs dm-bdr: run in the VM lab with --ignored, BDR_TEST_DEV and BDR_TEST_ID"]
    setup = setup()
);

#[test]
#[ignore = "needs dm-bdr: run in the VM lab with --ignored, BDR_TEST_DEV and BDR_TEST_ID"]
fn kernel_info_is_sane() {
    let (_guard, map, w) = setup();
    let info = map.info().expect("info");
    assert_eq!(info.id, env("BDR_TEST_ID"));
    assert_ne!(info.generation.0, 0, "generation 0");
    assert!(info.users >= 1, "users = {}", info.users);
    info.geometry
        .validate()
        .expect("geometry from BDR_IOC_INFO");
    assert_eq!(info.geometry, w.geometry());
    let bits = map.read_active(info.generation).expect("read_active");
    assert!(
        bits.max()
            .map_or(true, |m| u64::from(m) < info.geometry.nr_regions),
        "a bit past the last region"
    );
}

#[test]
#[ignore = "needs dm-bdr: run in the VM lab with --ignored, BDR_TEST_DEV and BDR_TEST_ID"]
fn kernel_unknown_id_is_not_found() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let id = "bdr-conformance-no-such-id";
    match KernelDirtyMap::open_at(control(), id) {
        Err(Error::NotFound { id: got }) => assert_eq!(got, id),
        other => panic!("open of unknown id: expected NotFound, got {other:?}"),
    }
}
