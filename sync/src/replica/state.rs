//! The replica state file: which volume the replica holds and its last committed cut.
//!
//! A small text file, written atomically (temporary file, fsync, rename, fsync of the
//! directory), mode 0600, refused when group or world can access it. Format in
//! `docs/replica-journal.md`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::StoreError;

pub(crate) const STATE_FILE: &str = "state";
pub(crate) const STATE_TMP: &str = "state.tmp";
const STATE_HEADER: &str = "bdr-replica-state 1";

/// What the replica durably holds.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReplicaState {
    /// The volume UUID adopted at the first committed cut.
    pub volume: [u8; 16],
    /// The last committed cut: the device holds exactly its image.
    pub last_cut: u64,
    /// Size of the primary's volume at that cut.
    pub dev_bytes: u64,
    /// Region size of the primary at that cut.
    pub region_bytes: u32,
    /// When that cut was committed.
    pub committed_at: SystemTime,
}

/// Lower-case hex of a volume UUID (32 digits, no dashes).
pub fn volume_hex(v: &[u8; 16]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut v = [0u8; 16];
    for (i, b) in v.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(v)
}

fn body_checksum(body: &str) -> String {
    blake3::hash(body.as_bytes()).as_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl ReplicaState {
    pub(crate) fn to_text(&self) -> String {
        let ms = self
            .committed_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let body = format!(
            "{STATE_HEADER}\nvolume {}\nlast_cut {}\ndev_bytes {}\nregion_bytes {}\ncommitted_unix_ms {ms}\n",
            volume_hex(&self.volume),
            self.last_cut,
            self.dev_bytes,
            self.region_bytes,
        );
        let sum = body_checksum(&body);
        format!("{body}checksum {sum}\n")
    }

    pub(crate) fn from_text(text: &str) -> Result<ReplicaState, String> {
        let (body, last) = match text.trim_end_matches('\n').rsplit_once('\n') {
            Some((b, l)) => (format!("{b}\n"), l),
            None => return Err("too short".into()),
        };
        let sum = last
            .strip_prefix("checksum ")
            .ok_or("last line is not the checksum")?;
        if sum != body_checksum(&body) {
            return Err("checksum mismatch".into());
        }
        let mut lines = body.lines();
        if lines.next() != Some(STATE_HEADER) {
            return Err(format!("first line is not {STATE_HEADER:?}"));
        }
        let mut field = |name: &str| -> Result<String, String> {
            let line = lines.next().ok_or(format!("missing {name}"))?;
            line.strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .map(str::to_string)
                .ok_or(format!("expected {name}, found {line:?}"))
        };
        let volume = parse_hex16(&field("volume")?).ok_or("bad volume")?;
        let num = |s: String, what: &str| s.parse::<u64>().map_err(|_| format!("bad {what}"));
        let last_cut = num(field("last_cut")?, "last_cut")?;
        let dev_bytes = num(field("dev_bytes")?, "dev_bytes")?;
        let region_bytes = u32::try_from(num(field("region_bytes")?, "region_bytes")?)
            .map_err(|_| "bad region_bytes")?;
        let ms = num(field("committed_unix_ms")?, "committed_unix_ms")?;
        Ok(ReplicaState {
            volume,
            last_cut,
            dev_bytes,
            region_bytes,
            committed_at: UNIX_EPOCH + Duration::from_millis(ms),
        })
    }
}

/// Fails unless `path` is accessible by its owner only.
pub(crate) fn check_private(path: &Path) -> Result<(), StoreError> {
    let meta =
        fs::metadata(path).map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StoreError::Insecure {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Reads the state file of `dir`; `None` if there is none (a new replica).
pub(crate) fn read_state(dir: &Path) -> Result<Option<ReplicaState>, StoreError> {
    let path = dir.join(STATE_FILE);
    match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(format!("stat {}", path.display()), e)),
        Ok(_) => {}
    }
    check_private(&path)?;
    let text = fs::read_to_string(&path)
        .map_err(|e| StoreError::io(format!("read {}", path.display()), e))?;
    ReplicaState::from_text(&text)
        .map(Some)
        .map_err(|reason| StoreError::Corrupt { path, reason })
}

/// fsync of a directory, so entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("fsync directory {}", dir.display()), e))
}

/// Atomically replaces the state file of `dir`: write the temporary file (into the space
/// the store reserved for it at the cut's start, if it did; created otherwise), fsync it, rename it over the
/// state file, fsync the directory.
pub(crate) fn write_state(dir: &Path, state: &ReplicaState) -> Result<(), StoreError> {
    let tmp: PathBuf = dir.join(STATE_TMP);
    let path = dir.join(STATE_FILE);
    let res = (|| -> io::Result<()> {
        let text = state.to_text();
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_len(text.len() as u64)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::from_io_in_dir(
            format!("write {}", path.display()),
            dir,
            4096,
            e,
        ));
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_roundtrip_and_checksum() {
        let s = ReplicaState {
            volume: [0xab; 16],
            last_cut: 42,
            dev_bytes: 1 << 30,
            region_bytes: 65536,
            committed_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        };
        let t = s.to_text();
        assert!(t.contains("last_cut 42\n"), "{t}");
        assert_eq!(ReplicaState::from_text(&t).unwrap(), s);
        let bad = t.replace("last_cut 42", "last_cut 43");
        assert!(ReplicaState::from_text(&bad)
            .unwrap_err()
            .contains("checksum"));
        assert!(ReplicaState::from_text("").is_err());
        assert!(ReplicaState::from_text("garbage\nchecksum 00\n").is_err());
    }
}
