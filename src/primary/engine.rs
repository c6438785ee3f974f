//! The core of the primary: connect to the replica, decide incremental or rescan, take a
//! cut, ship it, commit or abort it, record the state. Works on any [`CutSource`], so it
//! runs on the host against the file stand-in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bdr_bitmap::MapInfo;
use bdr_sync::ship::{Pass, ReplicaInfo, ShipError, VerifyReport};
use bdr_sync::{CutIds, CutImage, CutKind, PrimaryConn, ShipOptions, ShipStats};
use serde::Serialize;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use super::progress::Reporter;
use crate::cut::{Cut, CutSource};
use crate::primary_status::{CowFill, CutShape, PrimaryStatus};
use crate::state::{now_ms, ErrorNote, PrimaryState, StateDir};

type Conn = PrimaryConn<OwnedReadHalf, OwnedWriteHalf>;

/// A connection unused for this long is replaced before the next cut (the replica closes
/// idle sessions after 10 minutes).
const MAX_IDLE: Duration = Duration::from_secs(300);

/// How long a cut in flight may still finish after SIGINT/SIGTERM before it is aborted.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Pre-copy (see [`crate::cut`]): before a cut, the dirty regions are copied from the live
/// device in passes while the residue shrinks; the cut's snapshot then only has to live
/// while the last residue ships.
#[derive(Clone, Debug)]
pub struct PrecopyOptions {
    pub enabled: bool,
    /// Most pre-copy passes before the cut.
    pub max_passes: u32,
    /// No pre-copy when this few regions or fewer are dirty, and no further pass when this
    /// few were written during the last one: the cut ships them.
    pub min_regions: u64,
    /// Another pass only if the regions written during the last pass are at most this
    /// fraction of that pass (the residue shrinks); otherwise writes keep up with the copy
    /// and the cut is taken.
    pub shrink: f64,
}

impl Default for PrecopyOptions {
    fn default() -> Self {
        PrecopyOptions {
            enabled: true,
            max_passes: 4,
            min_regions: 8,
            shrink: 0.5,
        }
    }
}

impl PrecopyOptions {
    pub fn disabled() -> Self {
        PrecopyOptions {
            enabled: false,
            ..Default::default()
        }
    }

    /// Whether to run pre-copy pass number `done + 1`, `pending` regions being dirty now
    /// and the previous pass (if any) having had `last` regions.
    pub fn another_pass(&self, done: u32, last: Option<u64>, pending: u64) -> bool {
        if done >= self.max_passes || pending <= self.min_regions {
            return false;
        }
        match last {
            None => true,
            Some(l) => (pending as f64) <= self.shrink * l as f64,
        }
    }
}

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
    /// Regions shipped (distinct; a region of several passes counts once).
    pub regions: u64,
    /// Regions dirty in the bitmap at the cut.
    pub dirty_regions: u64,
    /// Chunks sent (pre-copy may send a region more than once).
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
    /// Pre-copy passes before the cut (0: pre-copy off, not worth it, or a rescan).
    pub precopy_passes: u32,
    /// Chunks copied from the live device by the pre-copy passes.
    pub precopy_regions: u64,
    /// Regions read from the cut's snapshot (the residue; all of them without pre-copy).
    pub residue_regions: u64,
    /// From taking the cut to releasing its snapshot after the replica committed.
    pub snapshot_ms: f64,
    /// From the first pre-copy pass (or the cut) to the release: the cut's duration.
    pub cut_ms: f64,
}

impl CutSummary {
    fn new(
        ids: CutIds,
        rescan: Option<String>,
        cut: &Cut,
        st: &ShipStats,
        elapsed: Duration,
        shape: &CutShape,
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
            precopy_passes: shape.precopy_passes,
            precopy_regions: shape.precopy_regions,
            residue_regions: shape.residue_regions,
            snapshot_ms: shape.snapshot_ms,
            cut_ms: shape.cut_ms,
        }
    }
}

/// A cut taken and shipped, not yet committed on the primary's side.
struct Shipped {
    cut: Cut,
    stats: ShipStats,
    rescan: Option<String>,
    ids: CutIds,
    /// When the cut was taken (wall clock, for the RPO).
    taken_ms: u64,
    /// When `take` started: the snapshot's life starts there.
    snapshot_t0: Instant,
    /// When the snapshot was released, if before the commit (pre-copy).
    snapshot_end: Option<Instant>,
    precopy_passes: u32,
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
    precopy: PrecopyOptions,
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
            precopy: PrecopyOptions::default(),
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

