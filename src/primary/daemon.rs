//! The periodic loop of `bdr primary run`: a cut each interval (or as soon as the previous
//! one committed, if that is later), exponential backoff after failures, clean stop on a
//! signal.

use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;
use tokio::time::Instant;

use super::engine::{stopped, Interrupted, Replicator, Step};

/// Exponential backoff: `first`, doubling, capped at `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The wait before the next attempt; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Timing of the loop.
#[derive(Clone, Debug)]
pub struct LoopOptions {
    pub interval: Duration,
    pub backoff_first: Duration,
    pub backoff_max: Duration,
}

impl LoopOptions {
    pub fn new(interval: Duration) -> Self {
        LoopOptions {
            interval,
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Sleeps until `t`; false if `stop` came first.
async fn sleep_until(t: Instant, stop: &watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(t) => true,
        _ = stopped(stop.clone()) => false,
    }
}

/// Replicates until `stop` becomes true. Failures are logged, recorded and retried; only
/// a failure to even record state ends the loop with an error.
pub async fn run(
    rep: &mut Replicator<'_>,
    opts: &LoopOptions,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut backoff = Backoff::new(opts.backoff_first, opts.backoff_max);
    let mut next = Instant::now();
    while !*stop.borrow() {
        if !sleep_until(next, &stop).await {
            break;
        }
        let started = Instant::now();
        match rep.step(true, &stop).await {
            Ok(Step::Committed(_)) | Ok(Step::InSync) => {
                backoff.reset();
                next = started + opts.interval;
            }
            Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
                tracing::info!("{e}");
                break;
            }
            Err(e) => {
                if *stop.borrow() {
                    tracing::info!(error = %format!("{e:#}"), "stopping after a failed cut");
                    break;
                }
                let d = backoff.next_delay();
                tracing::warn!(
                    error = %format!("{e:#}"),
                    retry_in_ms = d.as_millis() as u64,
                    "replication step failed; the cut's regions were merged back"
                );
                rep.set_backoff(d);
                next = Instant::now() + d;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let v: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(v, [1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.next_delay().as_secs(), 1);
    }
}
