//! [`FileCutSource`]: a pure user-space [`CutSource`] for host tests.
//!
//! The "device" is a plain file and its dirty bitmap a [`FileDirtyMap`]. Writers go through
//! [`StandInWriter`], which writes the file and marks the map under an exclusive `flock` of
//! the device file; [`FileCutSource::take`] holds the same lock while it freezes the map and
//! copies the device to an unlinked temporary file (the cut's image), so the bitmap and the
//! image describe the same instant, as suspend/freeze/snapshot/resume do for a real device.
//! The copy is whole: this is a test stand-in.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bdr_bitmap::{DirtyMap, FileDirtyMap, MapInfo};

use super::{CowUsage, Cut, CutSource};

static IMAGE_SEQ: AtomicU64 = AtomicU64::new(0);

/// An exclusive `flock` of a file, released on drop.
struct FileLock<'a>(&'a File);

impl<'a> FileLock<'a> {
    fn exclusive(f: &'a File) -> io::Result<Self> {
        loop {
            // SAFETY: flock(2) on a descriptor owned by `f`, which outlives the lock.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
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
        if info.frozen_regions > 0 {
            // Left by a process that died mid-cut: those regions were never acknowledged.
            tracing::info!(
                regions = info.frozen_regions,
                "merging back a frozen bitmap left by an earlier run"
            );
            self.map.merge_back(g)?;
        }
        let t0 = Instant::now();
        let (regions, image) = {
            let _lock = FileLock::exclusive(&self.device).context("lock the stand-in device")?;
            self.map.freeze(g)?;
            let regions = self.map.read_frozen(g)?;
            let image = match self.snapshot(info.geometry.dev_bytes()) {
                Ok(i) => i,
                Err(e) => {
                    let _ = self.map.merge_back(g);
                    return Err(e);
                }
            };
            (regions, image)
        };
        let suspend = t0.elapsed();
        self.live = true;
        Ok(Cut {
            image: Arc::new(image),
            regions,
            geometry: info.geometry,
            generation: g,
            suspend,
        })
    }

    fn commit(&mut self, cut: Cut) -> Result<()> {
        self.live = false;
        self.map.ack(cut.generation)?;
        Ok(())
    }

    fn abort(&mut self, cut: Cut) -> Result<()> {
        self.live = false;
        self.map.merge_back(cut.generation)?;
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

    /// Writes `data` at `off` and marks the regions it touches.
    pub fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        let _lock = FileLock::exclusive(&self.device)?;
        self.device.write_all_at(data, off)?;
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
}
