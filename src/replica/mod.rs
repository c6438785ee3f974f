//! The replica's commands: `bdr replica serve`, `status`, `promote`. The replica's
//! storage and protocol are `bdr_sync::replica`; these add the runtime status file and
//! the promoted marker in the state dir:
//!
//! | file | what |
//! |------|------|
//! | `replica-status.json` | what `serve` is doing, rewritten while it runs |
//! | `promoted` | written by `promote`: a later `serve` refuses unless `--force` |

pub mod info;
pub mod promote;
pub mod serve;
pub mod status;

pub const STATUS_FILE: &str = "replica-status.json";
pub const PROMOTED_FILE: &str = "promoted";
/// `bdr_sync`'s lock file in the state dir, held by `serve`.
pub const LOCK_FILE: &str = "lock";
/// `bdr_sync`'s committed state file.
pub const STATE_FILE: &str = "state";
