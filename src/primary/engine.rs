//! The core of the primary: connect to the replica, decide incremental or rescan, take a
//! cut, ship it, commit or abort it, record the state. Works on any [`CutSource`], so it
//! runs on the host against the file stand-in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bdr_bitmap::MapInfo;
use bdr_sync::ship::{ReplicaInfo, VerifyReport};
use bdr_sync::{CutIds, CutImage, CutKind, PrimaryConn, ShipOptions, ShipStats};
use serde::Serialize;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use super::progress::Reporter;
use crate::cut::{Cut, CutSource};
use crate::primary_status::{CowFill, PrimaryStatus};
use crate::state::{now_ms, ErrorNote, PrimaryState, StateDir};

type Conn = PrimaryConn<OwnedReadHalf, OwnedWriteHalf>;

/// A connection unused for this long is replaced before the next cut (the replica closes
/// idle sessions after 10 minutes).
const MAX_IDLE: Duration = Duration::from_secs(300);

/// How long a cut in flight may still finish after SIGINT/SIGTERM before it is aborted.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// What one committed cut did: the summary of `bdr sync --once`. Field names are the
/// JSON schema.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CutSummary {
    pub cut: u64,
    pub parent: Option<u64>,
    /// `incremental` or `rescan`.
    pub kind: &'static str,
    /// Why a rescan was needed (null for incremental cuts).
    pub rescan_reason: Option<String>,
    /// Regions shipped.
    pub regions: u64,
    /// Regions dirty in the bitmap at the cut.
    pub dirty_regions: u64,
    pub chunks: u64,
    pub bytes_read: u64,
    pub plain_bytes: u64,
    pub bytes_sent: u64,
    /// plain bytes / bytes sent (1.0 when no chunk was sent).
    pub compression_ratio: f64,
    /// Regions compared by hash (rescans).
    pub compared_regions: u64,
    pub suspend_ms: f64,
    pub elapsed_ms: f64,
}

impl CutSummary {
    fn new(
        ids: CutIds,
        rescan: Option<String>,
        cut: &Cut,
        st: &ShipStats,
        elapsed: Duration,
    ) -> Self {
        CutSummary {
            cut: ids.cut,
            parent: ids.parent,
            kind: if rescan.is_some() {
                "rescan"
            } else {
                "incremental"
            },
            rescan_reason: rescan,
            regions: st.regions,
            dirty_regions: cut.regions.len(),
            chunks: st.chunks,
            bytes_read: st.bytes_read,
            plain_bytes: st.plain_bytes,
            bytes_sent: st.bytes_sent,
            compression_ratio: if st.bytes_sent == 0 || st.plain_bytes == 0 {
                1.0
            } else {
                st.plain_bytes as f64 / st.bytes_sent as f64
            },
            compared_regions: st.compared,
            suspend_ms: ms(cut.suspend),
            elapsed_ms: ms(elapsed),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The result of one step.
#[derive(Debug)]
pub enum Step {
    Committed(CutSummary),
    /// Nothing was dirty and the replica is at our last cut: no cut needed.
    InSync,
}

/// The signal to stop was given and the cut in flight was aborted.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "stopped by a signal; the cut in flight was aborted and its regions merged back",
        )
    }
}

impl std::error::Error for Interrupted {}

/// Why the next cut must be a rescan, if it must.
pub fn rescan_reason(
    state: &PrimaryState,
    replica: &ReplicaInfo,
    generation: u64,
) -> Option<String> {
    match (replica.last_cut, state.last_cut) {
        (None, _) => Some("the replica is new (no committed cut)".to_string()),
        (Some(r), mine) if Some(r) != mine => Some(format!(
            "the replica is at cut {r}, the last cut this primary committed is {}",
            mine.map_or("none".to_string(), |c| c.to_string())
        )),
        _ if state.generation != Some(generation) => Some(format!(
            "the dirty bitmap is generation {generation:016x}, the state knows {} \
             (bits lost: module reload, reboot or unclean detach)",
            state
                .generation
                .map_or("none".to_string(), |g| format!("{g:016x}"))
        )),
        _ => None,
    }
}

/// Resolves when `stop` becomes true (never if the sender is gone without it).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The primary's side of one volume.
pub struct Replicator<'a> {
    source: &'a mut dyn CutSource,
    dir: StateDir,
    state: PrimaryState,
    status: PrimaryStatus,
    peer: String,
    opts: ShipOptions,
    conn: Option<(Conn, Instant)>,
}

