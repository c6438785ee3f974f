//! `bdr primary run`, `bdr sync --once`, `bdr verify`.

use std::fmt::Write as _;

use anyhow::{bail, Result};
use bdr_sync::ShipOptions;
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::daemon::{self, LoopOptions};
use super::engine::{CutSummary, PrecopyOptions, Replicator, Step};
use super::source;
use crate::cli::{PrimaryRunArgs, ShipArgs, SyncArgs, VerifyArgs};
use crate::config::required;
use crate::size::format_bytes;
use crate::state::StateDir;

/// Time between the starts of two cuts when neither `--interval` nor the config gives one.
pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A multi-threaded runtime (ship pipelines reads and compression across cores).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// A receiver that becomes true at the first SIGINT or SIGTERM. Call inside the runtime.
pub fn stop_on_signals() -> Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{which}: stopping");
        let _ = tx.send(true);
        // Keep the handlers installed (a second signal must not kill us mid-abort).
        loop {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
    });
    Ok(rx)
}

/// `bdr primary run NAME --peer ADDR --interval D`.
pub fn primary_run(a: &PrimaryRunArgs) -> Result<()> {
    let peer = required(a.peer.clone(), "--peer", &a.name)?;
    crate::priority::yield_to_the_primary();
    let interval = a.interval.unwrap_or(DEFAULT_INTERVAL);
    let dir = StateDir::open_locked(&source::state_dir(&a.name, &a.source))?;
    let mut src = source::open(&a.name, &a.source)?;
    runtime()?.block_on(async {
        let stop = stop_on_signals()?;
        let mut rep = Replicator::new(&mut *src, dir, &peer, "primary run", ship_options(&a.ship))?;
        rep.set_precopy(precopy_options(&a.ship));
        tracing::info!(
            volume = %a.name,
            peer = %peer,
            interval_ms = interval.as_millis() as u64,
            last_cut = ?rep.state().last_cut,
            "replication daemon started"
        );
        let r = daemon::run(&mut rep, &LoopOptions::new(interval), stop).await;
        rep.finish().await;
        tracing::info!("replication daemon stopped");
        r
    })
}

fn ship_options(a: &ShipArgs) -> ShipOptions {
    let mut o = ShipOptions::default();
    if let Some(l) = a.zstd_level {
        o.zstd_level = l;
    }
    o
}

fn precopy_options(a: &ShipArgs) -> PrecopyOptions {
    if !a.precopy() {
        PrecopyOptions::disabled()
    } else {
        PrecopyOptions::default()
    }
}

/// The human summary of one cut.
pub fn render_summary(s: &CutSummary) -> String {
    let mut out = format!(
        "cut {} ({}{}) committed by the replica\n",
        s.cut,
        s.kind,
        s.parent.map_or(String::new(), |p| format!(", parent {p}"))
    );
    let mut rows: Vec<(&str, String)> = Vec::new();
    if let Some(r) = &s.rescan_reason {
        rows.push(("rescan", r.clone()));
        rows.push(("compared", format!("{} regions", s.compared_regions)));
    }
    rows.extend([
        (
            "regions",
            format!("{} shipped ({} dirty)", s.regions, s.dirty_regions),
        ),
        (
            "bytes read",
            format!("{} ({} bytes)", format_bytes(s.bytes_read), s.bytes_read),
        ),
        (
            "bytes sent",
            format!("{} ({} bytes)", format_bytes(s.bytes_sent), s.bytes_sent),
        ),
        ("compression", format!("{:.2}x", s.compression_ratio)),
        ("suspend", format!("{:.1} ms", s.suspend_ms)),
        (
            "pre-copy",
            if s.precopy_passes == 0 {
                "none".to_string()
            } else {
                format!(
                    "{} passes, {} regions from the live device, residue {} regions",
                    s.precopy_passes, s.precopy_regions, s.residue_regions
                )
            },
        ),
        (
            "snapshot",
            format!("{:.0} ms of the cut's {:.0} ms", s.snapshot_ms, s.cut_ms),
        ),
        ("time", format!("{:.3} s", s.elapsed_ms / 1000.0)),
    ]);
    for (k, v) in rows {
        let _ = writeln!(out, "  {:<12} {v}", format!("{k}:"));
    }
    out
}