    /// Pre-copy settings (default: on).
    pub fn set_precopy(&mut self, p: PrecopyOptions) {
        self.precopy = p;
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
        self.adopt_unrecorded_cut(&replica, &info)?;
        let pre = rescan_reason(&self.state, &replica, info.generation.0);
        if skip_clean && pre.is_none() && info.active_regions == 0 && info.frozen_regions == 0 {
            self.status.in_sync_unix_ms = Some(now_ms());
            self.set_state("idle");
            return Ok(Step::InSync);
        }
        let t_cut = Instant::now();
        let ids = self.conn.as_ref().expect("connected").0.next_cut_ids();
        let dirty = info.active_regions + info.frozen_regions;
        let precopy =
            self.precopy.enabled && pre.is_none() && self.precopy.another_pass(0, None, dirty);
        let shipped = if precopy {
            self.precopy_and_ship(ids, &info, stop).await?
        } else {
            self.take_and_ship(ids, &info, stop).await?
        };
        let Shipped {
            cut,
            stats,
            rescan,
            ids,
            taken_ms,
            snapshot_t0,
            snapshot_end,
            precopy_passes,
        } = shipped;
        // State first: a crash before the ack leaves frozen bits that the next cut merges
        // back and ships again; a crash after it finds the replica at our last cut.
        self.state.last_cut = Some(ids.cut);
        self.state.generation = Some(cut.generation.0);
        self.state.bitmap_id = Some(info.id.clone());
        self.state.last_cut_taken_unix_ms = Some(taken_ms);
        self.state.last_cut_committed_unix_ms = Some(now_ms());
        let generation = cut.generation;
        self.dir.save(&self.state)?;
        let residue_regions = *stats.pass_regions.last().unwrap_or(&0);
        let shape_of = |cut_done: Instant| CutShape {
            precopy_passes,
            precopy_regions: stats.pass_regions.iter().rev().skip(1).sum::<u64>(),
            residue_regions,
            snapshot_ms: ms(snapshot_end.unwrap_or(cut_done) - snapshot_t0),
            cut_ms: ms(cut_done - t_cut),
        };
        // Timings are filled in once the snapshot is released.
        let mut summary = CutSummary::new(
            ids,
            rescan,
            &cut,
            &stats,
            Duration::ZERO,
            &CutShape::default(),
        );
        tokio::task::block_in_place(|| self.source.commit(cut))
            .with_context(|| format!("acknowledge cut {} in bitmap {generation}", ids.cut))?;
        let done = Instant::now();
        let shape = shape_of(done);
        summary.elapsed_ms = ms(done - t_cut);
        summary.precopy_passes = shape.precopy_passes;
        summary.precopy_regions = shape.precopy_regions;
        summary.residue_regions = shape.residue_regions;
        summary.snapshot_ms = shape.snapshot_ms;
        summary.cut_ms = shape.cut_ms;
        self.status.last_cut_shape = Some(shape);
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
            precopy_passes = summary.precopy_passes,
            precopy_regions = summary.precopy_regions,
            residue_regions = summary.residue_regions,
            snapshot_ms = format!("{:.0}", summary.snapshot_ms),
            cut_ms = format!("{:.0}", summary.cut_ms),
            "cut committed"
        );
        Ok(Step::Committed(summary))
    }

    /// Adopts the cut a killed predecessor shipped but never recorded: the replica is
    /// exactly one cut ahead of `last_cut` (the daemon died after `CutEnd`, before saving
    /// the commit). Invariant: that is exact only while the bitmap is in the generation
    /// `last_cut` was recorded in: then every write since `last_cut` is still a bit, frozen
    /// (the adopted cut's regions, merged back and shipped again by the next cut) or active
    /// (written since); the adopted cut, taken after `last_cut` in that generation, adds
    /// nothing the bitmap lacks. Otherwise [`rescan_reason`] decides (a rescan).
    fn adopt_unrecorded_cut(&mut self, replica: &ReplicaInfo, info: &MapInfo) -> Result<()> {
        let (Some(mine), Some(theirs)) = (self.state.last_cut, replica.last_cut) else {
            return Ok(());
        };
        if theirs != mine + 1 || self.state.generation != Some(info.generation.0) {
            return Ok(());
        }
        tracing::warn!(
            cut = theirs,
            "the replica committed cut {theirs} before this primary recorded it (the daemon \
             stopped in between): adopted as the last cut, no rescan"
        );
        self.state.last_cut = Some(theirs);
        self.state.last_cut_taken_unix_ms = None;
        self.state.last_cut_committed_unix_ms = None;
        self.status.last_cut = self.state.last_cut;
        self.dir.save(&self.state)
    }

    /// Takes a cut and ships it whole (incremental, or a rescan when [`rescan_reason`] says
    /// so). On failure the cut is aborted (its regions merged back).
    async fn take_and_ship(
        &mut self,
        ids: CutIds,
        info: &MapInfo,
        stop: &watch::Receiver<bool>,
    ) -> Result<Shipped> {
        let replica = self.conn.as_ref().expect("connected").0.replica().clone();
        self.set_state("cutting");
        let taken_ms = now_ms();
        let snapshot_t0 = Instant::now();
        let cut = tokio::task::block_in_place(|| self.source.take())?;
        self.status.record_suspend(ms(cut.suspend));
        if cut.geometry != info.geometry {
            let (was, now) = (info.geometry, cut.geometry);
            tokio::task::block_in_place(|| self.source.abort(cut))?;
            return Err(geometry_changed(was, now));
        }
        // The bitmap may have been recreated between info() and take().
        let rescan = rescan_reason(&self.state, &replica, cut.generation.0);
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
        let shipped = self.ship(&cut, ids, rescan.is_some(), stop).await;
        let stats = self.finish_ship(ids, shipped);
        match stats {
            Ok(stats) => Ok(Shipped {
                cut,
                stats,
                rescan,
                ids,
                taken_ms,
                snapshot_t0,
                snapshot_end: None,
                precopy_passes: 0,
            }),
            Err(e) => {
                self.status.cuts_aborted += 1;
                if let Err(ae) = tokio::task::block_in_place(|| self.source.abort(cut)) {
                    tracing::error!(
                        error = %format!("{ae:#}"),
                        "cannot merge the cut's regions back; they stay frozen and are \
                         merged back at the next cut"
                    );
                }
                Err(e)
            }
        }
    }

    /// After shipping: the COW store must not have overflowed while the image was read.
    ///
    /// An overflow seen after the replica committed (the ship checks before `CutEnd`, so
    /// only a late overflow gets here with `Ok`) fails the cut all the same: the primary
    /// keeps its last cut, the replica is one ahead, and that mismatch makes the next cut
    /// a rescan by itself. An overflow seen before `CutEnd` left the replica where it was:
    /// the next cut is a plain incremental one of the merged-back regions.
    fn finish_ship(&mut self, ids: CutIds, shipped: Result<ShipStats>) -> Result<ShipStats> {
        self.sample_cow();
        self.status.current_cut = None;
        if self.source.cow_usage().is_some_and(|c| c.invalid) && shipped.is_ok() {
            return Err(anyhow!(
                "the copy-on-write store overflowed during cut {}: the image may be invalid, \
                 the next cut rescans; use a larger --cow-size",
                ids.cut
            ));
        }
        shipped
    }

    /// Pre-copy, then the cut: pass 1 freezes the dirty regions and copies them from the
    /// live device inside a new cut (`CutBegin`); further passes copy what was written
    /// meanwhile while that shrinks; then the cut is taken and only its residue (written
    /// since the last pass) is read from the snapshot (the last `CutPass`). The replica
    /// commits the union atomically. On any failure every frozen region is merged back.
    async fn precopy_and_ship(
        &mut self,
        ids: CutIds,
        info: &MapInfo,
        stop: &watch::Receiver<bool>,
    ) -> Result<Shipped> {
        self.set_state("precopy");
        let first = tokio::task::block_in_place(|| -> Result<_> {
            let p = self.source.precopy_pass()?;
            if p.geometry != info.geometry {
                return Err(geometry_changed(info.geometry, p.geometry));
            }
            if p.generation != info.generation {
                return Err(anyhow!(
                    "the dirty bitmap was recreated (generation {} -> {}); the next cut rescans",
                    info.generation,
                    p.generation
                ));
            }
            Ok((p, self.source.live_image()?))
        });
        let (first, live) = match first {
            Ok(x) => x,
            Err(e) => {
                if let Err(ae) = tokio::task::block_in_place(|| self.source.abort_precopy()) {
                    tracing::error!(error = %format!("{ae:#}"), "cannot merge pre-copy regions back");
                }
                return Err(e);
            }
        };
        self.status.current_cut = Some(ids.cut);
        tracing::info!(
            cut = ids.cut,
            regions = first.regions.len(),
            "pre-copy pass 1: copying from the live device"
        );
        let opts = self.precopy.clone();
        let mut cut_slot: Option<(Cut, u64, Instant)> = None;
        let mut err_slot: Option<anyhow::Error> = None;
        let mut passes = 1u32;
        let mut last = first.regions.len();
        let mut pass_suspends: Vec<Duration> = Vec::new();
        let mut released_at: Option<Instant> = None;
        let res = {
            let released = &mut released_at;
            let source = &mut *self.source;
            let geometry = info.geometry;
            let cut_slot = &mut cut_slot;
            let err_slot = &mut err_slot;
            let pass_suspends = &mut pass_suspends;
            let passes = &mut passes;
            let live_next = live.clone();
            let mut next = move |_st: &ShipStats| -> Result<Option<Pass>, ShipError> {
                if let Some((cut, _, _)) = cut_slot.as_mut() {
                    // The residue was read: the snapshot can go before the replica commits
                    // (the regions stay frozen until then).
                    return tokio::task::block_in_place(|| source.release_image(cut))
                        .map(|()| {
                            *released = Some(Instant::now());
                            None
                        })
                        .map_err(|e| {
                            let m = format!("{e:#}");
                            *err_slot = Some(e);
                            ShipError::Source(m)
                        });
                }
                let r = tokio::task::block_in_place(|| -> Result<Pass> {
                    let pending = source.precopy_pending()?;
                    if opts.another_pass(*passes, Some(last), pending) {
                        let p = source.precopy_pass()?;
                        *passes += 1;
                        last = p.regions.len();
                        pass_suspends.push(p.suspend);
                        tracing::info!(
                            pass = *passes,
                            regions = p.regions.len(),
                            suspend_ms = ms(p.suspend),
                            "pre-copy pass"
                        );
                        return Ok(Pass {
                            image: live_next.clone(),
                            regions: p.regions,
                        });
                    }
                    let taken_ms = now_ms();
                    let t0 = Instant::now();
                    let cut = source.take()?;
                    if cut.geometry != geometry {
                        let (was, now) = (geometry, cut.geometry);
                        source.abort(cut)?;
                        return Err(geometry_changed(was, now));
                    }
                    let residue = cut.residue.clone().unwrap_or_else(|| cut.regions.clone());
                    tracing::info!(
                        passes = *passes,
                        residue = residue.len(),
                        regions = cut.regions.len(),
                        suspend_ms = ms(cut.suspend),
                        "cut taken after pre-copy: shipping its residue"
                    );
                    let pass = Pass {
                        image: cut.image.clone(),
                        regions: residue,
                    };
                    *cut_slot = Some((cut, taken_ms, t0));
                    Ok(pass)
                });
                r.map(Some).map_err(|e| {
                    let m = format!("{e:#}");
                    *err_slot = Some(e);
                    ShipError::Source(m)
                })
            };
            let conn = &mut self.conn.as_mut().expect("connected").0;
            let first_pass = Pass {
                image: live,
                regions: first.regions,
            };
            let fut = conn.ship_cut_passes(first_pass, ids, CutKind::Incremental, &mut next);
            guarded(fut, ids, stop).await
        };
        for d in &pass_suspends {
            self.status.record_suspend(ms(*d));
        }
        let res = match (res, err_slot) {
            (Err(_), Some(e)) => Err(e),
            (r, _) => r.with_context(|| format!("cut {} to {}", ids.cut, self.peer)),
        };
        if let Some((cut, _, _)) = &cut_slot {
            self.status.record_suspend(ms(cut.suspend));
        }
        match (self.finish_ship(ids, res), cut_slot) {
            (Ok(stats), Some((cut, taken_ms, snapshot_t0))) => Ok(Shipped {
                cut,
                stats,
                rescan: None,
                ids,
                taken_ms,
                snapshot_t0,
                snapshot_end: released_at,
                precopy_passes: passes,
            }),
            (Ok(_), None) => {
                let _ = tokio::task::block_in_place(|| self.source.abort_precopy());
                Err(anyhow!("cut {} ended without its residue (bug)", ids.cut))
            }
            (Err(e), slot) => {
                self.status.cuts_aborted += 1;
                let aborted = tokio::task::block_in_place(|| match slot {
                    Some((cut, _, _)) => self.source.abort(cut),
                    None => self.source.abort_precopy(),
                });
                if let Err(ae) = aborted {
                    tracing::error!(
                        error = %format!("{ae:#}"),
                        "cannot merge the cut's regions back; they stay frozen and are \
                         merged back at the next cut"
                    );
                }
                Err(e)
            }
        }
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
        let source = &mut *self.source;
        let image: Arc<dyn CutImage> = cut.image.clone();
        let mut reporter = Reporter::new("rescan");
        let mut progress = |p| reporter.update(p);
        // Invariant: `CutEnd` (after which the replica commits) is sent only if the COW
        // store did not overflow while the image was read; an invalidated snapshot reads
        // back garbage, and a replica must never commit that.
        let mut check_cow = move |_: &ShipStats| -> Result<Option<Pass>, ShipError> {
            match source.cow_usage() {
                Some(c) if c.invalid => Err(ShipError::Source(
                    "the copy-on-write store overflowed while the cut was read: its image \
                     is invalid, the cut is not committed; use a larger --cow-size"
                        .into(),
                )),
                _ => Ok(None),
            }
        };
        let fut = async {
            if rescan {
                conn.ship_rescan_checked(image, ids, &mut progress, Some(&mut check_cow))
                    .await
            } else {
                let first = Pass {
                    image,
                    regions: cut.regions.clone(),
                };
                conn.ship_cut_passes(first, ids, CutKind::Incremental, &mut check_cow)
                    .await
            }
        };
        let res = guarded(fut, ids, stop).await;
        res.with_context(|| format!("cut {} to {}", ids.cut, self.peer))
    }

    /// Takes a cut, compares it with the replica's committed content by hashes, and
    /// aborts the cut (its regions merged back: nothing is lost).
    pub async fn verify(&mut self) -> Result<VerifyOutcome> {
        let r = self.verify_inner().await;
        if let Err(e) = &r {
            self.record_error(e);
        }
        r
    }

    async fn verify_inner(&mut self) -> Result<VerifyOutcome> {
        let info = self.source.info()?;
        self.note_info(&info);
        self.connect(&info).await?;
        let replica = self.conn.as_ref().expect("connected").0.replica().clone();
        self.adopt_unrecorded_cut(&replica, &info)?;
        self.set_state("cutting");
        let cut = tokio::task::block_in_place(|| self.source.take())?;
        // The cut's regions were written since the last committed cut: when the replica is
        // at that cut they may differ without anything being wrong (the next cut ships
        // them; freezing a mounted filesystem for the cut writes its superblock).
        let rescan = rescan_reason(&self.state, &replica, cut.generation.0);
        self.set_state("verifying");
        let image: Arc<dyn CutImage> = cut.image.clone();
        let conn = &mut self.conn.as_mut().expect("connected").0;
        let mut reporter = Reporter::new("verify");
        let res = conn.verify(image, &mut |p| reporter.update(p)).await;
        drop(reporter);
        let pending_regions = cut.regions.clone();
        let geometry = cut.geometry;
        let aborted = tokio::task::block_in_place(|| self.source.abort(cut));
        let report = res.with_context(|| format!("verify against {}", self.peer))?;
        aborted.context("merge the verify cut's regions back")?;
        Ok(match rescan {
            None => VerifyOutcome::split(report, &pending_regions, geometry, replica.last_cut),
            Some(reason) => VerifyOutcome {
                differing: report.differing,
                pending: Vec::new(),
                replica_cut: replica.last_cut,
                rescan_due: Some(reason),
                differing_regions: report.stats.differing,
                pending_regions: 0,
                stats: report.stats,
            },
        })
    }

    /// Closes the connection and marks the status stopped.
    pub async fn finish(mut self) {
        if let Some((c, _)) = self.conn.take() {
            c.close().await;
        }
        self.set_state("stopped");
    }
}