impl<'a> Replicator<'a> {
    /// `dir` must be locked ([`StateDir::open_locked`]); `mode` names the command in the
    /// status file.
    pub fn new(
        source: &'a mut dyn CutSource,
        dir: StateDir,
        peer: &str,
        mode: &str,
        opts: ShipOptions,
    ) -> Result<Self> {
        let state = dir.load_or_init()?;
        let status = PrimaryStatus {
            pid: std::process::id(),
            mode: mode.to_string(),
            state: "starting".to_string(),
            peer: peer.to_string(),
            volume: state.volume.clone(),
            started_unix_ms: now_ms(),
            last_cut: state.last_cut,
            last_cut_taken_unix_ms: state.last_cut_taken_unix_ms,
            last_cut_committed_unix_ms: state.last_cut_committed_unix_ms,
            in_sync_unix_ms: state.last_cut_taken_unix_ms,
            last_error: state.last_error.clone(),
            ..Default::default()
        };
        let mut r = Replicator {
            source,
            dir,
            state,
            status,
            peer: peer.to_string(),
            opts,
            conn: None,
        };
        // Keep the suspend history and counters of earlier runs.
        if let Ok(Some(old)) = PrimaryStatus::read(r.dir.path()) {
            r.status.suspend_ms_recent = old.suspend_ms_recent;
            r.status.suspend_ms_last = old.suspend_ms_last;
            r.status.cuts_committed = old.cuts_committed;
            r.status.cuts_aborted = old.cuts_aborted;
        }
        r.set_state("starting");
        Ok(r)
    }

    pub fn state(&self) -> &PrimaryState {
        &self.state
    }

    /// Rewrites the status file with `what` as the daemon state.
    pub fn set_state(&mut self, what: &str) {
        self.status.state = what.to_string();
        if what != "backoff" {
            self.status.next_retry_unix_ms = None;
        }
        if let Err(e) = self.status.write(self.dir.path()) {
            tracing::warn!(error = %format!("{e:#}"), "cannot write the status file");
        }
    }

    pub fn set_backoff(&mut self, retry_in: Duration) {
        self.status.next_retry_unix_ms = Some(now_ms() + retry_in.as_millis() as u64);
        self.set_state("backoff");
    }

    fn note_info(&mut self, info: &MapInfo) {
        let g = info.geometry;
        self.status.region_bytes = g.region_bytes();
        self.status.pending_regions = info.active_regions + info.frozen_regions;
        self.status.pending_bytes = self
            .status
            .pending_regions
            .saturating_mul(g.region_bytes())
            .min(g.dev_bytes());
    }

    fn sample_cow(&mut self) {
        if let Some(c) = self.source.cow_usage() {
            self.status.cow = Some(CowFill {
                used_bytes: c.used_bytes,
                total_bytes: c.total_bytes,
                invalid: c.invalid,
            });
        }
    }

    /// Records an error in the state and the status (and drops the connection).
    pub fn record_error(&mut self, e: &anyhow::Error) {
        self.conn = None;
        if e.downcast_ref::<Interrupted>().is_some() {
            return;
        }
        let note = ErrorNote::now(format!("{e:#}"));
        self.status.last_error = Some(note.clone());
        self.state.last_error = Some(note);
        if let Err(e) = self.dir.save(&self.state) {
            tracing::warn!(error = %format!("{e:#}"), "cannot save the state");
        }
        self.set_state("error");
    }

    async fn connect(&mut self, info: &MapInfo) -> Result<()> {
        if let Some((_, used)) = &self.conn {
            if used.elapsed() < MAX_IDLE {
                return Ok(());
            }
            self.conn = None;
        }
        self.set_state("connecting");
        let volume = self.state.volume_bytes()?;
        let t = tokio::time::timeout(
            self.opts.reply_timeout,
            PrimaryConn::connect(self.peer.as_str(), volume, info.geometry, self.opts.clone()),
        )
        .await;
        let conn = match t {
            Err(_) => return Err(anyhow!("connect to the replica {}: timed out", self.peer)),
            Ok(r) => r.with_context(|| format!("replica {}", self.peer))?,
        };
        tracing::info!(
            peer = %self.peer,
            replica_last_cut = ?conn.replica().last_cut,
            "connected to the replica"
        );
        self.conn = Some((conn, Instant::now()));
        Ok(())
    }

