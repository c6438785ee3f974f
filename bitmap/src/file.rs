//! [`FileDirtyMap`]: a user-space stand-in for the kernel bitmap, backed by one file.

use std::collections::hash_map::RandomState;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use roaring::RoaringBitmap;

use crate::words::{self, CHUNK_WORDS};
use crate::{DirtyMap, Error, Generation, Geometry, MapInfo};

const MAGIC: [u8; 8] = *b"BDRFMAP\0";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 64;

/// A dirty bitmap kept in a file instead of the kernel, with the same semantics as
/// [`KernelDirtyMap`](crate::KernelDirtyMap): [`mark`](FileDirtyMap::mark) plays the part of
/// the target's write completion, [`recreate`](FileDirtyMap::recreate) that of a module
/// reload.
///
/// Safe to share between threads and between processes: every operation holds an in-process
/// mutex and an `flock(2)` on the file (shared for reads, exclusive for changes) around its
/// read-modify-write, so each operation is atomic as a whole (stronger than the kernel's
/// per-word atomicity). The id reported by [`info`](DirtyMap::info) is the file name.
///
/// # File format (version 1)
///
/// All integers little-endian.
///
/// | offset            | size            | field                                                    |
/// |-------------------|-----------------|----------------------------------------------------------|
/// | 0                 | 8               | magic `"BDRFMAP\0"`                                      |
/// | 8                 | 4               | format version, 1                                        |
/// | 12                | 4               | `region_sectors` (512-byte sectors per region, > 0)      |
/// | 16                | 8               | `generation` (never 0, new on create/recreate)           |
/// | 24                | 8               | `dev_sectors`                                            |
/// | 32                | 8               | `nr_regions` = `dev_sectors.div_ceil(region_sectors)`    |
/// | 40                | 8               | `writes`: marks (non-empty) since create/recreate        |
/// | 48                | 8               | `freezes`: successful freezes since create/recreate      |
/// | 56                | 8               | reserved, 0                                              |
/// | 64                | `W * 8`         | active bitmap: `W = nr_regions.div_ceil(64)` u64 words   |
/// | 64 + W * 8        | `W * 8`         | frozen bitmap, same layout                               |
///
/// Bitmaps use the kernel's layout: region `r` is bit `r % 64` of word `r / 64`, and bits
/// past `nr_regions` are 0. The file is exactly `64 + 16 * W` bytes long; anything else is
/// reported as [`Error::Corrupt`]. Set-bit counts are not stored but counted on
/// [`info`](DirtyMap::info).
#[derive(Debug)]
pub struct FileDirtyMap {
    path: PathBuf,
    id: String,
    file: Mutex<File>,
}

