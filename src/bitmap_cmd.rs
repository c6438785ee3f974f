//! `bdr bitmap`: the dirty bitmap of one device, through the control device.

use std::io::{self, BufWriter, Write};

use anyhow::{bail, Context, Result};
use bdr_bitmap::{DirtyMap, KernelDirtyMap};

use crate::cli::BitmapCommand;
use crate::dm::{Dm, Table};

/// The bitmap of bdr device `name`, and the generation it has now.
pub fn open_map(name: &str) -> Result<(KernelDirtyMap, bdr_bitmap::Generation)> {
    let dm = Dm::open()?;
    let id = match dm.table(name)? {
        Table::Bdr(t) => t.params.bitmap_id,
        Table::Other(lines) => bail!(
            "{name} is not a bdr device (table: {}); see `bdr status`",
            lines.join("; ")
        ),
    };
    let map = KernelDirtyMap::open(&id).with_context(|| format!("bitmap {id} of {name}"))?;
    let generation = map.info()?.generation;
    Ok((map, generation))
}

pub fn run(cmd: &BitmapCommand) -> Result<()> {
    match cmd {
        BitmapCommand::Freeze { name } => {
            let (map, g) = open_map(name)?;
            println!("{}", map.freeze(g)?);
        }
        BitmapCommand::Ack { name } => {
            let (map, g) = open_map(name)?;
            map.ack(g)?;
        }
        BitmapCommand::Merge { name } => {
            let (map, g) = open_map(name)?;
            map.merge_back(g)?;
        }
        BitmapCommand::Dump { name, active, .. } => {
            let (map, g) = open_map(name)?;
            let set = if *active {
                map.read_active(g)?
            } else {
                map.read_frozen(g)?
            };
            let mut out = BufWriter::new(io::stdout().lock());
            for r in &set {
                writeln!(out, "{r}")?;
            }
            out.flush()?;
        }
    }
    Ok(())
}
