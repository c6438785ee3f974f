//! `bdr replica serve --device DEV --listen ADDR --state-dir DIR`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bdr_sync::replica::{volume_hex, RecoveryReport, ServeStatus};
use bdr_sync::{ReplicaStore, ServeOptions, StoreError};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use super::{info, LOCK_FILE, PROMOTED_FILE, STATE_FILE, STATUS_FILE};
use crate::cli::ReplicaServeArgs;
use crate::primary::commands::{runtime, stop_on_signals};
use crate::primary::engine::stopped;
use crate::private_file;
use crate::state::{now_ms, unix_ms, ErrorNote};

/// How often the status file is rewritten while serving.
const STATUS_EVERY: Duration = Duration::from_millis(200);

/// The replica's runtime status file; field names are the JSON schema.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatusFile {
    pub pid: u32,
    /// `serving` or `stopped`.
    pub state: String,
    /// The address actually listened on.
    pub listen: String,
    pub device: String,
    pub device_bytes: u64,
    /// What recovery did at start.
    pub recovery: String,
    pub volume: Option<String>,
    pub last_cut: Option<u64>,
    pub last_committed_unix_ms: Option<u64>,
    pub peer: Option<String>,
    pub in_cut: Option<u64>,
    pub sessions: u64,
    pub commits: u64,
    pub rejected_busy: u64,
    pub last_error: Option<ErrorNote>,
    /// Why the store is stopped (a commit failed after its commit point; the journal is
    /// replayed at the primary's next connection). `None` while it serves.
    pub store_stopped: Option<String>,
    /// The last recovery in place of a stopped store.
    pub recovered_in_place: Option<ErrorNote>,
    pub updated_unix_ms: u64,
}

impl ReplicaStatusFile {
    fn absorb(&mut self, s: &ServeStatus) {
        if let Some((cut, at)) = s.last_committed {
            self.last_cut = Some(cut);
            self.last_committed_unix_ms = Some(unix_ms(at));
        }
        self.peer = s.peer.map(|p| p.to_string());
        self.in_cut = s.in_cut;
        self.sessions = s.sessions;
        self.commits = s.commits;
        self.rejected_busy = s.rejected_busy;
        self.store_stopped = s.store_stopped.clone();
        if let Some((r, at)) = &s.recovered_in_place {
            self.recovered_in_place = Some(ErrorNote {
                at_unix_ms: unix_ms(*at),
                message: describe_recovery(r),
            });
        }
        if let Some(e) = &s.last_error {
            self.last_error = Some(ErrorNote {
                at_unix_ms: unix_ms(e.at),
                message: format!(
                    "{} (from {}): {}",
                    e.code,
                    e.peer.map_or("?".to_string(), |p| p.to_string()),
                    e.message
                ),
            });
        }
    }

    fn write(&mut self, dir: &Path) {
        self.updated_unix_ms = now_ms();
        let res = serde_json::to_vec_pretty(self)
            .map_err(anyhow::Error::from)
            .and_then(|mut t| {
                t.push(b'\n');
                private_file::write_atomic(&dir.join(STATUS_FILE), &t, false)
            });
        if let Err(e) = res {
            tracing::warn!(error = %format!("{e:#}"), "cannot write the replica status file");
        }
    }

    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(STATUS_FILE);
        let Some(b) = private_file::read(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("{} is not a replica status file", path.display()))
    }
}

fn describe_recovery(r: &RecoveryReport) -> String {
    match r {
        RecoveryReport::Clean => "clean".to_string(),
        RecoveryReport::Replayed { cut, chunks, bytes } => {
            format!("replayed the journal of cut {cut} ({chunks} chunks, {bytes} bytes)")
        }
        RecoveryReport::Discarded { reason } => {
            format!("discarded an uncommitted journal ({reason})")
        }
    }
}

/// Opens the store, turning its lock error into advice.
pub fn open_store(device: &Path, dir: &Path) -> Result<ReplicaStore> {
    match ReplicaStore::open(device, dir) {
        Ok(s) => Ok(s),
        Err(StoreError::Locked { .. }) => bail!(
            "state dir {} is held by a running `bdr replica serve` (its lock is taken); \
             stop that process first",
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("replica store {}", dir.display())),
    }
}

