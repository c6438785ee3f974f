//! The primary's side of replication: `bdr primary run`, `bdr sync --once`, `bdr verify`.
//!
//! * [`engine`] — one step: connect, take a cut, ship it (incremental or rescan), commit or
//!   abort it, record the state; on any [`CutSource`](crate::cut::CutSource);
//! * [`daemon`] — the periodic loop: intervals, backoff, signals;
//! * [`source`] — which cut source the command line asks for;
//! * [`commands`] — the commands themselves;
//! * [`progress`] — progress bar or log lines for rescans and verifies.

pub mod commands;
pub mod daemon;
pub mod engine;
pub mod progress;
pub mod source;

#[cfg(test)]
mod precopy_tests;
