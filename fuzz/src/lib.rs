//! The properties behind the `cargo fuzz` targets of bdr-sync, in a library so they also
//! run on stable: `tests/replay.rs` replays the committed seeds and regression inputs
//! through them without libFuzzer. See `docs/fuzzing.md`.

pub mod frame;
pub mod replica;
