//! Private files of a state dir: created 0600 (dirs 0700), written atomically (temporary
//! file, fsync, rename, fsync of the directory), refused when group or others can read them.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Creates `dir` (and its parents) mode 0700 if missing.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("create state dir {}", dir.display()))?;
    }
    Ok(())
}

/// Fails unless `path` is accessible by its owner only.
pub fn check_private(path: &Path) -> Result<()> {
    let mode = fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} is accessible by group or others (mode {mode:03o}): it must be private; chmod 600 it",
            path.display()
        );
    }
    Ok(())
}

/// The content of private file `path`; `None` if it does not exist.
pub fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
        Ok(_) => {}
    }
    check_private(path)?;
    fs::read(path)
        .map(Some)
        .with_context(|| format!("read {}", path.display()))
}

/// Replaces `path` atomically with `data`, mode 0600. With `durable`, the file and the
/// directory are fsynced (state); without, only the rename makes it atomic (status files
/// rewritten every step).
pub fn write_atomic(path: &Path, data: &[u8], durable: bool) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let res = (|| -> io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("write {}", path.display()));
    }
    if durable {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsync directory {}", dir.display()))?;
    }
    Ok(())
}

/// An exclusive `flock` on a lock file, held while the value lives.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes the exclusive lock `path` (created 0600) without waiting; `None` if another
/// process holds it.
pub fn try_lock(path: &Path) -> Result<Option<DirLock>> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(DirLock { _file: f }));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(None);
    }
    Err(e).with_context(|| format!("lock {}", path.display()))
}

/// Whether some process holds the lock `path` (a missing file is not held). Takes and
/// releases the lock when free.
pub fn is_locked(path: &Path) -> Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return Ok(false);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(true);
    }
    Err(e).with_context(|| format!("lock {}", path.display()))
}

/// Whether process `pid` exists.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks for existence; no memory is involved.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_private_roundtrip_and_refusal() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/x");
        ensure_dir(p.parent().unwrap()).unwrap();
        assert_eq!(read(&p).unwrap(), None);
        write_atomic(&p, b"hello", true).unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), b"hello");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn locks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        assert!(!is_locked(&p).unwrap());
        let l = try_lock(&p).unwrap().unwrap();
        assert!(try_lock(&p).unwrap().is_none());
        assert!(is_locked(&p).unwrap());
        drop(l);
        assert!(!is_locked(&p).unwrap());
        assert!(pid_alive(std::process::id()));
    }
}
