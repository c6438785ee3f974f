//! Progress of rescans and verifies: an indicatif bar when stderr is a terminal, periodic
//! tracing lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use bdr_sync::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// Seconds between plain progress lines.
const LOG_EVERY: Duration = Duration::from_secs(5);

pub struct Reporter {
    what: &'static str,
    bar: Option<ProgressBar>,
    phase: Option<&'static str>,
    last_log: Instant,
}

impl Reporter {
    /// A reporter for a `what` ("rescan", "verify"); a bar only on a terminal.
    pub fn new(what: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} (eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        });
        Reporter {
            what,
            bar,
            phase: None,
            last_log: Instant::now(),
        }
    }

    pub fn update(&mut self, p: Progress) {
        let (phase, done, total, msg) = match p {
            Progress::Comparing {
                done,
                total,
                differing,
            } => (
                "comparing",
                done,
                total,
                format!("regions, {differing} differing"),
            ),
            Progress::Shipping { done, total } => ("shipping", done, total, "chunks".to_string()),
        };
        if let Some(b) = &self.bar {
            if self.phase != Some(phase) {
                b.set_prefix(format!("{} {phase}", self.what));
                b.set_length(total);
            }
            b.set_position(done);
            b.set_message(msg);
        } else if self.phase != Some(phase) || self.last_log.elapsed() >= LOG_EVERY || done == total
        {
            self.last_log = Instant::now();
            tracing::info!(what = self.what, phase, done, total, "{msg}");
        }
        self.phase = Some(phase);
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish();
    }
}
