//! CPU and I/O priority: the replication yields to the primary's workload, except where
//! the primary waits for it (a suspend window) and in the suspend guard.

/// nice value of `primary run` and `sync --once`.
pub const DAEMON_NICE: i32 = 10;

/// The replication's CPU and disk time come second to the primary's own workload: nice
/// [`DAEMON_NICE`] and the lowest best-effort I/O priority. Linux applies both per thread
/// and new threads inherit them, so this runs on the main thread before the runtime's
/// threads exist. (The suspend guard, a child, goes back to normal: see `guard::run`.)
pub fn yield_to_the_primary() {
    // SAFETY: setpriority(2) on the calling thread; integer arguments only.
    let nice = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, DAEMON_NICE) };
    // SAFETY: ioprio_set(2) on the calling thread; integer arguments only.
    let io = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, ioprio_be(7)) };
    if nice != 0 || io != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower this process's CPU or I/O priority: replication competes with the \
             primary's workload on equal terms"
        );
    }
}

const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// IOPRIO_PRIO_VALUE(IOPRIO_CLASS_BE, level) of linux/ioprio.h.
fn ioprio_be(level: libc::c_int) -> libc::c_int {
    const IOPRIO_CLASS_BE: libc::c_int = 2;
    const IOPRIO_CLASS_SHIFT: libc::c_int = 13;
    (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | level
}

/// Back to normal CPU and I/O priority (the guard: it must resume a device at once).
pub fn normal() {
    // SAFETY: as in yield_to_the_primary; 0 and best-effort 4 are the defaults.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 0);
        libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, ioprio_be(4));
    }
}

/// Normal CPU priority for this thread while it lives. The daemon runs niced (it yields to
/// the primary's workload), but inside a suspend window the primary waits for it: there it
/// must not wait behind the primary's own CPU-bound threads. Best effort (lowering a nice
/// value needs CAP_SYS_NICE; without it the window simply runs niced).
pub struct Urgent {
    old: Option<libc::c_int>,
}

impl Urgent {
    pub fn new() -> Urgent {
        // SAFETY: errno is this thread's; getpriority/setpriority on the calling thread
        // with integer arguments only.
        unsafe {
            *libc::__errno_location() = 0;
            let old = libc::getpriority(libc::PRIO_PROCESS, 0);
            if old == -1 && *libc::__errno_location() != 0 {
                return Urgent { old: None };
            }
            if old > 0 && libc::setpriority(libc::PRIO_PROCESS, 0, 0) == 0 {
                return Urgent { old: Some(old) };
            }
        }
        Urgent { old: None }
    }
}

impl Drop for Urgent {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            // SAFETY: as in `new`, on the same thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, old) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inside a window the thread runs at nice 0, and goes back to its nice value after
    /// (as root, as the daemon runs; elsewhere lowering a nice value is refused).
    #[test]
    fn urgent_lifts_the_nice_value_for_the_window_only() {
        std::thread::spawn(|| {
            // SAFETY: getpriority on this thread, integer arguments only.
            let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            // SAFETY: setpriority on this thread.
            assert_eq!(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) }, 0);
            {
                let _u = Urgent::new();
                // SAFETY: geteuid has no preconditions.
                if unsafe { libc::geteuid() } == 0 {
                    assert_eq!(nice(), 0);
                }
            }
            assert_eq!(nice(), 10);
        })
        .join()
        .unwrap();
    }
}
