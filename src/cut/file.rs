//! [`FileCutSource`]: a pure user-space [`CutSource`] for host tests.
//!
//! The "device" is a plain file and its dirty bitmap a [`FileDirtyMap`]. Writers go through
//! [`StandInWriter`], which holds a *shared* `flock` of the device file while a write is "in
//! flight" (data written, then the region marked, as the target marks on completion);
//! [`FileCutSource::take`] holds the lock *exclusively* (waiting for writes in flight, like
//! a suspend) while it freezes the map and copies the device to an unlinked temporary file
//! (the cut's image), so the bitmap and the image describe the same instant, as
//! suspend/freeze/snapshot/resume do for a real device. The copy is whole: this is a test
//! stand-in.
//!
//! Pre-copy works as on a real device: the first pass freezes without the lock, later
//! passes take it exclusively only for reading the active map and freezing, and
//! [`live_image`](CutSource::live_image) reads the file with no lock at all, so a copy can
//! see a write half done ([`StandInWriter::write_torn`]).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bdr_bitmap::{DirtyMap, FileDirtyMap, MapInfo, RoaringBitmap};
use bdr_sync::CutImage;

use super::{CowUsage, Cut, CutSource, PrecopyPass};

static IMAGE_SEQ: AtomicU64 = AtomicU64::new(0);

/// An exclusive `flock` of a file, released on drop.
struct FileLock<'a>(&'a File);

impl<'a> FileLock<'a> {
    fn exclusive(f: &'a File) -> io::Result<Self> {
        Self::take(f, libc::LOCK_EX)
    }

    fn shared(f: &'a File) -> io::Result<Self> {
        Self::take(f, libc::LOCK_SH)
    }

