//! The cut source the command line asks for: the real device-mapper cut of
//! `/dev/mapper/NAME`, or (hidden options, host tests) the file stand-in.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::cli::SourceArgs;
use crate::cut::dm::{CowStore, DmCutSource};
use crate::cut::file::FileCutSource;
use crate::cut::CutSource;
use crate::state::state_dir_of;

/// Size of the COW file when `--cow` is a directory and `--cow-size` is not given.
pub const DEFAULT_COW_BYTES: u64 = 1 << 30;

/// Where the COW data of `--cow` goes.
pub fn cow_store(args: &SourceArgs) -> Result<CowStore> {
    let Some(cow) = &args.cow else {
        bail!("--cow DIR|DEV is required: where cuts keep the blocks overwritten while they ship");
    };
    let meta = std::fs::metadata(cow).with_context(|| {
        format!(
            "--cow {}: give an existing directory (the COW file goes there) or a block device",
            cow.display()
        )
    })?;
    if meta.is_dir() {
        Ok(CowStore::Dir {
            dir: cow.clone(),
            bytes: args.cow_size.unwrap_or(DEFAULT_COW_BYTES),
        })
    } else if meta.file_type().is_block_device() {
        if args.cow_size.is_some() {
            bail!("--cow-size applies to a --cow directory; a COW device is used whole");
        }
        Ok(CowStore::Device(cow.clone()))
    } else {
        bail!(
            "--cow {} is neither a directory nor a block device",
            cow.display()
        )
    }
}

/// The cut source of volume `name`.
pub fn open(name: &str, args: &SourceArgs) -> Result<Box<dyn CutSource>> {
    match (&args.stand_in_device, &args.stand_in_map) {
        (Some(dev), Some(map)) => Ok(Box::new(FileCutSource::open(
            dev,
            map,
            args.cow.as_deref(),
        )?)),
        _ => Ok(Box::new(DmCutSource::open(name, cow_store(args)?)?)),
    }
}

/// The state dir of `name` per `--state-dir`.
pub fn state_dir(name: &str, args: &SourceArgs) -> PathBuf {
    state_dir_of(name, args.state_dir.as_deref())
}
