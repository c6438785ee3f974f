//! Cuts of a real bdr device: suspend, freeze the bitmap, activate a dm-snapshot, resume.
//! (Being written: see `DmCutSource::open`.)

use std::path::PathBuf;

use anyhow::{bail, Result};
use bdr_bitmap::MapInfo;

use super::{CowUsage, Cut, CutSource};

/// Where a cut's copy-on-write data goes.
#[derive(Clone, Debug)]
pub enum CowStore {
    /// A sparse file of this many bytes in the directory, through a loop device.
    Dir { dir: PathBuf, bytes: u64 },
    /// A block device used whole.
    Device(PathBuf),
}

/// Cuts of the bdr device `/dev/mapper/NAME`.
pub struct DmCutSource {
    _name: String,
}

impl DmCutSource {
    pub fn open(name: &str, _cow: CowStore) -> Result<Self> {
        bail!("cuts of {name}: not implemented yet")
    }
}

impl CutSource for DmCutSource {
    fn info(&self) -> Result<MapInfo> {
        bail!("not implemented yet")
    }
    fn take(&mut self) -> Result<Cut> {
        bail!("not implemented yet")
    }
    fn commit(&mut self, _cut: Cut) -> Result<()> {
        bail!("not implemented yet")
    }
    fn abort(&mut self, _cut: Cut) -> Result<()> {
        bail!("not implemented yet")
    }
    fn cow_usage(&self) -> Option<CowUsage> {
        None
    }
}