    fn take(f: &'a File, op: libc::c_int) -> io::Result<Self> {
        loop {
            // SAFETY: flock(2) on a descriptor owned by `f`, which outlives the lock.
            if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
                return Ok(FileLock(f));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // SAFETY: flock(2) on a descriptor owned by the borrowed file, still open.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Cuts of a device file tracked by a stand-in bitmap file.
pub struct FileCutSource {
    device_path: PathBuf,
    device: File,
    map: FileDirtyMap,
    image_dir: PathBuf,
    live: bool,
    /// Pre-copy passes done since the last cut ended.
    passes: u32,
}

impl FileCutSource {
    /// `device` and `map` must exist (the map created with the device's geometry). Cut
    /// images are written to `image_dir` (default: the device's directory) and unlinked at
    /// once, so a dead process leaves none behind.
    pub fn open(device: &Path, map: &Path, image_dir: Option<&Path>) -> Result<Self> {
        let dev = OpenOptions::new()
            .read(true)
            .open(device)
            .with_context(|| format!("open stand-in device {}", device.display()))?;
        let map = FileDirtyMap::open(map)?;
        let info = map.info()?;
        let len = dev.metadata()?.len();
        if len != info.geometry.dev_bytes() {
            anyhow::bail!(
                "stand-in device {} has {len} bytes but its map {} describes {} bytes",
                device.display(),
                map.path().display(),
                info.geometry.dev_bytes()
            );
        }
        let image_dir = match image_dir {
            Some(d) => d.to_path_buf(),
            None => device
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        };
        Ok(FileCutSource {
            device_path: device.to_path_buf(),
            device: dev,
            map,
            image_dir,
            live: false,
            passes: 0,
        })
    }

    /// Copies the device into a new unlinked file in the image dir.
    fn snapshot(&self, len: u64) -> Result<File> {
        let path = self.image_dir.join(format!(
            ".bdr-cut-image-{}-{}",
            std::process::id(),
            IMAGE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let img = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("create cut image {}", path.display()))?;
        let _ = fs::remove_file(&path);
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(buf.len() as u64) as usize;
            self.device
                .read_exact_at(&mut buf[..n], off)
                .with_context(|| format!("read {} at {off}", self.device_path.display()))?;
            img.write_all_at(&buf[..n], off)
                .context("write the cut image")?;
            off += n as u64;
        }
        Ok(img)
    }
}

impl CutSource for FileCutSource {
    fn info(&self) -> Result<MapInfo> {
        Ok(self.map.info()?)
    }

    fn take(&mut self) -> Result<Cut> {
        anyhow::ensure!(!self.live, "a cut is already live");
        let info = self.map.info()?;
        let g = info.generation;
        let precopied = self.passes > 0;
        if info.frozen_regions > 0 && !precopied {
            // Left by a process that died mid-cut: those regions were never acknowledged.
            tracing::warn!(
                device = %self.device_path.display(),
                regions = info.frozen_regions,
                "frozen regions of an unfinished cut: merging them back"
            );
            self.map.merge_back(g)?;
        }
        let t0 = Instant::now();
        let taken = (|| -> Result<(RoaringBitmap, Option<RoaringBitmap>, File)> {
            let _lock = FileLock::exclusive(&self.device).context("lock the stand-in device")?;
            let residue = if precopied {
                Some(self.map.read_active(g)?)
            } else {
                None
            };
            self.map.freeze(g)?;
            let regions = self.map.read_frozen(g)?;
            let image = self.snapshot(info.geometry.dev_bytes())?;
            Ok((regions, residue, image))
        })();
        let (regions, residue, image) = match taken {
            Ok(t) => t,
            Err(e) => {
                let _ = self.map.merge_back(g);
                self.passes = 0;
                return Err(e);
            }
        };
        let suspend = t0.elapsed();
        self.live = true;
        Ok(Cut {
            image: Arc::new(image),
            regions,
            geometry: info.geometry,
            generation: g,
            suspend,
            residue,
        })
    }

    fn commit(&mut self, cut: Cut) -> Result<()> {
        self.live = false;
        self.passes = 0;
        self.map.ack(cut.generation)?;
        Ok(())
    }

    fn abort(&mut self, cut: Cut) -> Result<()> {
        self.live = false;
        self.passes = 0;
        self.map.merge_back(cut.generation)?;
        Ok(())
    }

    fn release_image(&mut self, cut: &mut Cut) -> Result<()> {
        cut.image = Arc::new(super::Released);
        Ok(())
    }

    fn precopy_pass(&mut self) -> Result<PrecopyPass> {
        anyhow::ensure!(!self.live, "pre-copy while a cut is live");
        let info = self.map.info()?;
        let g = info.generation;
        let t0 = Instant::now();
        let regions = if self.passes == 0 {
            super::first_precopy_pass(&self.map, &info, &self.device_path.display().to_string())?
        } else {
            // Writes in flight finish first (the lock is the stand-in's suspend): the
            // active map then holds exactly the regions written since the previous pass.
            let _lock = FileLock::exclusive(&self.device).context("lock the stand-in device")?;
            let r = self.map.read_active(g)?;
            self.map.freeze(g)?;
            r
        };
        let suspend = if self.passes == 0 {
            std::time::Duration::ZERO
        } else {
            t0.elapsed()
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
        let f = OpenOptions::new()
            .read(true)
            .open(&self.device_path)
            .with_context(|| format!("open stand-in device {}", self.device_path.display()))?;
        Ok(Arc::new(f))
    }

    fn abort_precopy(&mut self) -> Result<()> {
        if self.passes == 0 {
            return Ok(());
        }
        self.passes = 0;
        let g = self.map.info()?.generation;
        self.map.merge_back(g)?;
        Ok(())
    }

    fn cow_usage(&self) -> Option<CowUsage> {
        None
    }
}

/// Writes to a stand-in device the way a bdr device would: data, then the dirty mark,
/// atomically with respect to [`FileCutSource::take`].
#[cfg_attr(not(test), allow(dead_code))]
pub struct StandInWriter {
    device: File,
    map: FileDirtyMap,
}

#[cfg_attr(not(test), allow(dead_code))]
impl StandInWriter {
    pub fn open(device: &Path, map: &Path) -> Result<Self> {
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .open(device)
            .with_context(|| format!("open stand-in device {}", device.display()))?;
        Ok(StandInWriter {
            device,
            map: FileDirtyMap::open(map)?,
        })
    }

    /// Writes `data` at `off` and marks the regions it touches. One writer per thread: the
    /// lock is per open file.
    pub fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        let _lock = FileLock::shared(&self.device)?;
        self.device.write_all_at(data, off)?;
        self.map.mark(off, data.len() as u64)?;
        Ok(())
    }

    /// [`write`](Self::write) as a slow write in flight: the first half of the data, a pause
    /// (calling `midway`), the second half, then the mark. A pre-copy read in between sees
    /// the write torn.
    pub fn write_torn(&self, off: u64, data: &[u8], midway: impl FnOnce()) -> Result<()> {
        let _lock = FileLock::shared(&self.device)?;
        let half = data.len() / 2;
        self.device.write_all_at(&data[..half], off)?;
        midway();
        self.device.write_all_at(&data[half..], off + half as u64)?;
        self.map.mark(off, data.len() as u64)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bdr_bitmap::Geometry;
    use bdr_sync::CutImage;

    fn setup(dir: &Path) -> (PathBuf, PathBuf) {
        let dev = dir.join("dev");
        let map = dir.join("map");
        fs::write(&dev, vec![0u8; 1 << 20]).unwrap();
        FileDirtyMap::create(&map, Geometry::new(128, (1 << 20) / 512).unwrap()).unwrap();
        (dev, map)
    }

    fn read_all(img: &dyn CutImage) -> Vec<u8> {
        let mut v = vec![0u8; img.len() as usize];
        img.read_at(&mut v, 0).unwrap();
        v
    }

    #[test]
    fn take_commit_abort() {
        let dir = tempfile::tempdir().unwrap();
        let (dev, map) = setup(dir.path());
        let w = StandInWriter::open(&dev, &map).unwrap();
        let mut src = FileCutSource::open(&dev, &map, None).unwrap();
        w.write(70_000, &[7u8; 100]).unwrap();
        let cut = src.take().unwrap();
        assert_eq!(cut.regions.iter().collect::<Vec<_>>(), vec![1]);
        assert!(src.take().is_err(), "one cut at a time");
        // Writes after the cut do not change its image.
        w.write(0, &[9u8; 10]).unwrap();
        let img = read_all(&*cut.image);
        assert_eq!(img[0], 0);
        assert_eq!(img[70_000], 7);
        src.abort(cut).unwrap();
        let cut = src.take().unwrap();
        assert_eq!(cut.regions.iter().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(read_all(&*cut.image)[0], 9);
        src.commit(cut).unwrap();
        let info = src.info().unwrap();
        assert_eq!((info.active_regions, info.frozen_regions), (0, 0));
        // No image files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn leftover_frozen_bits_are_merged_back() {
        let dir = tempfile::tempdir().unwrap();
        let (dev, map) = setup(dir.path());
        let w = StandInWriter::open(&dev, &map).unwrap();
        w.write(0, &[1u8; 10]).unwrap();
        {
            let mut src = FileCutSource::open(&dev, &map, None).unwrap();
            let cut = src.take().unwrap();
            std::mem::forget(cut); // the process "dies" mid-cut
        }
        w.write(200_000, &[1u8; 10]).unwrap();
        let mut src = FileCutSource::open(&dev, &map, None).unwrap();
        let cut = src.take().unwrap();
        assert_eq!(cut.regions.iter().collect::<Vec<_>>(), vec![0, 3]);
        src.commit(cut).unwrap();
    }

    fn set(v: &[u32]) -> Vec<u32> {
        v.to_vec()
    }

    #[test]
    fn precopy_passes_and_residue() {
        let dir = tempfile::tempdir().unwrap();
        let (dev, map) = setup(dir.path());
        let w = StandInWriter::open(&dev, &map).unwrap();
        let mut src = FileCutSource::open(&dev, &map, None).unwrap();
        assert!(src.abort_precopy().is_ok(), "no pass: nothing to do");
        w.write(0, &[1u8; 10]).unwrap();
        w.write(200_000, &[1u8; 10]).unwrap();
        let p1 = src.precopy_pass().unwrap();
        assert_eq!(p1.regions.iter().collect::<Vec<_>>(), set(&[0, 3]));
        assert_eq!(p1.suspend, std::time::Duration::ZERO);
        assert_eq!(src.precopy_pending().unwrap(), 0);
        // Written during pass 1 (region 0 again, and 5): pass 2 is exactly those.
        w.write(0, &[2u8; 10]).unwrap();
        w.write(5 * 65536, &[2u8; 10]).unwrap();
        assert_eq!(src.precopy_pending().unwrap(), 2);
        let p2 = src.precopy_pass().unwrap();
        assert_eq!(p2.regions.iter().collect::<Vec<_>>(), set(&[0, 5]));
        // The live image sees writes as they happen.
        let live = src.live_image().unwrap();
        w.write(7 * 65536, &[3u8; 10]).unwrap();
        assert_eq!(read_all(&*live)[7 * 65536], 3);
        let cut = src.take().unwrap();
        assert_eq!(
            cut.residue.as_ref().unwrap().iter().collect::<Vec<_>>(),
            set(&[7])
        );
        assert_eq!(cut.regions.iter().collect::<Vec<_>>(), set(&[0, 3, 5, 7]));
        assert!(
            src.precopy_pass().is_err(),
            "no pre-copy while a cut is live"
        );
        src.commit(cut).unwrap();
        let info = src.info().unwrap();
        assert_eq!((info.active_regions, info.frozen_regions), (0, 0));
        // Without pre-copy, no residue.
        w.write(0, &[4u8; 10]).unwrap();
        let cut = src.take().unwrap();
        assert!(cut.residue.is_none());
        src.commit(cut).unwrap();
    }

    #[test]
    fn precopy_failures_merge_everything_back() {
        let dir = tempfile::tempdir().unwrap();
        let (dev, map) = setup(dir.path());
        let w = StandInWriter::open(&dev, &map).unwrap();
        let mut src = FileCutSource::open(&dev, &map, None).unwrap();
        w.write(0, &[1u8; 10]).unwrap();
        src.precopy_pass().unwrap();
        w.write(65536, &[1u8; 10]).unwrap();
        src.precopy_pass().unwrap();
        w.write(2 * 65536, &[1u8; 10]).unwrap();
        // Given up before the cut.
        src.abort_precopy().unwrap();
        let info = src.info().unwrap();
        assert_eq!((info.active_regions, info.frozen_regions), (3, 0));
        // Given up after the cut (the residue failed to ship).
        src.precopy_pass().unwrap();
        w.write(3 * 65536, &[1u8; 10]).unwrap();
        let cut = src.take().unwrap();
        assert_eq!(cut.residue.as_ref().unwrap().len(), 1);
        src.abort(cut).unwrap();
        let info = src.info().unwrap();
        assert_eq!((info.active_regions, info.frozen_regions), (4, 0));
        // A process dying mid-pre-copy leaves its passes frozen: the next one merges
        // them back, at its first pass or at a plain cut.
        src.precopy_pass().unwrap();
        drop(src);
        w.write(4 * 65536, &[1u8; 10]).unwrap();
        let mut src = FileCutSource::open(&dev, &map, None).unwrap();
        let p = src.precopy_pass().unwrap();
        assert_eq!(p.regions.len(), 5);
        drop(src);
        let mut src = FileCutSource::open(&dev, &map, None).unwrap();
        let cut = src.take().unwrap();
        assert_eq!(cut.regions.len(), 5);
        assert!(cut.residue.is_none());
        src.commit(cut).unwrap();
    }

    /// A write in flight (torn) while a pass reads the live device completes after the
    /// pass froze its region: it is in the next pass.
    #[test]
    fn torn_write_during_a_pass_is_in_the_next_pass() {
        let dir = tempfile::tempdir().unwrap();
        let (dev, map) = setup(dir.path());
        let w = StandInWriter::open(&dev, &map).unwrap();
        let mut src = FileCutSource::open(&dev, &map, None).unwrap();
        w.write(0, &[1u8; 65536]).unwrap();
        let p1 = src.precopy_pass().unwrap();
        assert_eq!(p1.regions.len(), 1);
        let live = src.live_image().unwrap();
        let mut seen = vec![0u8; 65536];
        w.write_torn(0, &[9u8; 65536], || {
            live.read_at(&mut seen, 0).unwrap();
        })
        .unwrap();
        assert_eq!((seen[0], seen[65535]), (9, 1), "the copy is torn");
        let cut = src.take().unwrap();
        assert_eq!(
            cut.residue.as_ref().unwrap().iter().collect::<Vec<_>>(),
            set(&[0])
        );
        assert_eq!(read_all(&*cut.image)[65535], 9);
        src.commit(cut).unwrap();
    }
}
