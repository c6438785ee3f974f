//! Read-only views of a replica state dir: the committed state, the promoted marker.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{PROMOTED_FILE, STATE_FILE};
use crate::private_file;

/// The replica's committed state, as its state file says (read without the store's lock,
/// for display).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Committed {
    pub volume: String,
    pub last_cut: u64,
    pub dev_bytes: u64,
    pub region_bytes: u64,
    pub committed_unix_ms: u64,
}

/// Parses the `key value` lines of the state file (`docs/replica-journal.md`).
pub fn parse_state(text: &str) -> Option<Committed> {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(' ')))
    };
    let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
    Some(Committed {
        volume: get("volume")?.to_string(),
        last_cut: num("last_cut")?,
        dev_bytes: num("dev_bytes")?,
        region_bytes: num("region_bytes")?,
        committed_unix_ms: num("committed_unix_ms")?,
    })
}

/// The committed state of `dir`; `None` for a new replica.
pub fn committed(dir: &Path) -> Result<Option<Committed>> {
    let path = dir.join(STATE_FILE);
    let Some(b) = private_file::read(&path)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&b);
    parse_state(&text)
        .map(Some)
        .with_context(|| format!("{} is not a bdr replica state file", path.display()))
}

/// The marker `promote` leaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promoted {
    pub promoted_unix_ms: u64,
    pub cut: u64,
    pub volume: String,
    pub device: String,
}

pub fn promoted(dir: &Path) -> Result<Option<Promoted>> {
    let path = dir.join(PROMOTED_FILE);
    let Some(b) = private_file::read(&path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&b)
        .map(Some)
        .with_context(|| format!("{} is corrupt", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_state_file() {
        let t = "bdr-replica-state 1\nvolume 6264\nlast_cut 42\ndev_bytes 1073741824\n\
                 region_bytes 65536\ncommitted_unix_ms 1732370000123\nchecksum 0123\n";
        let c = parse_state(t).unwrap();
        assert_eq!(c.last_cut, 42);
        assert_eq!(c.volume, "6264");
        assert_eq!(c.committed_unix_ms, 1_732_370_000_123);
        assert!(parse_state("bdr-replica-state 1\n").is_none());
    }
}