    /// One step: connect if needed, take a cut, ship it (incremental, or a rescan when
    /// [`rescan_reason`] says so), commit or abort it. With `skip_clean`, no cut is taken
    /// when nothing is dirty and no rescan is needed.
    /// Any error is recorded in the state and status files and drops the connection.
    pub async fn step(&mut self, skip_clean: bool, stop: &watch::Receiver<bool>) -> Result<Step> {
        let r = self.step_inner(skip_clean, stop).await;
        if let Err(e) = &r {
            self.record_error(e);
        }
        r
    }

    async fn step_inner(&mut self, skip_clean: bool, stop: &watch::Receiver<bool>) -> Result<Step> {
        let info = self.source.info()?;
        self.note_info(&info);
        self.connect(&info).await?;
        let replica = self.conn.as_ref().expect("connected").0.replica().clone();
        let pre = rescan_reason(&self.state, &replica, info.generation.0);
        if skip_clean && pre.is_none() && info.active_regions == 0 && info.frozen_regions == 0 {
            self.status.in_sync_unix_ms = Some(now_ms());
            self.set_state("idle");
            return Ok(Step::InSync);
        }
        self.set_state("cutting");
        let taken_ms = now_ms();
        let cut = tokio::task::block_in_place(|| self.source.take())?;
        self.status.record_suspend(ms(cut.suspend));
        if cut.geometry != info.geometry {
            let (was, now) = (info.geometry, cut.geometry);
            tokio::task::block_in_place(|| self.source.abort(cut))?;
            return Err(anyhow!(
                "the volume's geometry changed under the cut ({was:?} -> {now:?}); \
                 the replica needs a rescan from a restarted daemon"
            ));
        }
        // The bitmap may have been recreated between info() and take().
        let rescan = rescan_reason(&self.state, &replica, cut.generation.0);
        let ids = self.conn.as_ref().expect("connected").0.next_cut_ids();
        self.status.current_cut = Some(ids.cut);
        self.sample_cow();
        self.set_state(if rescan.is_some() {
            "rescanning"
        } else {
            "shipping"
        });
        tracing::info!(
            cut = ids.cut,
            parent = ?ids.parent,
            regions = cut.regions.len(),
            suspend_ms = ms(cut.suspend),
            rescan = rescan.as_deref().unwrap_or("no"),
            "cut taken"
        );
        let t0 = Instant::now();
        let shipped = self.ship(&cut, ids, rescan.is_some(), stop).await;
        self.sample_cow();
        self.status.current_cut = None;
        let cow_invalid = self.source.cow_usage().is_some_and(|c| c.invalid);
        let shipped = if cow_invalid {
            shipped.and_then(|_| {
                Err(anyhow!(
                    "the copy-on-write store overflowed during cut {}: the image may be \
                     invalid, the next cut rescans; use a larger --cow-size",
                    ids.cut
                ))
            })
        } else {
            shipped
        };
        let stats = match shipped {
            Ok(st) => st,
            Err(e) => {
                self.status.cuts_aborted += 1;
                if cow_invalid {
                    // The replica may hold a bad image: force a rescan next time.
                    self.state.last_cut = None;
                }
                if let Err(ae) = tokio::task::block_in_place(|| self.source.abort(cut)) {
                    tracing::error!(
                        error = %format!("{ae:#}"),
                        "cannot merge the cut's regions back; they stay frozen and are \
                         merged back at the next cut"
                    );
                }
                return Err(e);
            }
        };
        let summary = CutSummary::new(ids, rescan, &cut, &stats, t0.elapsed());
        // State first: a crash before the ack leaves frozen bits that the next cut merges
        // back and ships again; a crash after it finds the replica at our last cut.
        self.state.last_cut = Some(ids.cut);
        self.state.generation = Some(cut.generation.0);
        self.state.bitmap_id = Some(info.id.clone());
        self.state.last_cut_taken_unix_ms = Some(taken_ms);
        self.state.last_cut_committed_unix_ms = Some(now_ms());
        let generation = cut.generation;
        self.dir.save(&self.state)?;
        tokio::task::block_in_place(|| self.source.commit(cut))
            .with_context(|| format!("acknowledge cut {} in bitmap {generation}", ids.cut))?;
        if let Some((_, used)) = &mut self.conn {
            *used = Instant::now();
        }
        self.status.last_cut = self.state.last_cut;
        self.status.last_cut_taken_unix_ms = self.state.last_cut_taken_unix_ms;
        self.status.last_cut_committed_unix_ms = self.state.last_cut_committed_unix_ms;
        self.status.in_sync_unix_ms = Some(taken_ms);
        self.status.cuts_committed += 1;
        if let Ok(i) = self.source.info() {
            self.note_info(&i);
        }
        self.set_state("idle");
        tracing::info!(
            cut = summary.cut,
            kind = summary.kind,
            regions = summary.regions,
            bytes = summary.plain_bytes,
            bytes_sent = summary.bytes_sent,
            ratio = format!("{:.2}", summary.compression_ratio),
            suspend_ms = format!("{:.1}", summary.suspend_ms),
            elapsed_ms = format!("{:.0}", summary.elapsed_ms),
            "cut committed"
        );
        Ok(Step::Committed(summary))
    }

