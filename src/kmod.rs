//! Getting the dm-bdr kernel module loaded.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::dm::{Dm, CONTROL_PATH};
use crate::target::TARGET_TYPE;

/// Name for modprobe.
pub const MODULE_NAME: &str = "dm-bdr";

/// Environment variable naming a dm-bdr.ko to insert when modprobe can't find one.
pub const KMOD_ENV: &str = "BDR_KMOD";

/// Make sure the `bdr` target type is registered, loading the module if needed, and
/// return a device-mapper handle. `ko` is a module file to insert if modprobe fails.
pub fn ensure_target(ko: Option<&Path>) -> Result<Dm> {
    let dm = match Dm::open() {
        Ok(dm) => {
            if dm.target_registered(TARGET_TYPE)? {
                return Ok(dm);
            }
            Some(dm)
        }
        // The control node exists but can't be used (permissions...): loading won't help.
        Err(e) if Path::new(CONTROL_PATH).exists() => return Err(e),
        // No device-mapper at all: modprobe dm-bdr pulls in dm-mod too.
        Err(e) => {
            tracing::info!("{e:#}; will try loading {MODULE_NAME}");
            None
        }
    };
    load_module(ko)?;
    let dm = match dm {
        Some(dm) => dm,
        None => open_after_load()?,
    };
    if !dm.target_registered(TARGET_TYPE)? {
        bail!(
            "the {MODULE_NAME} module was loaded but the kernel lists no `{TARGET_TYPE}` \
             device-mapper target (check `dmesg`)"
        );
    }
    Ok(dm)
}

/// /dev/mapper/control appears shortly after dm-mod loads.
fn open_after_load() -> Result<Dm> {
    let mut last = None;
    for _ in 0..20 {
        match Dm::open() {
            Ok(dm) => return Ok(dm),
            Err(e) => last = Some(e),
        }
        sleep(Duration::from_millis(50));
    }
    Err(last.unwrap_or_else(|| anyhow!("device-mapper not available")))
}

fn load_module(ko: Option<&Path>) -> Result<()> {
    tracing::info!("`{TARGET_TYPE}` target not registered; running modprobe {MODULE_NAME}");
    let modprobe_err = match Command::new("modprobe").arg(MODULE_NAME).output() {
        Ok(out) if out.status.success() => return Ok(()),
        Ok(out) => {
            let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if msg.is_empty() {
                format!("modprobe {MODULE_NAME} failed ({})", out.status)
            } else {
                msg
            }
        }
        Err(e) => format!("cannot run modprobe: {e}"),
    };
    tracing::info!("{modprobe_err}");
    let Some(ko) = ko else {
        bail!(
            "the {MODULE_NAME} kernel module is not loaded and modprobe could not load it \
             ({modprobe_err}); build it (make -C kmod) and pass --kmod PATH/dm-bdr.ko or set \
             {KMOD_ENV}=PATH/dm-bdr.ko"
        );
    };
    // dm-bdr needs dm-mod's symbols; with no modprobe-able dm-bdr, load dm-mod on its own.
    if !Path::new("/sys/module/dm_mod").exists() {
        match Command::new("modprobe").arg("dm-mod").status() {
            Ok(s) if s.success() => {}
            Ok(s) => tracing::warn!("modprobe dm-mod failed ({s})"),
            Err(e) => tracing::warn!("cannot run modprobe dm-mod: {e}"),
        }
    }
    insert_module(ko)
}

/// `insmod`, by finit_module(2).
pub fn insert_module(ko: &Path) -> Result<()> {
    tracing::info!("inserting {}", ko.display());
    let file =
        File::open(ko).with_context(|| format!("cannot open module file {}", ko.display()))?;
    let params: &CStr = c"";
    // SAFETY: finit_module reads the module from a valid open fd (kept alive by `file`
    // for the call) and a NUL-terminated parameter string that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    let hint = match err.raw_os_error() {
        Some(libc::EEXIST) => return Ok(()), // loaded meanwhile
        Some(libc::ENOEXEC) => {
            "not a valid module for this kernel (built against another kernel? check `modinfo`)"
        }
        Some(libc::EPERM) => "not permitted (run as root; Secure Boot may require signed modules)",
        Some(libc::ENOENT) | Some(libc::EINVAL) => {
            "unknown symbols or bad module (is dm-mod loaded? see `dmesg`)"
        }
        Some(libc::EKEYREJECTED) | Some(libc::EBADMSG) => "module signature rejected",
        _ => "see `dmesg`",
    };
    Err(anyhow!(err)).context(format!("cannot insert {}: {hint}", ko.display()))
}