/// `bdr sync --once NAME --peer ADDR`.
pub fn sync_once(a: &SyncArgs) -> Result<()> {
    let peer = required(a.peer.clone(), "--peer", &a.name)?;
    crate::priority::yield_to_the_primary();
    let dir = StateDir::open_locked(&source::state_dir(&a.name, &a.source))?;
    let mut src = source::open(&a.name, &a.source)?;
    let step = runtime()?.block_on(async {
        let stop = stop_on_signals()?;
        let mut rep = Replicator::new(&mut *src, dir, &peer, "sync --once", ship_options(&a.ship))?;
        rep.set_precopy(precopy_options(&a.ship));
        let r = rep.step(false, &stop).await;
        rep.finish().await;
        r
    })?;
    let Step::Committed(s) = step else {
        bail!("no cut was taken");
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render_summary(&s));
    }
    Ok(())
}

#[derive(Serialize)]
struct RangeJson {
    offset: u64,
    length: u64,
}

#[derive(Serialize)]
struct VerifyJson {
    /// No difference that the next cut would not ship (pending ones are listed apart).
    identical: bool,
    differing: Vec<RangeJson>,
    pending: Vec<RangeJson>,
    replica_cut: Option<u64>,
    rescan_due: Option<String>,
    compared_regions: u64,
    differing_regions: u64,
    pending_regions: u64,
    bytes_read: u64,
    elapsed_ms: f64,
}

fn ranges_json(v: &[std::ops::Range<u64>]) -> Vec<RangeJson> {
    v.iter()
        .map(|r| RangeJson {
            offset: r.start,
            length: r.end - r.start,
        })
        .collect()
}

fn print_ranges(v: &[std::ops::Range<u64>]) {
    for r in v {
        println!(
            "  bytes {}..{} ({})",
            r.start,
            r.end,
            format_bytes(r.end - r.start)
        );
    }
}

/// `bdr verify NAME --peer ADDR`: exit 1 when anything differs that the next cut would not
/// ship. Regions written since the replica's cut are reported apart, as pending.
pub fn verify(a: &VerifyArgs) -> Result<()> {
    let peer = required(a.peer.clone(), "--peer", &a.name)?;
    let dir = StateDir::open_locked(&source::state_dir(&a.name, &a.source))?;
    let mut src = source::open(&a.name, &a.source)?;
    let v = runtime()?.block_on(async {
        let mut rep = Replicator::new(&mut *src, dir, &peer, "verify", ShipOptions::default())?;
        let r = rep.verify().await;
        rep.finish().await;
        r
    })?;
    let st = &v.stats;
    let cut = v
        .replica_cut
        .map_or_else(|| "none".to_string(), |c| c.to_string());
    if a.json {
        let j = VerifyJson {
            identical: v.differing.is_empty(),
            differing: ranges_json(&v.differing),
            pending: ranges_json(&v.pending),
            replica_cut: v.replica_cut,
            rescan_due: v.rescan_due.clone(),
            compared_regions: st.compared,
            differing_regions: v.differing_regions,
            pending_regions: v.pending_regions,
            bytes_read: st.bytes_read,
            elapsed_ms: st.elapsed.as_secs_f64() * 1000.0,
        };
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        if v.differing.is_empty() {
            println!(
                "identical: {} regions compared, {} read (replica at cut {cut})",
                st.compared,
                format_bytes(st.bytes_read)
            );
        } else {
            println!(
                "{} of {} regions differ, in {} ranges:",
                v.differing_regions,
                st.compared,
                v.differing.len()
            );
            print_ranges(&v.differing);
            if let Some(reason) = &v.rescan_due {
                println!(
                    "the replica is not at the primary's last cut ({reason}): the next cut rescans"
                );
            }
        }
        if !v.pending.is_empty() {
            println!(
                "{} regions written since cut {cut} differ as expected (the next cut ships them):",
                v.pending_regions
            );
            print_ranges(&v.pending);
        }
    }
    if !v.differing.is_empty() {
        bail!(
            "the replica differs from the primary in {} ranges",
            v.differing.len()
        );
    }
    Ok(())
}
