//! Arbitrary bytes through the frame decoders. See `bdr_fuzz::frame`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: bdr_fuzz::frame::CountingAlloc = bdr_fuzz::frame::CountingAlloc;

fuzz_target!(|data: &[u8]| {
    bdr_fuzz::frame::check(data);
});
