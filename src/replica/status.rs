//! `bdr replica status --state-dir DIR [--json]`.

use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use super::info::{self, Committed, Promoted};
use super::serve::ReplicaStatusFile;
use super::LOCK_FILE;
use crate::primary_status::render_rows;
use crate::private_file;
use crate::size::format_bytes;
use crate::state::{now_ms, ErrorNote};

/// Field names are the JSON schema.
#[derive(Debug, Serialize)]
pub struct ReplicaStatus {
    pub state_dir: String,
    /// `serving`, `stopped`, `dead` (killed without stopping) or `never served`.
    pub server: String,
    pub pid: Option<u32>,
    pub listen: Option<String>,
    pub committed: Option<Committed>,
    /// Seconds since the last committed cut was committed.
    pub committed_age_seconds: Option<f64>,
    pub in_cut: Option<u64>,
    pub peer: Option<String>,
    pub last_error: Option<ErrorNote>,
    pub promoted: Option<Promoted>,
    /// What recovery did when the server opened the store.
    pub recovery: Option<String>,
    /// Why the store is stopped after a failed commit (it replays its journal at the
    /// primary's next connection); `None` while it serves.
    pub store_stopped: Option<String>,
    /// The last recovery in place of a stopped store.
    pub recovered_in_place: Option<ErrorNote>,
}

pub fn collect(dir: &Path) -> Result<ReplicaStatus> {
    if !dir.is_dir() {
        bail!(
            "{} is not a replica state dir (no such directory)",
            dir.display()
        );
    }
    let committed = info::committed(dir)?;
    let file = ReplicaStatusFile::read(dir)?;
    let held = private_file::is_locked(&dir.join(LOCK_FILE))?;
    let server = match &file {
        None if held => "serving".to_string(),
        None => "never served".to_string(),
        Some(_) if held => "serving".to_string(),
        Some(f) if f.state == "stopped" => "stopped".to_string(),
        Some(_) => "dead".to_string(),
    };
    let now = now_ms();
    Ok(ReplicaStatus {
        state_dir: dir.display().to_string(),
        server,
        pid: file.as_ref().map(|f| f.pid),
        listen: file.as_ref().map(|f| f.listen.clone()),
        committed_age_seconds: committed
            .as_ref()
            .map(|c| now.saturating_sub(c.committed_unix_ms) as f64 / 1000.0),
        committed,
        in_cut: file.as_ref().and_then(|f| f.in_cut),
        peer: file.as_ref().and_then(|f| f.peer.clone()),
        last_error: file.as_ref().and_then(|f| f.last_error.clone()),
        promoted: info::promoted(dir)?,
        recovery: file.as_ref().map(|f| f.recovery.clone()),
        store_stopped: file.as_ref().and_then(|f| f.store_stopped.clone()),
        recovered_in_place: file.as_ref().and_then(|f| f.recovered_in_place.clone()),
    })
}

pub fn render(s: &ReplicaStatus) -> String {
    let mut rows: Vec<(&str, String)> = vec![(
        "server",
        match (&s.pid, &s.listen) {
            (Some(p), Some(l)) => format!("{} (pid {p}, listening on {l})", s.server),
            _ => s.server.clone(),
        },
    )];
    match &s.committed {
        Some(c) => {
            rows.push(("volume", c.volume.clone()));
            rows.push((
                "last cut",
                format!(
                    "{} committed {:.1} s ago",
                    c.last_cut,
                    s.committed_age_seconds.unwrap_or(0.0)
                ),
            ));
            rows.push((
                "volume size",
                format!("{} ({} bytes)", format_bytes(c.dev_bytes), c.dev_bytes),
            ));
        }
        None => rows.push(("last cut", "none: a new replica (not seeded)".to_string())),
    }
    if let Some(c) = s.in_cut {
        rows.push((
            "receiving",
            format!("cut {c} from {}", s.peer.as_deref().unwrap_or("?")),
        ));
    }
    if let Some(p) = &s.promoted {
        rows.push((
            "promoted",
            format!("at cut {} (serve refuses without --force)", p.cut),
        ));
    }
    if let Some(r) = &s.recovery {
        rows.push(("recovery at start", r.clone()));
    }
    if let Some(why) = &s.store_stopped {
        rows.push((
            "store",
            format!(
                "STOPPED after a failed commit ({why}); its journal is replayed at the \
                 primary's next connection"
            ),
        ));
    }
    if let Some(r) = &s.recovered_in_place {
        rows.push((
            "recovered",
            format!(
                "in place {:.0} s ago: {}",
                now_ms().saturating_sub(r.at_unix_ms) as f64 / 1000.0,
                r.message
            ),
        ));
    }
    rows.push((
        "last error",
        s.last_error
            .as_ref()
            .map_or("none".to_string(), |e| e.message.clone()),
    ));
    render_rows(&format!("replica {}", s.state_dir), &rows)
}

pub fn run(dir: &Path, json: bool) -> Result<()> {
    let s = collect(dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render(&s));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> ReplicaStatus {
        ReplicaStatus {
            state_dir: "/var/lib/bdr/r".into(),
            server: "serving".into(),
            pid: Some(42),
            listen: Some("10.0.0.2:7800".into()),
            committed: None,
            committed_age_seconds: None,
            in_cut: None,
            peer: None,
            last_error: None,
            promoted: None,
            recovery: Some("clean".into()),
            store_stopped: None,
            recovered_in_place: None,
        }
    }

    #[test]
    fn a_stopped_store_and_its_recovery_are_shown() {
        let mut s = status();
        let plain = render(&s);
        assert!(plain.contains("clean"), "{plain}");
        assert!(
            !plain.contains("STOPPED") && !plain.contains("in place"),
            "{plain}"
        );
        s.store_stopped = Some("fdatasync /dev/sdb: Input/output error".into());
        let stopped = render(&s);
        assert!(
            stopped.contains("STOPPED after a failed commit (fdatasync /dev/sdb"),
            "{stopped}"
        );
        s.store_stopped = None;
        s.recovered_in_place = Some(ErrorNote {
            at_unix_ms: now_ms() - 3_000,
            message: "replayed the journal of cut 7 (3 chunks, 196608 bytes)".into(),
        });
        let recovered = render(&s);
        assert!(
            recovered.contains("in place 3 s ago: replayed the journal of cut 7"),
            "{recovered}"
        );
    }
}
