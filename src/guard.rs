//! The suspend guard: a child process that resumes a device if the daemon dies while the
//! device is suspended.
//!
//! The daemon keeps the write end of a pipe to the guard's stdin and writes `S` just before a
//! suspend and `R` once the device is resumed. When the daemon dies, at any instant and by any
//! signal, the kernel closes the pipe; the guard reads end-of-file and, if the last word was
//! `S`, resumes every device it guards that is still suspended. The guard runs in its own
//! session and ignores the terminal's signals, so a Ctrl-C or a SIGTERM meant for the daemon
//! does not take it away first.
//!
//! A daemon that does not die but stops (SIGSTOP, a debugger, a hung thread) would hold the
//! primary suspended for as long as it is stopped. So while armed the guard watches the
//! primary device (the last name it guards): once it is suspended, the daemon has
//! [`WINDOW_DEADLINE`] to say `R` (what is left of a window is a few ioctls); from `S` on it
//! has [`SUSPEND_DEADLINE`] in all (the suspend flushes the filesystem first). Past a
//! deadline the guard resumes the devices itself. Invariant: a daemon must check, before its
//! own resume, that the device is still suspended; if it is not, the guard took the window
//! and the cut (or pass) is void: its frozen regions are merged back.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cut::ioctl::DmControl;

/// From the device seen suspended to `R`: the window's ioctls take milliseconds.
pub const WINDOW_DEADLINE: Duration = Duration::from_secs(2);
/// How often an armed guard looks at the device.
const WATCH_EVERY: Duration = Duration::from_millis(20);
/// From `S` to `R`: the suspend with lockfs flushes the filesystem first.
pub const SUSPEND_DEADLINE: Duration = Duration::from_secs(30);

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
    // The daemon runs niced; its guard must not wait for CPU to resume a device.
    crate::priority::normal();
    let ctl = DmControl::open().context("guard: cannot open /dev/mapper/control")?;
    let resume_all = |why: &str| {
        for name in names {
            match ctl.is_suspended(name) {
                Ok(Some(true)) => match ctl.resume(name) {
                    Ok(()) => tracing::warn!(device = %name, "{why}: resumed"),
                    Err(e) => tracing::error!(device = %name, "{why}: resume failed: {e}"),
                },
                Ok(_) => {}
                Err(e) => tracing::error!(device = %name, "guard: cannot query: {e}"),
            }
        }
    };
    let watched = names.last().map(String::as_str).unwrap_or_default();
    // Armed: since when (S) and since when the device was seen suspended.
    let mut armed: Option<(Instant, Option<Instant>)> = None;
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        if let Some((since, suspended_at)) = armed.as_mut() {
            if !readable_within(stdin.as_raw_fd(), WATCH_EVERY) {
                let now = Instant::now();
                if suspended_at.is_none() && matches!(ctl.is_suspended(watched), Ok(Some(true))) {
                    *suspended_at = Some(now);
                }
                let late = suspended_at.is_some_and(|t| now - t >= WINDOW_DEADLINE)
                    || now - *since >= SUSPEND_DEADLINE;
                if late {
                    resume_all(
                        "the daemon held the device suspended past its deadline (stopped or hung)",
                    );
                    armed = None;
                }
                continue;
            }
        }
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => match buf[..n].last() {
                Some(b'S') => armed = Some((Instant::now(), None)),
                Some(_) => armed = None,
                None => {}
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if armed.is_some() {
        resume_all("daemon died mid-cut");
    }
    Ok(())
}

/// Waits until `fd` is readable (or at end of file) for at most `t`.
fn readable_within(fd: i32, t: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(t.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: `p` is one valid pollfd that lives across the call.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r >= 0 {
            return r > 0;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return true; // let read() report it
        }
    }
}