#[derive(Clone, Copy, Debug)]
struct Header {
    geometry: Geometry,
    generation: Generation,
    writes: u64,
    freezes: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.geometry.region_sectors.to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.geometry.dev_sectors.to_le_bytes());
        b[32..40].copy_from_slice(&self.geometry.nr_regions.to_le_bytes());
        b[40..48].copy_from_slice(&self.writes.to_le_bytes());
        b[48..56].copy_from_slice(&self.freezes.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER_LEN as usize]) -> Result<Header, String> {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        if b[0..8] != MAGIC {
            return Err("bad magic (not a bdr stand-in bitmap file)".into());
        }
        if u32_at(8) != VERSION {
            return Err(format!(
                "format version {} (this program knows {VERSION})",
                u32_at(8)
            ));
        }
        let geometry = Geometry {
            region_sectors: u32_at(12),
            dev_sectors: u64_at(24),
            nr_regions: u64_at(32),
        };
        geometry.validate().map_err(|e| e.to_string())?;
        let generation = Generation(u64_at(16));
        if generation.0 == 0 {
            return Err("generation is 0".into());
        }
        Ok(Header {
            geometry,
            generation,
            writes: u64_at(40),
            freezes: u64_at(48),
        })
    }

    fn words(&self) -> u64 {
        self.geometry.nr_words()
    }

    fn file_len(&self) -> u64 {
        HEADER_LEN + 16 * self.words()
    }

    fn offset(&self, which: Which) -> u64 {
        match which {
            Which::Active => HEADER_LEN,
            Which::Frozen => HEADER_LEN + 8 * self.words(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Which {
    Active,
    Frozen,
}

/// The in-process mutex and the flock, held together; both are released on drop.
struct Locked<'a> {
    file: MutexGuard<'a, File>,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: flock(2) on a file descriptor we own and keep open; no memory is involved.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl FileDirtyMap {
    /// Creates (or overwrites) a stand-in bitmap of `geometry` at `path`: a new random
    /// generation, no bits set, counters 0. Processes that had the old file open get
    /// [`Error::Stale`], as after a module reload.
    pub fn create(path: impl AsRef<Path>, geometry: Geometry) -> Result<Self, Error> {
        geometry.validate()?;
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false) // under the lock, below
            .open(&path)
            .map_err(|e| Error::io(format!("create stand-in bitmap {}", path.display()), e))?;
        let map = Self::from_file(path, file);
        {
            let lock = map.lock(true)?;
            let old = map.read_header(&lock).ok().map(|h| h.generation);
            let hdr = Header {
                geometry,
                generation: new_generation(old),
                writes: 0,
                freezes: 0,
            };
            map.reset(&lock, &hdr)?;
        }
        Ok(map)
    }

    /// Opens an existing stand-in bitmap, checking its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("open stand-in bitmap {}", path.display()), e))?;
        let map = Self::from_file(path, file);
        {
            let lock = map.lock(false)?;
            map.read_header(&lock)?;
        }
        Ok(map)
    }

    fn from_file(path: PathBuf, file: File) -> Self {
        let id = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        FileDirtyMap {
            path,
            id,
            file: Mutex::new(file),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Simulates a completed write, discard or write-zeroes of `byte_len` bytes at `byte_off`:
    /// marks every region it touches in the active bitmap and counts it in `writes`. A
    /// zero-length call (a flush) marks and counts nothing. Fails with
    /// [`Error::OutOfRange`] if the range ends past the device.
    pub fn mark(&self, byte_off: u64, byte_len: u64) -> Result<(), Error> {
        if byte_len == 0 {
            return Ok(());
        }
        let lock = self.lock(true)?;
        let mut hdr = self.read_header(&lock)?;
        let g = hdr.geometry;
        let end = byte_off.checked_add(byte_len);
        if end.map_or(true, |end| end > g.dev_bytes()) {
            return Err(Error::OutOfRange {
                region: g
                    .region_of_byte(byte_off.saturating_add(byte_len - 1))
                    .max(g.nr_regions),
                nr_regions: g.nr_regions,
            });
        }
        let regions = g.regions_for_range(byte_off, byte_len);
        let first_word = regions.start / 64;
        let last_word = (regions.end - 1) / 64;
        let mut bytes = self.read_words(&lock, &hdr, Which::Active, first_word, last_word + 1)?;
        for r in regions {
            let bit = r - first_word * 64;
            bytes[(bit / 8) as usize] |= 1 << (bit % 8);
        }
        self.write_words(&lock, &hdr, Which::Active, first_word, &bytes)?;
        hdr.writes += 1;
        self.write_header(&lock, &hdr)
    }

    /// Simulates a module reload: a new random generation, all bits lost, counters 0.
    pub fn recreate(&self) -> Result<(), Error> {
        let lock = self.lock(true)?;
        let old = self.read_header(&lock)?;
        let hdr = Header {
            geometry: old.geometry,
            generation: new_generation(Some(old.generation)),
            writes: 0,
            freezes: 0,
        };
        self.reset(&lock, &hdr)
    }

    fn lock(&self, exclusive: bool) -> Result<Locked<'_>, Error> {
        // A panic while holding the mutex leaves the file consistent (every write is
        // complete or failed), so a poisoned mutex is still usable.
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        loop {
            // SAFETY: flock(2) on a file descriptor we own and keep open; no memory involved.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(Locked { file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Error::io(format!("flock {}", self.path.display()), e));
            }
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn read_header(&self, lock: &Locked<'_>) -> Result<Header, Error> {
        let len = lock
            .file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", self.path.display()), e))?
            .len();
        if len < HEADER_LEN {
            return Err(self.corrupt(format!("only {len} bytes long, shorter than its header")));
        }
        let mut b = [0u8; HEADER_LEN as usize];
        lock.file
            .read_exact_at(&mut b, 0)
            .map_err(|e| Error::io(format!("read {}", self.path.display()), e))?;
        let hdr = Header::decode(&b).map_err(|r| self.corrupt(r))?;
        if len != hdr.file_len() {
            return Err(self.corrupt(format!(
                "{len} bytes long, but its header ({} regions) needs {}",
                hdr.geometry.nr_regions,
                hdr.file_len()
            )));
        }
        Ok(hdr)
    }

    /// The header, checked to be of generation `g`.
    fn header_of(&self, lock: &Locked<'_>, g: Generation) -> Result<Header, Error> {
        let hdr = self.read_header(lock)?;
        if hdr.generation != g {
            return Err(Error::Stale {
                id: self.id.clone(),
                expected: g,
                found: Some(hdr.generation),
            });
        }
        Ok(hdr)
    }

    fn write_header(&self, lock: &Locked<'_>, hdr: &Header) -> Result<(), Error> {
        lock.file
            .write_all_at(&hdr.encode(), 0)
            .map_err(|e| Error::io(format!("write {}", self.path.display()), e))
    }

    /// Rewrites the whole file: `hdr`, then zeroed bitmaps.
    fn reset(&self, lock: &Locked<'_>, hdr: &Header) -> Result<(), Error> {
        let ctx = || format!("resize {}", self.path.display());
        lock.file
            .set_len(HEADER_LEN)
            .map_err(|e| Error::io(ctx(), e))?;
        lock.file
            .set_len(hdr.file_len())
            .map_err(|e| Error::io(ctx(), e))?;
        self.write_header(lock, hdr)
    }

    /// Words `start..end` of one bitmap, as little-endian bytes.
    fn read_words(
        &self,
        lock: &Locked<'_>,
        hdr: &Header,
        which: Which,
        start: u64,
        end: u64,
    ) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; ((end - start) * 8) as usize];
        lock.file
            .read_exact_at(&mut buf, hdr.offset(which) + start * 8)
            .map_err(|e| Error::io(format!("read {}", self.path.display()), e))?;
        Ok(buf)
    }

    fn write_words(
        &self,
        lock: &Locked<'_>,
        hdr: &Header,
        which: Which,
        start: u64,
        bytes: &[u8],
    ) -> Result<(), Error> {
        lock.file
            .write_all_at(bytes, hdr.offset(which) + start * 8)
            .map_err(|e| Error::io(format!("write {}", self.path.display()), e))
    }

    /// Calls `f(start_word, active_bytes, frozen_bytes)` chunk by chunk and writes both
    /// chunks back afterwards.
    fn update_chunks(
        &self,
        lock: &Locked<'_>,
        hdr: &Header,
        mut f: impl FnMut(&mut [u8], &mut [u8]),
    ) -> Result<(), Error> {
        let total = hdr.words();
        let mut start = 0;
        while start < total {
            let end = total.min(start + CHUNK_WORDS);
            let mut active = self.read_words(lock, hdr, Which::Active, start, end)?;
            let mut frozen = self.read_words(lock, hdr, Which::Frozen, start, end)?;
            f(&mut active, &mut frozen);
            self.write_words(lock, hdr, Which::Active, start, &active)?;
            self.write_words(lock, hdr, Which::Frozen, start, &frozen)?;
            start = end;
        }
        Ok(())
    }

    fn count(&self, lock: &Locked<'_>, hdr: &Header, which: Which) -> Result<u64, Error> {
        let mut n = 0;
        let mut start = 0;
        while start < hdr.words() {
            let end = hdr.words().min(start + CHUNK_WORDS);
            n += words::count_ones(&self.read_words(lock, hdr, which, start, end)?);
            start = end;
        }
        Ok(n)
    }

    fn read(&self, g: Generation, which: Which) -> Result<RoaringBitmap, Error> {
        let lock = self.lock(false)?;
        let hdr = self.header_of(&lock, g)?;
        let mut out = RoaringBitmap::new();
        let mut start = 0;
        while start < hdr.words() {
            let end = hdr.words().min(start + CHUNK_WORDS);
            out |= words::bytes_to_bitmap(start, &self.read_words(&lock, &hdr, which, start, end)?);
            start = end;
        }
        if words::clear_tail(&mut out, hdr.geometry.nr_regions) {
            return Err(self.corrupt(format!(
                "{which:?} bitmap has bits set past its last region {}",
                hdr.geometry.nr_regions.saturating_sub(1)
            )));
        }
        Ok(out)
    }
}

