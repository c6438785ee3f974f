//! The primary's runtime status file (`status.json` in the state dir): rewritten by the
//! daemon (and `sync --once`) after every step, read by `bdr status`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::private_file;
use crate::size::format_bytes;
use crate::state::{now_ms, ErrorNote};

pub const STATUS_FILE: &str = "status.json";
/// Suspend windows kept for the percentiles.
pub const SUSPEND_HISTORY: usize = 100;

/// Fill of the copy-on-write store of the live cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CowFill {
    pub used_bytes: u64,
    pub total_bytes: u64,
    pub invalid: bool,
}

/// How the last committed cut was taken: pre-copy passes and how long its snapshot lived.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CutShape {
    /// Pre-copy passes before the cut (0: pre-copy off or not worth it).
    pub precopy_passes: u32,
    /// Chunks copied from the live device by those passes.
    pub precopy_regions: u64,
    /// Regions read from the cut's image (the residue; every region without pre-copy).
    pub residue_regions: u64,
    /// From taking the cut (suspend) to releasing its image (after the replica committed).
    pub snapshot_ms: f64,
    /// From the first pre-copy pass (or the cut) to the release.
    pub cut_ms: f64,
}

impl CutShape {
    /// "2 pre-copy passes (812 regions), residue 14 regions, snapshot 120 ms of 900 ms (13%)"
    pub fn describe(&self) -> String {
        let share = if self.cut_ms > 0.0 {
            100.0 * self.snapshot_ms / self.cut_ms
        } else {
            100.0
        };
        format!(
            "{} pre-copy passes ({} regions), residue {} regions, snapshot {:.0} ms of {:.0} ms ({share:.0}%)",
            self.precopy_passes,
            self.precopy_regions,
            self.residue_regions,
            self.snapshot_ms,
            self.cut_ms
        )
    }
}

/// What the process that replicates the volume is doing; the file's schema.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrimaryStatus {
    pub pid: u32,
    /// `primary run`, `sync --once` or `verify`.
    pub mode: String,
    /// connecting, cutting, shipping, rescanning, verifying, idle, backoff, stopped.
    pub state: String,
    pub peer: String,
    pub volume: String,
    pub started_unix_ms: u64,
    pub updated_unix_ms: u64,
    pub last_cut: Option<u64>,
    pub last_cut_taken_unix_ms: Option<u64>,
    pub last_cut_committed_unix_ms: Option<u64>,
    /// The latest instant the replica is known to equal the primary (the instant of its
    /// last committed cut, or a later check that found nothing dirty): RPO = now - this.
    pub in_sync_unix_ms: Option<u64>,
    /// The cut being shipped.
    pub current_cut: Option<u64>,
    pub region_bytes: u64,
    /// Regions written and not yet replicated (active + frozen).
    pub pending_regions: u64,
    pub pending_bytes: u64,
    /// COW store fill of the live cut (the last one sampled), if the source has one.
    pub cow: Option<CowFill>,
    pub suspend_ms_last: Option<f64>,
    /// The last [`SUSPEND_HISTORY`] suspend windows, oldest first.
    pub suspend_ms_recent: Vec<f64>,
    /// Cuts committed and aborted by this state dir's processes, cumulative.
    pub cuts_committed: u64,
    pub cuts_aborted: u64,
    pub last_error: Option<ErrorNote>,
    pub next_retry_unix_ms: Option<u64>,
    /// Pre-copy and snapshot lifetime of the last committed cut.
    pub last_cut_shape: Option<CutShape>,
}

impl PrimaryStatus {
    pub fn record_suspend(&mut self, ms: f64) {
        self.suspend_ms_last = Some(ms);
        self.suspend_ms_recent.push(ms);
        let n = self.suspend_ms_recent.len();
        if n > SUSPEND_HISTORY {
            self.suspend_ms_recent.drain(..n - SUSPEND_HISTORY);
        }
    }

    /// Rewrites the status file (atomic, not fsynced: it is rewritten at every step).
    pub fn write(&mut self, dir: &Path) -> Result<()> {
        self.updated_unix_ms = now_ms();
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        private_file::write_atomic(&dir.join(STATUS_FILE), &text, false)
    }

    pub fn read(dir: &Path) -> Result<Option<PrimaryStatus>> {
        let path = dir.join(STATUS_FILE);
        let Some(b) = private_file::read(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("{} is not a bdr status file", path.display()))
    }
}

/// Nearest-rank percentile `p` (0..=100) of `v`.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    Some(s[rank.min(s.len()) - 1])
}

/// The daemon.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DaemonView {
    pub pid: u32,
    pub mode: String,
    /// The state it last reported, or `dead` if the process is gone without saying
    /// `stopped`.
    pub state: String,
    pub running: bool,
    pub peer: String,
    pub updated_unix_ms: u64,
}

/// The replication part of `bdr status`: field names are the JSON schema.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplicationView {
    pub state_dir: String,
    pub volume: String,
    pub daemon: DaemonView,
    pub last_committed_cut: Option<u64>,
    pub last_committed_unix_ms: Option<u64>,
    /// Seconds since the instant the replica is known to match: the RPO achieved.
    pub rpo_age_seconds: Option<f64>,
    pub pending_regions: u64,
    pub pending_bytes: u64,
    pub current_cut: Option<u64>,
    pub cow: Option<CowFill>,
    pub suspend_ms_last: Option<f64>,
    pub suspend_ms_p50: Option<f64>,
    pub suspend_ms_p99: Option<f64>,
    pub cuts_committed: u64,
    pub cuts_aborted: u64,
    pub last_error: Option<ErrorNote>,
    /// Pre-copy and snapshot lifetime of the last committed cut.
    pub last_cut_shape: Option<CutShape>,
}

