//! Operation sequences against the replica's cut state machine, with crashes and
//! recoveries. See `bdr_fuzz::replica`.
#![no_main]

use std::sync::OnceLock;

use bdr_fuzz::replica::{check, Input, Scratch};
use libfuzzer_sys::fuzz_target;

/// One scratch dir (on tmpfs when there is one) per fuzzing process, reset for every input.
static SCRATCH: OnceLock<Scratch> = OnceLock::new();

fuzz_target!(|input: Input| {
    check(SCRATCH.get_or_init(Scratch::new), &input);
});