impl DirtyMap for FileDirtyMap {
    fn info(&self) -> Result<MapInfo, Error> {
        let lock = self.lock(false)?;
        let hdr = self.read_header(&lock)?;
        Ok(MapInfo {
            id: self.id.clone(),
            geometry: hdr.geometry,
            generation: hdr.generation,
            writes: hdr.writes,
            freezes: hdr.freezes,
            active_regions: self.count(&lock, &hdr, Which::Active)?,
            frozen_regions: self.count(&lock, &hdr, Which::Frozen)?,
            users: 1,
        })
    }

    fn freeze(&self, g: Generation) -> Result<u64, Error> {
        let lock = self.lock(true)?;
        let mut hdr = self.header_of(&lock, g)?;
        let mut frozen_regions = 0;
        self.update_chunks(&lock, &hdr, |active, frozen| {
            for (a, f) in active.iter_mut().zip(frozen.iter_mut()) {
                *f |= *a;
                *a = 0;
            }
            frozen_regions += words::count_ones(frozen);
        })?;
        hdr.freezes += 1;
        self.write_header(&lock, &hdr)?;
        Ok(frozen_regions)
    }

    fn read_frozen(&self, g: Generation) -> Result<RoaringBitmap, Error> {
        self.read(g, Which::Frozen)
    }