    /// Ships `cut`; on a stop signal the cut gets [`STOP_GRACE`] to finish.
    async fn ship(
        &mut self,
        cut: &Cut,
        ids: CutIds,
        rescan: bool,
        stop: &watch::Receiver<bool>,
    ) -> Result<ShipStats> {
        let conn = &mut self.conn.as_mut().expect("connected").0;
        let image: Arc<dyn CutImage> = cut.image.clone();
        let mut reporter = Reporter::new("rescan");
        let mut progress = |p| reporter.update(p);
        let fut = async {
            if rescan {
                conn.ship_rescan(image, ids, &mut progress).await
            } else {
                conn.ship_cut(image, &cut.regions, ids, CutKind::Incremental)
                    .await
            }
        };
        tokio::pin!(fut);
        let res = tokio::select! {
            r = &mut fut => r,
            _ = stopped(stop.clone()) => {
                tracing::info!(cut = ids.cut, "stopping: letting the cut in flight finish");
                match tokio::time::timeout(STOP_GRACE, &mut fut).await {
                    Ok(r) => r,
                    Err(_) => return Err(Interrupted.into()),
                }
            }
        };
        res.with_context(|| format!("cut {} to {}", ids.cut, self.peer))
    }

    /// Takes a cut, compares it with the replica's committed content by hashes, and
    /// aborts the cut (its regions merged back: nothing is lost).
    pub async fn verify(&mut self) -> Result<VerifyReport> {
        let r = self.verify_inner().await;
        if let Err(e) = &r {
            self.record_error(e);
        }
        r
    }

    async fn verify_inner(&mut self) -> Result<VerifyReport> {
        let info = self.source.info()?;
        self.note_info(&info);
        self.connect(&info).await?;
        self.set_state("cutting");
        let cut = tokio::task::block_in_place(|| self.source.take())?;
        self.set_state("verifying");
        let image: Arc<dyn CutImage> = cut.image.clone();
        let conn = &mut self.conn.as_mut().expect("connected").0;
        let mut reporter = Reporter::new("verify");
        let res = conn.verify(image, &mut |p| reporter.update(p)).await;
        drop(reporter);
        let aborted = tokio::task::block_in_place(|| self.source.abort(cut));
        let report = res.with_context(|| format!("verify against {}", self.peer))?;
        aborted.context("merge the verify cut's regions back")?;
        Ok(report)
    }

    /// Closes the connection and marks the status stopped.
    pub async fn finish(mut self) {
        if let Some((c, _)) = self.conn.take() {
            c.close().await;
        }
        self.set_state("stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(last_cut: Option<u64>, generation: Option<u64>) -> PrimaryState {
        PrimaryState {
            volume: "00".repeat(16),
            bitmap_id: None,
            generation,
            continued_from: None,
            last_cut,
            last_cut_taken_unix_ms: None,
            last_cut_committed_unix_ms: None,
            last_error: None,
        }
    }

    fn rep(last_cut: Option<u64>) -> ReplicaInfo {
        ReplicaInfo {
            volume: None,
            last_cut,
            dev_bytes: 0,
        }
    }

    #[test]
    fn rescan_rules() {
        let r = rescan_reason(&st(Some(3), Some(9)), &rep(None), 9).unwrap();
        assert!(r.contains("new"), "{r}");
        let r = rescan_reason(&st(Some(3), Some(9)), &rep(Some(4)), 9).unwrap();
        assert!(r.contains("cut 4") && r.contains("is 3"), "{r}");
        let r = rescan_reason(&st(None, Some(9)), &rep(Some(4)), 9).unwrap();
        assert!(r.contains("none"), "{r}");
        let r = rescan_reason(&st(Some(3), Some(9)), &rep(Some(3)), 10).unwrap();
        assert!(r.contains("generation 000000000000000a"), "{r}");
        assert!(rescan_reason(&st(Some(3), None), &rep(Some(3)), 10).is_some());
        assert_eq!(rescan_reason(&st(Some(3), Some(9)), &rep(Some(3)), 9), None);
    }
}
