//! The primary's durable state, one state dir per volume (default `/var/lib/bdr/NAME`):
//!
//! | file | what |
//! |------|------|
//! | `primary.json` | [`PrimaryState`]: volume UUID, bitmap generation, last cut, last error |
//! | `status.json` | the daemon's runtime status (`crate::primary_status`) |
//! | `bitmap.saved` | the bitmap saved by `bdr detach` (`crate::saved_bitmap`) |
//! | `lock` | `flock`ed by the process that cuts (daemon, `sync --once`, `verify`) |
//!
//! All 0600 in a 0700 dir, written atomically, refused when group or others can read them.
//! Fields and the rules that use them: `docs/primary-state.md`.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::private_file::{self, DirLock};

pub const STATE_FILE: &str = "primary.json";
pub const LOCK_FILE: &str = "lock";

/// The default state dir of volume `name`.
pub fn default_state_dir(name: &str) -> PathBuf {
    Path::new("/var/lib/bdr").join(name)
}

/// `dir` if given, else the default of `name`.
pub fn state_dir_of(name: &str, dir: Option<&Path>) -> PathBuf {
    dir.map_or_else(|| default_state_dir(name), Path::to_path_buf)
}

/// Milliseconds since the epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// A message and when it happened: an error, or an event such as a recovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorNote {
    pub at_unix_ms: u64,
    pub message: String,
}

impl ErrorNote {
    pub fn now(message: impl Into<String>) -> Self {
        ErrorNote {
            at_unix_ms: now_ms(),
            message: message.into(),
        }
    }
}

/// What the primary durably knows about its volume and the replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryState {
    /// The volume UUID (32 hex digits), created at the first run.
    pub volume: String,
    /// The bitmap id last seen.
    #[serde(default)]
    pub bitmap_id: Option<String>,
    /// The bitmap generation whose bits are all accounted for: every region written since
    /// `last_cut` is set in it. Another generation means bits were lost: rescan.
    #[serde(default)]
    pub generation: Option<u64>,
    /// Set by `bdr attach` when `generation` continues a bitmap saved by `bdr detach`.
    #[serde(default)]
    pub continued_from: Option<u64>,
    /// The last cut the replica committed and the primary acknowledged.
    #[serde(default)]
    pub last_cut: Option<u64>,
    /// When that cut was taken (its data is as of this instant).
    #[serde(default)]
    pub last_cut_taken_unix_ms: Option<u64>,
    /// When the replica committed it.
    #[serde(default)]
    pub last_cut_committed_unix_ms: Option<u64>,
    #[serde(default)]
    pub last_error: Option<ErrorNote>,
}

impl PrimaryState {
    pub fn volume_bytes(&self) -> Result<[u8; 16]> {
        parse_volume(&self.volume)
    }
}

fn parse_volume(s: &str) -> Result<[u8; 16]> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("bad volume UUID {s:?}: expected 32 hex digits");
    }
    let mut v = [0u8; 16];
    for (i, b) in v.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)?;
    }
    Ok(v)
}

fn random_volume() -> Result<String> {
    let mut buf = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("read random bytes for a volume UUID")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A primary state dir.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    _lock: Option<DirLock>,
}

impl StateDir {
    /// Opens (creating, 0700) the state dir without locking it.
    pub fn open(dir: &Path) -> Result<Self> {
        private_file::ensure_dir(dir)?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
            _lock: None,
        })
    }

    /// Opens the state dir and locks it for a process that takes cuts; `what` names the
    /// holder in the refusal message.
    pub fn open_locked(dir: &Path) -> Result<Self> {
        let mut s = Self::open(dir)?;
        match private_file::try_lock(&dir.join(LOCK_FILE))? {
            Some(l) => s._lock = Some(l),
            None => bail!(
                "state dir {} is in use by another bdr process (a `bdr primary run` daemon, \
                 `bdr sync` or `bdr verify` of this volume); stop it or wait for it",
                dir.display()
            ),
        }
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The state, if there is one.
    pub fn read(&self) -> Result<Option<PrimaryState>> {
        read_state(&self.dir)
    }

    /// The state, created with a new volume UUID if there is none.
    pub fn load_or_init(&self) -> Result<PrimaryState> {
        if let Some(s) = self.read()? {
            return Ok(s);
        }
        let s = PrimaryState {
            volume: random_volume()?,
            bitmap_id: None,
            generation: None,
            continued_from: None,
            last_cut: None,
            last_cut_taken_unix_ms: None,
            last_cut_committed_unix_ms: None,
            last_error: None,
        };
        self.save(&s)?;
        tracing::info!(volume = %s.volume, dir = %self.dir.display(), "new volume UUID");
        Ok(s)
    }

    /// Replaces the state atomically and durably.
    pub fn save(&self, s: &PrimaryState) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(s)?;
        text.push(b'\n');
        private_file::write_atomic(&self.file(STATE_FILE), &text, true)
    }
}

/// Reads the state of `dir` without creating anything.
pub fn read_state(dir: &Path) -> Result<Option<PrimaryState>> {
    let path = dir.join(STATE_FILE);
    let Some(bytes) = private_file::read(&path)? else {
        return Ok(None);
    };
    let s: PrimaryState = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is corrupt; restore it or remove it (the next sync then rescans the replica)",
            path.display()
        )
    })?;
    s.volume_bytes()
        .with_context(|| format!("{} is corrupt", path.display()))?;
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_save_reload() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("vol");
        let sd = StateDir::open_locked(&dir).unwrap();
        assert!(
            StateDir::open_locked(&dir).is_err(),
            "second locker refused"
        );
        let mut s = sd.load_or_init().unwrap();
        assert_eq!(s.volume_bytes().unwrap().len(), 16);
        assert_eq!(sd.load_or_init().unwrap(), s, "same volume on reload");
        s.last_cut = Some(7);
        s.generation = Some(u64::MAX);
        sd.save(&s).unwrap();
        assert_eq!(read_state(&dir).unwrap().unwrap(), s);
        let other = StateDir::open(&d.path().join("other")).unwrap();
        assert_ne!(other.load_or_init().unwrap().volume, s.volume);
    }

    #[test]
    fn corrupt_state_is_refused() {
        let d = tempfile::tempdir().unwrap();
        private_file::write_atomic(&d.path().join(STATE_FILE), b"{nope", true).unwrap();
        let e = format!("{:#}", read_state(d.path()).unwrap_err());
        assert!(e.contains("corrupt"), "{e}");
    }
}
