//! Replays `replica_session` inputs (files, or every file of the directories given) through
//! the property, on stable, and prints what they made the replica do: how many inputs
//! reached each behaviour, and the totals. A quick look at what a fuzzing run's corpus
//! covers, e.g. whether multi-pass cuts commit and crash:
//!
//! ```sh
//! cargo run --release --example corpus_stats corpus/replica_session
//! ```

use std::fs;
use std::path::PathBuf;

use arbitrary::{Arbitrary, Unstructured};
use bdr_fuzz::replica::{self, Input, Scratch, Stats};

fn main() {
    let mut files: Vec<PathBuf> = Vec::new();
    for a in std::env::args_os().skip(1) {
        let p = PathBuf::from(a);
        match fs::read_dir(&p) {
            Ok(rd) => files.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_file())),
            Err(_) => files.push(p),
        }
    }
    files.sort();
    let scratch = Scratch::new();
    let (mut total, mut decoded) = (Stats::default(), 0);
    let mut reached: Vec<(&str, u32)> = Vec::new();
    for f in &files {
        let bytes = fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(&bytes)) else {
            continue;
        };
        decoded += 1;
        let s = replica::check(&scratch, &input);
        for (i, (name, n)) in [
            ("commits", s.commits),
            ("crashes at commit", s.crashes_at_commit),
            ("replays", s.replayed),
            ("CutPass accepted", s.passes),
            ("CutPass refused", s.passes_refused),
            ("multi-pass commits", s.multi_pass_commits),
            (
                "multi-pass commits, a region rewritten",
                s.rewritten_commits,
            ),
            ("crashes committing a multi-pass cut", s.multi_pass_crashes),
        ]
        .into_iter()
        .enumerate()
        {
            if reached.len() <= i {
                reached.push((name, 0));
            }
            reached[i].1 += u32::from(n > 0);
        }
        total += s;
    }
    println!(
        "{} files, {decoded} inputs replayed; inputs reaching:",
        files.len()
    );
    for (name, n) in reached {
        println!("  {name:40} {n}");
    }
    println!("totals: {total:#?}");
}
