//! `bdr replica promote --device DEV --state-dir DIR`: stop being a replica.

use std::fs::OpenOptions;
use std::path::Path;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};
use bdr_sync::replica::volume_hex;

use super::info::Promoted;
use super::serve::open_store;
use super::PROMOTED_FILE;
use crate::private_file;
use crate::state::{now_ms, unix_ms};

pub fn run(device: &Path, dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "{} is not a replica state dir (no such directory)",
            dir.display()
        );
    }
    // Takes the state dir's lock (refused while `serve` runs) and recovers from the
    // journal: the device then holds exactly the last committed cut.
    let store = open_store(device, dir)?;
    let Some(st) = store.state().cloned() else {
        bail!(
            "{} holds no committed cut (this replica was never seeded, or its seed did not \
             finish): its content is meaningless; refusing to promote it",
            device.display()
        );
    };
    let marker = Promoted {
        promoted_unix_ms: now_ms(),
        cut: st.last_cut,
        volume: volume_hex(&st.volume),
        device: device.display().to_string(),
    };
    let mut text = serde_json::to_vec_pretty(&marker)?;
    text.push(b'\n');
    private_file::write_atomic(&dir.join(PROMOTED_FILE), &text, true)?;
    OpenOptions::new()
        .write(true)
        .open(device)
        .and_then(|f| f.sync_data())
        .with_context(|| format!("fdatasync {}", device.display()))?;
    drop(store);
    let at = unix_ms(st.committed_at);
    let age = now_ms().saturating_sub(at) as f64 / 1000.0;
    let secs = st
        .committed_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    println!(
        "promoted: {} holds cut {} of volume {}, committed at unix time {secs} ({age:.1} s ago)",
        device.display(),
        st.last_cut,
        volume_hex(&st.volume)
    );
    println!(
        "the device is ready to mount read-write; `bdr replica serve` on {} now refuses \
         without --force",
        dir.display()
    );
    Ok(())
}
