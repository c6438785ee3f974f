//! Replays the committed seeds and regression inputs of both fuzz targets through their
//! properties, on stable, without libFuzzer: `cargo test` in `fuzz/`. A crash artifact
//! copied into `regressions/<target>/` becomes a test here.

use std::fs;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use bdr_fuzz::frame::CountingAlloc;
use bdr_fuzz::replica::{self, Input, Scratch, Stats};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v = Vec::new();
    for dir in ["seeds", "regressions"] {
        if let Ok(rd) = fs::read_dir(root.join(dir).join(target)) {
            v.extend(rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
        }
    }
    v.sort();
    v
}

#[test]
fn frame_decode_inputs() {
    let files = inputs("frame_decode");
    assert!(!files.is_empty());
    for f in files {
        eprintln!("{}", f.display());
        bdr_fuzz::frame::check(&fs::read(&f).unwrap());
    }
}

#[test]
fn replica_session_inputs() {
    let files = inputs("replica_session");
    assert!(!files.is_empty());
    let scratch = Scratch::new();
    let mut total = Stats::default();
    for f in files {
        eprintln!("{}", f.display());
        let bytes = fs::read(&f).unwrap();
        let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(&bytes)) else {
            continue;
        };
        total += replica::check(&scratch, &input);
    }
    // The seeds reach what the target is about.
    assert!(total.commits > 0, "{total:?}");
    assert!(total.crashes_at_commit > 0, "{total:?}");
    assert!(total.replayed > 0, "{total:?}");
    assert!(total.torn > 0, "{total:?}");
    assert!(total.multi_pass_commits > 0, "{total:?}");
    assert!(total.passes_refused > 0, "{total:?}");
    assert!(total.multi_pass_crashes > 0, "{total:?}");
}