/// What `bdr verify` found. Invariant: a range is in `pending` only if every region it
/// covers was written since the replica's committed cut (so the next cut ships it whole);
/// any other difference is in `differing` and means the replica is wrong.
#[derive(Debug)]
pub struct VerifyOutcome {
    /// Byte ranges that differ and will not be shipped by the next cut.
    pub differing: Vec<std::ops::Range<u64>>,
    /// Byte ranges that differ because they were written since the replica's cut.
    pub pending: Vec<std::ops::Range<u64>>,
    /// The replica's committed cut.
    pub replica_cut: Option<u64>,
    /// Why the replica is not at the primary's last cut (then nothing is pending: every
    /// difference counts until a rescan ships it).
    pub rescan_due: Option<String>,
    /// Regions that differ, by class (a region is in one class).
    pub differing_regions: u64,
    pub pending_regions: u64,
    pub stats: ShipStats,
}

impl VerifyOutcome {
    /// Splits the replica's differing ranges at region bounds into those written since its
    /// cut (`written`, regions of the verify cut) and the rest.
    fn split(
        report: VerifyReport,
        written: &roaring::RoaringBitmap,
        geometry: bdr_bitmap::Geometry,
        replica_cut: Option<u64>,
    ) -> Self {
        let mut differing: Vec<std::ops::Range<u64>> = Vec::new();
        let mut pending: Vec<std::ops::Range<u64>> = Vec::new();
        let push = |v: &mut Vec<std::ops::Range<u64>>, r: std::ops::Range<u64>| match v.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => v.push(r),
        };
        let (mut nd, mut np, mut last_region) = (0u64, 0u64, None);
        for range in report.differing {
            let mut at = range.start;
            while at < range.end {
                let region = geometry.region_of_byte(at);
                let end = geometry
                    .region_byte_range(region)
                    .end
                    .min(range.end)
                    .max(at + 1);
                let is_written = u32::try_from(region).is_ok_and(|r| written.contains(r));
                if last_region != Some(region) {
                    *if is_written { &mut np } else { &mut nd } += 1;
                    last_region = Some(region);
                }
                push(
                    if is_written {
                        &mut pending
                    } else {
                        &mut differing
                    },
                    at..end,
                );
                at = end;
            }
        }
        VerifyOutcome {
            differing,
            pending,
            replica_cut,
            rescan_due: None,
            differing_regions: nd,
            pending_regions: np,
            stats: report.stats,
        }
    }
}

