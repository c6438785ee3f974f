//! End-to-end runs of the `bdr` binary that need no device-mapper.

use std::path::Path;
use std::process::{Command, Output};

fn bdr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bdr"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("BDR_KMOD")
        .output()
        .expect("run bdr")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn help_lists_commands() {
    let o = bdr(&["--help"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for cmd in ["attach", "detach", "status", "--verbose"] {
        assert!(out.contains(cmd), "--help lacks {cmd}:\n{out}");
    }
    let o = bdr(&["attach", "--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("--region-size"));
    assert!(stdout(&o).contains("--kmod"));
}

#[test]
fn no_command_is_a_usage_error() {
    let o = bdr(&[]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_region_size_is_a_usage_error() {
    for (size, want) in [
        ("48K", "not a power of two"),
        ("2K", "minimum of 4 KiB"),
        ("sixty", "not a size"),
        ("64Q", "unknown size unit"),
    ] {
        let o = bdr(&["attach", "bdr0", "/dev/null", "--region-size", size]);
        assert_eq!(o.status.code(), Some(2), "{size}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{size}: {}", stderr(&o));
    }
}

#[test]
fn missing_lower_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-disk");
    let o = bdr(&["attach", "bdr0", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.starts_with("bdr: error: "), "{e}");
    assert!(e.contains("does not exist"), "{e}");
    assert!(e.contains("no-such-disk"), "{e}");
}

#[test]
fn regular_file_lower_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let o = bdr(&["attach", "bdr0", img.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.starts_with("bdr: error: "), "{e}");
    assert!(e.contains("is not a block device"), "{e}");
    assert!(e.contains("losetup"), "{e}");
}

#[test]
fn status_without_device_mapper_fails_clearly() {
    if Path::new("/dev/mapper/control").exists() {
        eprintln!("skipped: this host has device-mapper");
        return;
    }
    for args in [&["status"][..], &["status", "--json"], &["detach", "bdr0"]] {
        let o = bdr(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let e = stderr(&o);
        assert!(
            e.starts_with("bdr: error: device-mapper not available"),
            "{args:?}: {e}"
        );
        assert!(e.contains("dm-mod"), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{args:?}: {e}");
    }
}