impl ReplicationView {
    pub fn new(dir: &Path, s: &PrimaryStatus, now_ms: u64) -> Self {
        let alive = private_file::pid_alive(s.pid);
        let running = alive && s.state != "stopped";
        let state = if s.state != "stopped" && !alive {
            "dead".to_string()
        } else {
            s.state.clone()
        };
        ReplicationView {
            state_dir: dir.display().to_string(),
            volume: s.volume.clone(),
            daemon: DaemonView {
                pid: s.pid,
                mode: s.mode.clone(),
                state,
                running,
                peer: s.peer.clone(),
                updated_unix_ms: s.updated_unix_ms,
            },
            last_committed_cut: s.last_cut,
            last_committed_unix_ms: s.last_cut_committed_unix_ms,
            rpo_age_seconds: s
                .in_sync_unix_ms
                .map(|t| now_ms.saturating_sub(t) as f64 / 1000.0),
            pending_regions: s.pending_regions,
            pending_bytes: s.pending_bytes,
            current_cut: s.current_cut,
            cow: s.cow,
            suspend_ms_last: s.suspend_ms_last,
            suspend_ms_p50: percentile(&s.suspend_ms_recent, 50.0),
            suspend_ms_p99: percentile(&s.suspend_ms_recent, 99.0),
            cuts_committed: s.cuts_committed,
            cuts_aborted: s.cuts_aborted,
            last_error: s.last_error.clone(),
            last_cut_shape: s.last_cut_shape.clone(),
        }
    }

    /// The view of state dir `dir`, if a status file is there.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        Ok(PrimaryStatus::read(dir)?.map(|s| Self::new(dir, &s, now_ms())))
    }

    /// Rows for the human block of `bdr status`.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |m| format!("{m:.1} ms"));
        let mut rows = vec![
            (
                "replication",
                format!(
                    "{} (pid {}, {}, peer {})",
                    self.daemon.state, self.daemon.pid, self.daemon.mode, self.daemon.peer
                ),
            ),
            (
                "last cut",
                match self.last_committed_cut {
                    Some(c) => format!("{c} committed"),
                    None => "none committed".to_string(),
                },
            ),
            (
                "rpo age",
                self.rpo_age_seconds
                    .map_or("-".to_string(), |s| format!("{s:.1} s")),
            ),
            (
                "pending",
                format!(
                    "{} regions, {}",
                    self.pending_regions,
                    format_bytes(self.pending_bytes)
                ),
            ),
            (
                "suspend",
                format!(
                    "last {}, p50 {}, p99 {}",
                    ms(self.suspend_ms_last),
                    ms(self.suspend_ms_p50),
                    ms(self.suspend_ms_p99)
                ),
            ),
            (
                "cuts",
                format!(
                    "{} committed, {} aborted",
                    self.cuts_committed, self.cuts_aborted
                ),
            ),
        ];
        if let Some(c) = &self.last_cut_shape {
            rows.push(("last cut shape", c.describe()));
        }
        if let Some(c) = self.current_cut {
            rows.push(("cutting", format!("cut {c}")));
        }
        if let Some(c) = self.cow {
            let mut v = format!(
                "{} of {}",
                format_bytes(c.used_bytes),
                format_bytes(c.total_bytes)
            );
            if c.invalid {
                v.push_str(" (overflowed)");
            }
            rows.push(("cow fill", v));
        }
        rows.push((
            "last error",
            self.last_error
                .as_ref()
                .map_or("none".to_string(), |e| e.message.clone()),
        ));
        rows.push(("state dir", self.state_dir.clone()));
        rows
    }
}

/// A human block of rows, aligned like `bdr status`.
pub fn render_rows(title: &str, rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = format!("{title}\n");
    for (k, v) in rows {
        let _ = writeln!(out, "  {:<width$} {v}", format!("{k}:"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
    }

    #[test]
    fn history_is_capped_and_view_computes() {
        let d = tempfile::tempdir().unwrap();
        let mut s = PrimaryStatus {
            pid: std::process::id(),
            state: "idle".into(),
            in_sync_unix_ms: Some(1_000),
            ..Default::default()
        };
        for i in 0..150 {
            s.record_suspend(f64::from(i));
        }
        assert_eq!(s.suspend_ms_recent.len(), SUSPEND_HISTORY);
        assert_eq!(s.suspend_ms_recent[0], 50.0);
        s.write(d.path()).unwrap();
        let back = PrimaryStatus::read(d.path()).unwrap().unwrap();
        assert_eq!(back, s);
        let v = ReplicationView::new(d.path(), &back, 3_500);
        assert_eq!(v.rpo_age_seconds, Some(2.5));
        assert!(v.daemon.running);
        assert_eq!(v.suspend_ms_p99, Some(148.0));
        let text = render_rows("x", &v.rows());
        assert!(text.contains("rpo age:"), "{text}");
        let mut dead = s.clone();
        dead.pid = u32::MAX - 1;
        assert_eq!(
            ReplicationView::new(d.path(), &dead, 0).daemon.state,
            "dead"
        );
    }
}