    fn read_active(&self, g: Generation) -> Result<RoaringBitmap, Error> {
        self.read(g, Which::Active)
    }

    fn ack(&self, g: Generation) -> Result<(), Error> {
        let lock = self.lock(true)?;
        let hdr = self.header_of(&lock, g)?;
        self.update_chunks(&lock, &hdr, |_, frozen| frozen.fill(0))
    }

    fn merge_back(&self, g: Generation) -> Result<(), Error> {
        let lock = self.lock(true)?;
        let hdr = self.header_of(&lock, g)?;
        self.update_chunks(&lock, &hdr, |active, frozen| {
            for (a, f) in active.iter_mut().zip(frozen.iter_mut()) {
                *a |= *f;
                *f = 0;
            }
        })
    }

    fn load(&self, g: Generation, regions: &RoaringBitmap) -> Result<(), Error> {
        let lock = self.lock(true)?;
        let hdr = self.header_of(&lock, g)?;
        words::check_range(regions, hdr.geometry.nr_regions)?;
        words::for_each_chunk(regions, hdr.words(), CHUNK_WORDS, |start, bytes| {
            let end = start + bytes.len() as u64 / 8;
            let mut active = self.read_words(&lock, &hdr, Which::Active, start, end)?;
            for (a, b) in active.iter_mut().zip(bytes) {
                *a |= *b;
            }
            self.write_words(&lock, &hdr, Which::Active, start, &active)
        })
    }
}