/// Refuses a promoted replica; with `force`, drops its committed state so the next
/// primary re-seeds it.
fn check_promoted(dir: &Path, force: bool) -> Result<()> {
    let Some(p) = info::promoted(dir)? else {
        return Ok(());
    };
    if !force {
        bail!(
            "the replica in {} was promoted (at cut {}, {} ms since the epoch) and may have \
             been written since: it has diverged from the primary. To make it a replica \
             again, run serve with --force: its committed state is dropped and the primary \
             re-seeds it with a rescan (only differing chunks are shipped)",
            dir.display(),
            p.cut,
            p.promoted_unix_ms
        );
    }
    if private_file::is_locked(&dir.join(LOCK_FILE))? {
        bail!(
            "state dir {} is held by a running `bdr replica serve`; stop it first",
            dir.display()
        );
    }
    for f in [STATE_FILE, PROMOTED_FILE] {
        match std::fs::remove_file(dir.join(f)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("remove {}", dir.join(f).display()))
            }
            _ => {}
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))?;
    tracing::warn!(
        dir = %dir.display(),
        "--force: serving a promoted replica; its committed state was dropped, the primary \
         will re-seed it"
    );
    Ok(())
}

/// What `serve` needs: from the options, else the config file (see `config::apply`).
fn need<'a, T>(v: &'a Option<T>, opt: &str, a: &ReplicaServeArgs) -> Result<&'a T> {
    v.as_ref().ok_or_else(|| match &a.name {
        Some(n) => anyhow::anyhow!(
            "{opt} is missing: give it, or set it in {} (see docs/config.md)",
            crate::config::path_for(n, None).display()
        ),
        None => anyhow::anyhow!(
            "{opt} is missing: give it, or name the volume (its config file has it)"
        ),
    })
}

/// Bind the listen address, on `device` only if given. A tunnel address that was just
/// configured may not be usable for a moment (IPv6 duplicate address detection): retry
/// EADDRNOTAVAIL for a few seconds.
async fn bind(listen: &str, device: Option<&str>) -> Result<TcpListener> {
    let addr: std::net::SocketAddr = tokio::net::lookup_host(listen)
        .await
        .with_context(|| format!("--listen {listen}: not ADDR:PORT"))?
        .next()
        .with_context(|| format!("--listen {listen} resolves to no address"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }?;
        sock.set_reuseaddr(true)?;
        if let Some(dev) = device {
            sock.bind_device(Some(dev.as_bytes())).with_context(|| {
                format!("bind the listening socket to interface {dev} (does it exist?)")
            })?;
        }
        match sock.bind(addr).and_then(|()| sock.listen(128)) {
            Ok(l) => return Ok(l),
            Err(e)
                if e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("listen on {listen} (is that address on an interface of this host?)")
                })
            }
        }
    }
}

pub fn run(a: &ReplicaServeArgs) -> Result<()> {
    let dir = need(&a.state_dir, "--state-dir", a)?.as_path();
    let device = need(&a.device, "--device", a)?;
    let listen = need(&a.listen, "--listen", a)?;
    if dir.exists() {
        check_promoted(dir, a.force)?;
    }
    let store = open_store(device, dir)?;
    let mut file = ReplicaStatusFile {
        pid: std::process::id(),
        state: "serving".to_string(),
        device: device.display().to_string(),
        device_bytes: store.device_bytes(),
        recovery: describe_recovery(store.recovery()),
        volume: store.state().map(|s| volume_hex(&s.volume)),
        last_cut: store.state().map(|s| s.last_cut),
        last_committed_unix_ms: store.state().map(|s| unix_ms(s.committed_at)),
        ..Default::default()
    };
    tracing::info!(
        device = %device.display(),
        recovery = %file.recovery,
        last_cut = ?file.last_cut,
        "replica store open"
    );
    runtime()?.block_on(async {
        let listener = bind(listen, a.bind_interface.as_deref()).await?;
        file.listen = listener.local_addr()?.to_string();
        // Signals are handled before the status file says "serving": a SIGTERM sent as
        // soon as it does must stop the replica cleanly, not kill it.
        let stop = stop_on_signals()?;
        file.write(dir);
        tracing::info!(listen = %file.listen, interface = ?a.bind_interface, "serving");
        let status = Arc::new(Mutex::new(ServeStatus::default()));
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
        let writer = {
            let status = status.clone();
            let mut file = file.clone();
            let dir = dir.to_path_buf();
            tokio::spawn(async move {
                loop {
                    let s = status.lock().unwrap().clone();
                    file.absorb(&s);
                    file.write(&dir);
                    tokio::select! {
                        _ = tokio::time::sleep(STATUS_EVERY) => {},
                        _ = &mut done_rx => return file,
                    }
                }
            })
        };
        let res = bdr_sync::replica::serve(
            listener,
            store,
            ServeOptions::default(),
            status.clone(),
            stopped(stop),
        )
        .await;
        let _ = done_tx.send(());
        let mut file = writer.await.unwrap_or(file);
        file.absorb(&status.lock().unwrap().clone());
        file.state = "stopped".to_string();
        file.write(dir);
        let store = res.context("replica server")?;
        drop(store);
        tracing::info!("replica stopped");
        Ok(())
    })
}
