//! The suspend guard: a child process that resumes a device if the daemon dies while the
//! device is suspended.
//!
//! The daemon keeps the write end of a pipe to the guard's stdin and writes `S` just before a
//! suspend and `R` once the device is resumed. When the daemon dies, at any instant and by any
//! signal, the kernel closes the pipe; the guard reads end-of-file and, if the last word was
//! `S`, resumes every device it guards that is still suspended. The guard runs in its own
//! session and ignores the terminal's signals, so a Ctrl-C or a SIGTERM meant for the daemon
//! does not take it away first.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::cut::ioctl::DmControl;

/// The daemon's handle on its guard.
pub struct Guard {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Guard {
    /// Start a guard for the devices `names` (resumed in this order).
    pub fn spawn(names: &[String]) -> Result<Guard> {
        let exe = std::env::current_exe().context("cannot find the bdr executable")?;
        let mut child = Command::new(exe)
            .arg("__guard")
            .args(names)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the suspend guard")?;
        let pipe = child.stdin.take().context("guard has no stdin")?;
        Ok(Guard {
            child,
            pipe: Some(pipe),
        })
    }

    fn say(&mut self, word: u8) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("the suspend guard exited ({status}); refusing to suspend without it");
        }
        self.pipe
            .as_mut()
            .context("suspend guard closed")?
            .write_all(&[word])
            .context("cannot reach the suspend guard")
    }

    /// About to suspend: if we die from now on, the guard resumes.
    pub fn arm(&mut self) -> Result<()> {
        self.say(b'S')
    }

    /// Resumed: nothing for the guard to do if we die now.
    pub fn disarm(&mut self) -> Result<()> {
        self.say(b'R')
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Closing the pipe ends the guard, which resumes first if we are still armed (a
        // panic inside the window unwinds through here); reap it.
        drop(self.pipe.take());
        let _ = self.child.wait();
    }
}

/// The guard process itself (`bdr __guard NAME...`).
pub fn run(names: &[String]) -> Result<()> {
    // SAFETY: setsid and signal() with SIG_IGN have no memory-safety preconditions.
    unsafe {
        libc::setsid();
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    let ctl = DmControl::open().context("guard: cannot open /dev/mapper/control")?;
    let mut armed = false;
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => armed = buf[..n].last() == Some(&b'S'),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if armed {
        for name in names {
            match ctl.is_suspended(name) {
                Ok(Some(true)) => match ctl.resume(name) {
                    Ok(()) => tracing::warn!(device = %name, "daemon died mid-cut: resumed"),
                    Err(e) => {
                        tracing::error!(device = %name, "daemon died mid-cut: resume failed: {e}")
                    }
                },
                Ok(_) => {}
                Err(e) => tracing::error!(device = %name, "guard: cannot query: {e}"),
            }
        }
    }
    Ok(())
}