/// A random generation, never 0 and never `old`.
fn new_generation(old: Option<Generation>) -> Generation {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut salt = 0u64;
    loop {
        // RandomState is seeded from the OS's random source.
        let mut h = RandomState::new().build_hasher();
        h.write_u64(nanos);
        h.write_u32(std::process::id());
        h.write_u64(salt);
        let g = Generation(h.finish());
        if g.0 != 0 && Some(g) != old {
            return g;
        }
        salt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> Geometry {
        Geometry::new(128, (10 << 20) / 512 + 7).unwrap()
    }

    #[test]
    fn create_open_and_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol0.map");
        let map = FileDirtyMap::create(&path, geometry()).unwrap();
        let info = map.info().unwrap();
        assert_eq!(info.id, "vol0.map");
        assert_eq!(info.geometry, geometry());
        assert_ne!(info.generation.0, 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 + 16 * 3);

        map.mark(65536 * 2 + 5, 10).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[0..8], b"BDRFMAP\0");
        assert_eq!(
            u64::from_le_bytes(bytes[64..72].try_into().unwrap()),
            1 << 2
        );
        assert_eq!(u64::from_le_bytes(bytes[40..48].try_into().unwrap()), 1);

        let again = FileDirtyMap::open(&path).unwrap();
        assert_eq!(again.info().unwrap().generation, info.generation);
        assert_eq!(again.info().unwrap().active_regions, 1);
    }

    #[test]
    fn recreate_loses_bits_and_changes_generation() {
        let dir = tempfile::tempdir().unwrap();
        let map = FileDirtyMap::create(dir.path().join("m"), geometry()).unwrap();
        let other = FileDirtyMap::open(dir.path().join("m")).unwrap();
        let g = map.info().unwrap().generation;
        map.mark(0, 1).unwrap();
        map.freeze(g).unwrap();
        map.mark(65536, 1).unwrap();
        other.recreate().unwrap();
        let info = map.info().unwrap();
        assert_ne!(info.generation, g);
        assert_eq!((info.active_regions, info.frozen_regions), (0, 0));
        assert_eq!((info.writes, info.freezes), (0, 0));
        match map.read_frozen(g) {
            Err(Error::Stale {
                expected, found, ..
            }) => {
                assert_eq!(expected, g);
                assert_eq!(found, Some(info.generation));
            }
            r => panic!("expected Stale, got {r:?}"),
        }
    }

    #[test]
    fn mark_past_the_device_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let map = FileDirtyMap::create(dir.path().join("m"), geometry()).unwrap();
        let dev = geometry().dev_bytes();
        assert!(map.mark(dev - 512, 512).is_ok());
        assert!(matches!(
            map.mark(dev - 512, 1024),
            Err(Error::OutOfRange {
                nr_regions: 161,
                ..
            })
        ));
        assert!(map.mark(u64::MAX, 2).is_err());
        assert!(map.mark(dev, 0).is_ok());
        assert_eq!(map.info().unwrap().writes, 1);
    }

    #[test]
    fn corrupt_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(
            FileDirtyMap::open(&path),
            Err(Error::Corrupt { .. })
        ));
        std::fs::write(&path, [0u8; 200]).unwrap();
        let e = FileDirtyMap::open(&path).unwrap_err();
        assert!(e.to_string().contains("bad magic"), "{e}");

        let map = FileDirtyMap::create(&path, geometry()).unwrap();
        let g = map.info().unwrap().generation;
        // Set bit 161 (past the last region) of the active bitmap by hand.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[1 << 1], 64 + 16 + 4).unwrap();
        let e = map.read_active(g).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
        f.set_len(100).unwrap();
        assert!(matches!(map.info(), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn open_missing_file_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = FileDirtyMap::open(dir.path().join("nope")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
    }

    #[test]
    fn shared_across_processes_via_flock() {
        // Two independent opens (separate open file descriptions, as in two processes)
        // hammering the same file from threads: every mark must survive.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let g = Geometry::new(8, 64 * 8).unwrap(); // 64 regions, one word
        let a = FileDirtyMap::create(&path, g).unwrap();
        let b = FileDirtyMap::open(&path).unwrap();
        std::thread::scope(|s| {
            for (i, m) in [&a, &b, &a, &b].into_iter().enumerate() {
                s.spawn(move || {
                    for r in (i as u64..64).step_by(4) {
                        m.mark(r * 4096, 1).unwrap();
                    }
                });
            }
        });
        let info = a.info().unwrap();
        assert_eq!(info.active_regions, 64);
        assert_eq!(info.writes, 64);
    }
}