fn geometry_changed(was: bdr_bitmap::Geometry, now: bdr_bitmap::Geometry) -> anyhow::Error {
    anyhow!(
        "the volume's geometry changed under the cut ({was:?} -> {now:?}); \
         the replica needs a rescan from a restarted daemon"
    )
}

/// Runs a ship future; on a stop signal it gets [`STOP_GRACE`] to finish.
async fn guarded<F>(fut: F, ids: CutIds, stop: &watch::Receiver<bool>) -> Result<ShipStats>
where
    F: std::future::Future<Output = Result<ShipStats, ShipError>>,
{
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
    Ok(res?)
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

    /// Differing ranges split at region bounds: pending where the region was written since
    /// the replica's cut, differing elsewhere; neighbours of one class merge; a region split
    /// over two ranges counts once; the clipped last region works.
    #[test]
    fn verify_split_by_written_regions() {
        let g = bdr_bitmap::Geometry::new(128, (10 << 20) / 512 + 7).unwrap(); // 64 KiB, 161
        const R: u64 = 65536;
        let report = VerifyReport {
            differing: vec![
                R..3 * R,                      // regions 1 (written) and 2 (not)
                3 * R + 10..3 * R + 20,        // region 3 (written), part of it
                3 * R + 100..4 * R + 5,        // region 3 again, and 4 (written)
                160 * R..(10 << 20) + 7 * 512, // the clipped last region (not written)
            ],
            stats: ShipStats::default(),
        };
        let written: roaring::RoaringBitmap = [1u32, 3, 4, 9].into_iter().collect();
        let v = VerifyOutcome::split(report, &written, g, Some(7));
        assert_eq!(
            v.pending,
            vec![R..2 * R, 3 * R + 10..3 * R + 20, 3 * R + 100..4 * R + 5]
        );
        assert_eq!(
            v.differing,
            vec![2 * R..3 * R, 160 * R..(10 << 20) + 7 * 512]
        );
        assert_eq!((v.pending_regions, v.differing_regions), (3, 2));
        assert_eq!(v.replica_cut, Some(7));
    }
}
