//! End-to-end replication on the host: real `bdr` processes (`replica serve`, `primary run`,
//! `sync --once`, `verify`, `replica promote`), real TCP on 127.0.0.1, real files; the
//! primary is the file stand-in (`--stand-in-device` / `--stand-in-map`).
//!
//! Every process is killed when its guard drops, and every wait is bounded.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bdr_bitmap::{DirtyMap, FileDirtyMap, Geometry};
use serde_json::Value;

const REGION: u64 = 64 << 10;
const DEV_BYTES: u64 = 8 << 20; // 128 regions
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

fn bdr_cmd<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bdr"));
    c.args(args)
        .env("RUST_LOG", "info")
        .env_remove("BDR_KMOD")
        .stdin(Stdio::null());
    c
}

/// Runs `bdr ARGS` to completion, killing it after [`CMD_TIMEOUT`].
fn bdr<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> Output {
    let mut child = bdr_cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bdr");
    let deadline = Instant::now() + CMD_TIMEOUT;
    // Drain the pipes in threads so a chatty child never blocks.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t2 = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bdr {args:?} timed out after {CMD_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// A background `bdr` process, SIGKILLed on drop unless it was stopped.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn<S: AsRef<OsStr>>(args: &[S], log: &Path) -> Proc {
        let f = File::create(log).unwrap();
        let child = bdr_cmd(args)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("spawn bdr");
        Proc {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("process did not stop on SIGTERM:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` until it returns `Some`, at most `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(25));
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn read_json(p: &Path) -> Option<Value> {
    serde_json::from_slice(&fs::read(p).ok()?).ok()
}

/// A tiny deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// One primary volume (stand-in) and one replica, in a temp dir.
struct Lab {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dev: PathBuf,
    map: PathBuf,
    pstate: PathBuf,
    rdev: PathBuf,
    rstate: PathBuf,
    rng: Rng,
}

impl Lab {
    fn new(seed: u64) -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let mut rng = Rng(seed | 1);
        let mut data = vec![0u8; DEV_BYTES as usize];
        // Half random, half zeros (compressible).
        rng.fill(&mut data[..(DEV_BYTES / 2) as usize]);
        let dev = root.join("primary.img");
        fs::write(&dev, &data).unwrap();
        let map = root.join("primary.map");
        FileDirtyMap::create(
            &map,
            Geometry::new((REGION / 512) as u32, DEV_BYTES / 512).unwrap(),
        )
        .unwrap();
        let rdev = root.join("replica.img");
        fs::write(&rdev, vec![0u8; DEV_BYTES as usize]).unwrap();
        Lab {
            pstate: root.join("pstate"),
            rstate: root.join("rstate"),
            _tmp: tmp,
            root,
            dev,
            map,
            rdev,
            rng,
        }
    }

    fn p(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    /// `--stand-in-*` and `--state-dir` for a primary command.
    fn primary_args(&self, v: Vec<&str>) -> Vec<String> {
        let mut v: Vec<String> = v.into_iter().map(String::from).collect();
        v.extend(
            [
                "--stand-in-device",
                Self::p(&self.dev),
                "--stand-in-map",
                Self::p(&self.map),
                "--state-dir",
                Self::p(&self.pstate),
            ]
            .map(String::from),
        );
        v
    }

    /// Writes `n` random blocks (4 KiB .. 96 KiB at random offsets) the way a bdr device
    /// would: data and dirty mark under the device file's lock (as the stand-in cut
    /// expects). Returns the regions touched.
    fn write_random(&mut self, n: usize) -> std::collections::BTreeSet<u64> {
        self.write_blocks(n, |rng, buf| rng.fill(buf))
    }

    /// As [`Lab::write_random`], with text (random words: compressible, not trivially).
    fn write_text(&mut self, n: usize) -> std::collections::BTreeSet<u64> {
        const WORDS: [&str; 16] = [
            "block ",
            "device ",
            "replica ",
            "cut ",
            "region ",
            "journal ",
            "commit ",
            "write ",
            "snapshot ",
            "primary ",
            "bitmap ",
            "kernel ",
            "chunk ",
            "frame ",
            "hash ",
            "zstd\n",
        ];
        self.write_blocks(n, |rng, buf| {
            let mut text = Vec::with_capacity(buf.len() + 16);
            while text.len() < buf.len() {
                text.extend_from_slice(WORDS[(rng.next() % 16) as usize].as_bytes());
            }
            buf.copy_from_slice(&text[..buf.len()]);
        })
    }

    fn write_blocks(
        &mut self,
        n: usize,
        mut fill: impl FnMut(&mut Rng, &mut [u8]),
    ) -> std::collections::BTreeSet<u64> {
        let f = OpenOptions::new().write(true).open(&self.dev).unwrap();
        let map = FileDirtyMap::open(&self.map).unwrap();
        let mut touched = std::collections::BTreeSet::new();
        for _ in 0..n {
            let len = 4096 * (1 + self.rng.next() % 24);
            let off = (self.rng.next() % ((DEV_BYTES - len) / 4096)) * 4096;
            let mut buf = vec![0u8; len as usize];
            fill(&mut self.rng, &mut buf);
            // SAFETY: flock(2) on a descriptor we own and keep open.
            assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
            f.write_all_at(&buf, off).unwrap();
            map.mark(off, len).unwrap();
            // SAFETY: as above.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
            touched.extend(off / REGION..(off + len).div_ceil(REGION));
        }
        touched
    }

    fn serve_args(&self, listen: &str) -> Vec<String> {
        vec![
            "replica".into(),
            "serve".into(),
            "--device".into(),
            Self::p(&self.rdev).into(),
            "--listen".into(),
            listen.into(),
            "--state-dir".into(),
            Self::p(&self.rstate).into(),
        ]
    }

    /// Starts the replica on `listen` (port 0: any) and returns it with its address.
    fn start_replica(&self, listen: &str) -> (Proc, String) {
        let args = self.serve_args(listen);
        let log = self.root.join(format!("replica-{}.log", now_ms()));
        let mut p = Proc::spawn(&args, &log);
        let pid = p.pid();
        let status = self.rstate.join("replica-status.json");
        let addr = wait_for(Duration::from_secs(20), "the replica to listen", || {
            if let Some(s) = p.exited() {
                panic!("replica exited {s}:\n{}", p.log());
            }
            let v = read_json(&status)?;
            (v["pid"] == pid && v["state"] == "serving")
                .then(|| v["listen"].as_str().unwrap().to_string())
        });
        (p, addr)
    }

    fn sync_once(&self, addr: &str) -> Value {
        let o = bdr(&self.primary_args(vec!["sync", "--once", "vol", "--peer", addr, "--json"]));
        assert!(o.status.success(), "sync --once failed:\n{}", show(&o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}:\n{}", show(&o)))
    }

    fn primary_status(&self) -> Option<Value> {
        read_json(&self.pstate.join("status.json"))
    }

    fn assert_replica_equals_primary(&self) {
        let a = fs::read(&self.dev).unwrap();
        let b = fs::read(&self.rdev).unwrap();
        assert_eq!(a.len(), b.len());
        if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
            panic!(
                "replica differs from the primary from byte {i} (region {})",
                i as u64 / REGION
            );
        }
    }

    fn verify(&self, addr: &str) -> Output {
        bdr(&self.primary_args(vec!["verify", "vol", "--peer", addr]))
    }
}

/// The first sync of a new replica is a rescan shipping what differs; later ones are
/// incremental and ship exactly the dirty regions; the replica equals the primary each
/// time; `bdr status` and `bdr replica status` report the cut.
#[test]
fn sync_once_seeds_then_ships_only_dirty_regions() {
    let mut lab = Lab::new(1);
    let (_replica, addr) = lab.start_replica("127.0.0.1:0");

    let s = lab.sync_once(&addr);
    assert_eq!(s["kind"], "rescan", "{s}");
    assert_eq!(s["cut"], 1);
    assert_eq!(s["compared_regions"], 128);
    // The zero half already matched the zeroed replica device: only the random half ships.
    assert_eq!(s["regions"], 64, "{s}");
    lab.assert_replica_equals_primary();

    for round in 0..3 {
        let touched = lab.write_random(5);
        let s = lab.sync_once(&addr);
        assert_eq!(s["kind"], "incremental", "{s}");
        assert_eq!(s["cut"], 2 + round);
        assert_eq!(s["parent"], 1 + round);
        assert_eq!(s["regions"], touched.len() as u64, "{s}");
        assert!(s["bytes_read"].as_u64().unwrap() <= touched.len() as u64 * REGION);
        assert!(s["bytes_sent"].as_u64().unwrap() > 0);
        assert!(s["suspend_ms"].as_f64().is_some());
        lab.assert_replica_equals_primary();
    }

    // Nothing dirty: an empty incremental cut.
    let s = lab.sync_once(&addr);
    assert_eq!(
        (s["regions"].as_u64(), s["cut"].as_u64()),
        (Some(0), Some(5))
    );

    // The human summary.
    lab.write_random(1);
    let o = bdr(&lab.primary_args(vec!["sync", "--once", "vol", "--peer", &addr]));
    assert!(o.status.success(), "{}", show(&o));
    for want in [
        "cut 6 (incremental, parent 5)",
        "bytes read:",
        "bytes sent:",
        "compression:",
        "suspend:",
        "time:",
    ] {
        assert!(text(&o.stdout).contains(want), "{want}: {}", show(&o));
    }

    // bdr status NAME --state-dir: no bdr device here, the replication state is shown.
    let o = bdr(&[
        "status",
        "vol",
        "--json",
        "--state-dir",
        Lab::p(&lab.pstate),
    ]);
    assert!(o.status.success(), "{}", show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &v["replication"];
    assert_eq!(r["last_committed_cut"], 6, "{v}");
    assert_eq!(r["pending_regions"], 0);
    assert_eq!(r["daemon"]["state"], "stopped");
    assert!(r["rpo_age_seconds"].as_f64().unwrap() < 60.0);
    assert!(r["suspend_ms_p99"].as_f64().is_some());
    let o = bdr(&["status", "vol", "--state-dir", Lab::p(&lab.pstate)]);
    assert!(text(&o.stdout).contains("rpo age:"), "{}", show(&o));

    let o = bdr(&[
        "replica",
        "status",
        "--state-dir",
        Lab::p(&lab.rstate),
        "--json",
    ]);
    assert!(o.status.success(), "{}", show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["server"], "serving", "{v}");
    assert_eq!(v["committed"]["last_cut"], 6, "{v}");
    assert_eq!(v["committed"]["dev_bytes"], DEV_BYTES);
}

/// `bdr primary run` replicates a stream of writes; the replica is killed -9 and
/// restarted on the same port mid-run; replication resumes and the replica ends equal;
/// SIGTERM stops the daemon with exit 0.
#[test]
fn daemon_survives_replica_kill() {
    let mut lab = Lab::new(2);
    let (mut replica, addr) = lab.start_replica("127.0.0.1:0");
    let args = lab.primary_args(vec![
        "primary",
        "run",
        "vol",
        "--peer",
        &addr,
        "--interval",
        "150ms",
    ]);
    let mut daemon = Proc::spawn(&args, &lab.root.join("primary.log"));
    let committed = |lab: &Lab| {
        lab.primary_status()
            .and_then(|v| v["last_cut_committed_unix_ms"].as_u64())
            .unwrap_or(0)
    };
    // Writes keep coming until a few cuts committed (a slow or niced daemon may still be
    // seeding when a fixed burst of writes is over).
    wait_for(Duration::from_secs(30), "a few committed cuts", || {
        lab.write_random(3);
        thread::sleep(Duration::from_millis(60));
        (lab.primary_status()?["cuts_committed"].as_u64()? >= 3).then_some(())
    });

    replica.kill9();
    for _ in 0..10 {
        lab.write_random(3);
        thread::sleep(Duration::from_millis(60));
    }
    wait_for(Duration::from_secs(20), "the daemon to notice", || {
        lab.primary_status()?["last_error"]["message"]
            .as_str()
            .map(|_| ())
    });
    let (_replica, addr2) = lab.start_replica(&addr);
    assert_eq!(addr2, addr);
    lab.write_random(10);
    let written = now_ms();
    wait_for(Duration::from_secs(60), "the replica to catch up", || {
        let v = lab.primary_status()?;
        (v["last_cut_taken_unix_ms"].as_u64()? > written
            && v["pending_regions"] == 0
            && v["state"] == "idle")
            .then_some(())
    });
    assert!(committed(&lab) > written);
    lab.assert_replica_equals_primary();
    let st = daemon.terminate();
    assert!(st.success(), "daemon exit {st}:\n{}", daemon.log());
    let v = lab.primary_status().unwrap();
    assert_eq!(v["state"], "stopped");
    assert!(v["suspend_ms_recent"].as_array().unwrap().len() >= 3);
    let log = daemon.log();
    assert!(log.contains("cut committed"), "{log}");
    assert!(log.contains("merged back"), "{log}");
}

/// The daemon is killed -9 mid-run (frozen bits may be left in the bitmap); a restarted
/// daemon merges them back, and the replica ends equal. Also a frozen set left on
/// purpose (a cut frozen by a "dead" process) is shipped by the next `sync --once`.
#[test]
fn primary_kill_merges_back_frozen_bits() {
    let mut lab = Lab::new(3);
    let (_replica, addr) = lab.start_replica("127.0.0.1:0");
    let args = lab.primary_args(vec![
        "primary",
        "run",
        "vol",
        "--peer",
        &addr,
        "--interval",
        "100ms",
    ]);
    let mut daemon = Proc::spawn(&args, &lab.root.join("primary1.log"));
    wait_for(Duration::from_secs(20), "the seed", || {
        (lab.primary_status()?["cuts_committed"].as_u64()? >= 1).then_some(())
    });
    for _ in 0..8 {
        lab.write_random(4);
        thread::sleep(Duration::from_millis(40));
    }
    daemon.kill9();
    lab.write_random(4);

    // A frozen set left behind, as by a process killed between freeze and ack.
    let map = FileDirtyMap::open(&lab.map).unwrap();
    let g = map.info().unwrap().generation;
    map.freeze(g).unwrap();
    let frozen = map.read_frozen(g).unwrap().len();
    assert!(frozen > 0);
    lab.write_random(2);

    let mut daemon = Proc::spawn(&args, &lab.root.join("primary2.log"));
    let restarted = now_ms();
    wait_for(Duration::from_secs(60), "the replica to catch up", || {
        let v = lab.primary_status()?;
        (v["pid"] == daemon.pid()
            && v["last_cut_taken_unix_ms"].as_u64()? > restarted
            && v["pending_regions"] == 0
            && v["state"] == "idle")
            .then_some(())
    });
    assert!(daemon.terminate().success(), "{}", daemon.log());
    lab.assert_replica_equals_primary();
    let info = map.info().unwrap();
    assert_eq!((info.active_regions, info.frozen_regions), (0, 0));
    assert!(
        daemon
            .log()
            .contains("frozen regions of an unfinished cut: merging them back"),
        "{}",
        daemon.log()
    );

    // Same with sync --once.
    let touched = lab.write_random(3);
    map.freeze(g).unwrap();
    let more = lab.write_random(2);
    let s = lab.sync_once(&addr);
    assert_eq!(s["kind"], "incremental", "{s}");
    assert_eq!(s["regions"], touched.union(&more).count() as u64, "{s}");
    lab.assert_replica_equals_primary();
}

/// `bdr verify`: exit 0 when equal; regions written since the replica's cut are listed as
/// pending and do not fail it; exit 1 with the differing range listed after the replica
/// file is tampered with; verify loses no dirty bits (its cut is aborted).
#[test]
fn verify_lists_differing_ranges() {
    let mut lab = Lab::new(4);
    let (_replica, addr) = lab.start_replica("127.0.0.1:0");
    lab.sync_once(&addr);
    let o = lab.verify(&addr);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(text(&o.stdout).contains("identical"), "{}", show(&o));
    let verify_json = |lab: &Lab| -> Value {
        let o = bdr(&lab.primary_args(vec!["verify", "vol", "--peer", &addr, "--json"]));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", show(&o)));
        assert_eq!(o.status.success(), v["identical"] == true, "{}", show(&o));
        v
    };
    let regions_of = |ranges: &Value| -> std::collections::BTreeSet<u64> {
        let mut set = std::collections::BTreeSet::new();
        for r in ranges.as_array().unwrap() {
            let (off, len) = (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap());
            set.extend(off / REGION..(off + len).div_ceil(REGION));
        }
        set
    };

    // Written since the replica's cut: different, but pending (the next cut ships them).
    let touched = lab.write_random(3);
    let v = verify_json(&lab);
    assert_eq!(v["identical"], true, "{v}");
    assert_eq!(regions_of(&v["pending"]), touched, "{v}");
    assert_eq!(v["pending_regions"], touched.len() as u64, "{v}");
    assert_eq!(v["differing_regions"], 0, "{v}");

    // Tamper with a region of the replica that is not dirty on the primary.
    let bad = (70..).find(|r| !touched.contains(r)).unwrap();
    let f = OpenOptions::new().write(true).open(&lab.rdev).unwrap();
    f.write_all_at(b"tampered", bad * REGION + 100).unwrap();
    drop(f);
    let o = lab.verify(&addr);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let want = format!("bytes {}..{}", bad * REGION, (bad + 1) * REGION);
    assert!(text(&o.stdout).contains(&want), "{want}: {}", show(&o));
    assert!(
        text(&o.stdout).contains("differ as expected"),
        "{}",
        show(&o)
    );
    assert!(text(&o.stderr).contains("differs"), "{}", show(&o));

    // Tampering inside a pending region is shipped over by the next cut: not a failure.
    let inside = *touched.iter().next().unwrap();
    let f = OpenOptions::new().write(true).open(&lab.rdev).unwrap();
    f.write_all_at(b"tampered", inside * REGION).unwrap();
    drop(f);
    let v = verify_json(&lab);
    assert_eq!(regions_of(&v["differing"]), [bad].into(), "{v}");
    assert_eq!(regions_of(&v["pending"]), touched, "{v}");

    // Dirty regions survive a verify (its cut is merged back) and ship next time.
    let info = FileDirtyMap::open(&lab.map).unwrap().info().unwrap();
    assert_eq!(info.active_regions, touched.len() as u64);
    assert_eq!(info.frozen_regions, 0);
    let s = lab.sync_once(&addr);
    assert_eq!(s["regions"], touched.len() as u64, "{s}");
    // The tampered region is not dirty on the primary: still different; nothing pending.
    let v = verify_json(&lab);
    assert_eq!(v["identical"], false);
    assert_eq!(v["differing"][0]["offset"], bad * REGION);
    assert_eq!(v["differing"][0]["length"], REGION);
    assert_eq!(v["pending"], serde_json::json!([]), "{v}");
}

/// A new bitmap generation (module reload: FileDirtyMap::recreate) loses the dirty bits:
/// the next sync is a rescan that ships only the chunks that differ.
#[test]
fn generation_change_rescans_only_differing_chunks() {
    let mut lab = Lab::new(5);
    let (_replica, addr) = lab.start_replica("127.0.0.1:0");
    lab.sync_once(&addr);
    let touched = lab.write_random(4);
    FileDirtyMap::open(&lab.map).unwrap().recreate().unwrap();
    let s = lab.sync_once(&addr);
    assert_eq!(s["kind"], "rescan", "{s}");
    assert!(
        s["rescan_reason"].as_str().unwrap().contains("generation"),
        "{s}"
    );
    assert_eq!(s["dirty_regions"], 0, "{s}");
    assert_eq!(s["compared_regions"], 128);
    assert_eq!(s["regions"], touched.len() as u64, "{s}");
    // Hashing reads the whole device, shipping only the differing regions.
    assert_eq!(
        s["bytes_read"].as_u64().unwrap(),
        DEV_BYTES + touched.len() as u64 * REGION
    );
    lab.assert_replica_equals_primary();
    // Back to incremental afterwards.
    let touched = lab.write_random(2);
    let s = lab.sync_once(&addr);
    assert_eq!(s["kind"], "incremental", "{s}");
    assert_eq!(s["regions"], touched.len() as u64);
    lab.assert_replica_equals_primary();
}

/// Two primaries (two volumes) against one replica: the second is refused with a clear
/// error, and the replica keeps the first volume's cut.
#[test]
fn wrong_volume_is_refused() {
    let lab = Lab::new(6);
    let (_replica, addr) = lab.start_replica("127.0.0.1:0");
    lab.sync_once(&addr);
    let other = Lab::new(7);
    let o = bdr(&[
        "sync",
        "--once",
        "vol",
        "--peer",
        &addr,
        "--stand-in-device",
        Lab::p(&other.dev),
        "--stand-in-map",
        Lab::p(&other.map),
        "--state-dir",
        Lab::p(&other.pstate),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let e = text(&o.stderr);
    assert!(e.contains("WrongVolume"), "{e}");
    assert!(e.contains("volume"), "{e}");
    lab.assert_replica_equals_primary();
    // The error is recorded for `bdr status`.
    let v = read_json(&other.pstate.join("status.json")).unwrap();
    assert!(v["last_error"]["message"]
        .as_str()
        .unwrap()
        .contains("WrongVolume"));
}

/// Promote refuses while serve runs, then leaves the device at the committed cut and
/// marks the state dir; serve then refuses without --force; with --force the primary
/// re-seeds it by a rescan.
#[test]
fn promote_then_serve_refuses_without_force() {
    let mut lab = Lab::new(8);
    let (mut replica, addr) = lab.start_replica("127.0.0.1:0");
    lab.sync_once(&addr);
    lab.write_random(3);
    lab.sync_once(&addr);
    let promote = [
        "replica",
        "promote",
        "--device",
        Lab::p(&lab.rdev),
        "--state-dir",
        Lab::p(&lab.rstate),
    ];
    let o = bdr(&promote);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("held by a running `bdr replica serve`"),
        "{}",
        show(&o)
    );
    assert!(replica.terminate().success(), "{}", replica.log());

    let o = bdr(&promote);
    assert!(o.status.success(), "{}", show(&o));
    let out = text(&o.stdout);
    assert!(out.contains("holds cut 2"), "{out}");
    assert!(out.contains("ready to mount read-write"), "{out}");
    lab.assert_replica_equals_primary();

    // The promoted replica is written to (it is in use now).
    let f = OpenOptions::new().write(true).open(&lab.rdev).unwrap();
    f.write_all_at(&[0xee; 4096], 5 * REGION).unwrap();
    drop(f);

    let args = lab.serve_args("127.0.0.1:0");
    let o = bdr(&args);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(text(&o.stderr).contains("promoted"), "{}", show(&o));
    assert!(text(&o.stderr).contains("--force"), "{}", show(&o));

    let o = bdr(&["replica", "status", "--state-dir", Lab::p(&lab.rstate)]);
    assert!(text(&o.stdout).contains("promoted:"), "{}", show(&o));

    // --force: the replica is re-seeded by a rescan shipping what differs.
    let mut forced = lab.serve_args("127.0.0.1:0");
    forced.push("--force".into());
    let log = lab.root.join("forced.log");
    let p = Proc::spawn(&forced, &log);
    let pid = p.pid();
    let addr = wait_for(Duration::from_secs(20), "the forced replica", || {
        let v = read_json(&lab.rstate.join("replica-status.json"))?;
        (v["pid"] == pid && v["state"] == "serving")
            .then(|| v["listen"].as_str().unwrap().to_string())
    });
    let s = lab.sync_once(&addr);
    assert_eq!(s["kind"], "rescan", "{s}");
    assert_eq!(s["regions"], 1, "{s}");
    lab.assert_replica_equals_primary();
    drop(p);
}

/// Private state: a primary state file readable by others is refused.
#[test]
fn world_readable_state_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new(9);
    let (_replica, addr) = lab.start_replica("127.0.0.1:0");
    lab.sync_once(&addr);
    let f = lab.pstate.join("primary.json");
    assert_eq!(
        fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    let o = bdr(&lab.primary_args(vec!["sync", "--once", "vol", "--peer", &addr]));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(text(&o.stderr).contains("chmod 600"), "{}", show(&o));
}

/// Hostile bytes at a real `bdr replica serve`: garbage, a header claiming a huge frame, a
/// frame of an unknown protocol version, a header then silence cut short. Each connection
/// is refused with the reason in the replica's log and in `bdr replica status`; the
/// committed cut and the device are untouched and the server keeps serving.
#[test]
fn hostile_bytes_leave_the_replica_serving_its_committed_cut() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let lab = Lab::new(12);
    let (replica, addr) = lab.start_replica("127.0.0.1:0");
    lab.sync_once(&addr);
    let before = fs::read(&lab.rdev).unwrap();
    let status = || {
        let o = bdr(&[
            "replica",
            "status",
            "--state-dir",
            Lab::p(&lab.rstate),
            "--json",
        ]);
        assert!(o.status.success(), "{}", show(&o));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    let cut = status()["committed"]["last_cut"].clone();
    assert!(cut.is_u64(), "{}", status());
    const V: u16 = bdr_sync::PROTO_VERSION;
    let header = |version: u16, len: u32| {
        let mut h = b"BDRF".to_vec();
        h.extend(version.to_le_bytes());
        h.extend(0u16.to_le_bytes());
        h.extend(len.to_le_bytes());
        h.extend([0u8; 8]);
        h
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "magic"),
        (header(V, u32::MAX), "exceeds the limit"),
        (header(99, 16), "version 99"),
        // A bdr of protocol version 1 (before multi-pass cuts) is refused by name.
        (header(1, 16), "version 1,"),
        ([header(V, 64), vec![7u8; 10]].concat(), "truncated"),
    ];
    for (bytes, want) in cases {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply); // the server answers an Error frame and closes
        let msg = wait_for(Duration::from_secs(10), "the error in the status", || {
            let v = status();
            let m = v["last_error"]["message"].as_str()?.to_string();
            m.contains(want).then_some(m)
        });
        assert!(
            replica.log().contains(want),
            "log lacks {want:?}:\n{}",
            replica.log()
        );
        assert_eq!(status()["committed"]["last_cut"], cut, "after {msg}");
        assert_eq!(status()["server"], "serving");
    }
    assert!(
        fs::read(&lab.rdev).unwrap() == before,
        "the replica device changed"
    );
    // Still a working replica.
    lab.sync_once(&addr);
}

/// `sync --once` pre-copies by default (the summary and `bdr status --json` report the
/// passes, the residue and the snapshot's lifetime against the cut's), and `--no-precopy`
/// ships everything from the snapshot; both leave the replica equal to the primary.
#[test]
fn sync_once_precopies_by_default_and_no_precopy_disables_it() {
    let mut lab = Lab::new(21);
    let (_replica, addr) = lab.start_replica("127.0.0.1:0");
    let s = lab.sync_once(&addr);
    assert_eq!(s["kind"], "rescan", "{s}");
    assert_eq!(s["precopy_passes"], 0, "a rescan does not pre-copy: {s}");

    let touched = lab.write_random(30);
    let s = lab.sync_once(&addr);
    assert_eq!(s["kind"], "incremental", "{s}");
    assert!(s["precopy_passes"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["precopy_regions"], touched.len() as u64, "{s}");
    assert_eq!(s["residue_regions"], 0, "nothing written meanwhile: {s}");
    assert_eq!(s["regions"], touched.len() as u64, "{s}");
    assert!(s["snapshot_ms"].as_f64().unwrap() <= s["cut_ms"].as_f64().unwrap());
    lab.assert_replica_equals_primary();
    let o = bdr(&[
        "status",
        "vol",
        "--json",
        "--state-dir",
        Lab::p(&lab.pstate),
    ]);
    assert!(o.status.success(), "{}", show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let shape = &v["replication"]["last_cut_shape"];
    assert_eq!(shape["precopy_passes"], s["precopy_passes"], "{v}");
    assert_eq!(shape["precopy_regions"], touched.len() as u64, "{v}");
    assert!(shape["snapshot_ms"].as_f64().is_some(), "{v}");
    let o = bdr(&["status", "vol", "--state-dir", Lab::p(&lab.pstate)]);
    assert!(text(&o.stdout).contains("pre-copy passes"), "{}", show(&o));

    let touched = lab.write_random(30);
    let o = bdr(&lab.primary_args(vec![
        "sync",
        "--once",
        "vol",
        "--peer",
        &addr,
        "--json",
        "--no-precopy",
    ]));
    assert!(o.status.success(), "{}", show(&o));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["precopy_passes"], 0, "{s}");
    assert_eq!(s["precopy_regions"], 0, "{s}");
    assert_eq!(s["residue_regions"], touched.len() as u64, "{s}");
    lab.assert_replica_equals_primary();
    let o = bdr(&lab.primary_args(vec!["sync", "--once", "vol", "--peer", &addr]));
    assert!(text(&o.stdout).contains("pre-copy:"), "{}", show(&o));
}

/// `--zstd-level` reaches the wire: the same text regions cost fewer bytes at 19 than at
/// -100; a level out of range is refused naming the range; --precopy / --no-precopy: the
/// last one given wins.
#[test]
fn zstd_level_and_precopy_flags_take_effect() {
    let mut lab = Lab::new(23);
    let (_replica, addr) = lab.start_replica("127.0.0.1:0");
    lab.sync_once(&addr);
    let sync = |lab: &Lab, extra: &[&str]| -> Value {
        let mut args = vec!["sync", "--once", "vol", "--peer", &addr, "--json"];
        args.extend_from_slice(extra);
        let o = bdr(&lab.primary_args(args));
        assert!(o.status.success(), "{}", show(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let mut sent = Vec::new();
    for level in ["-100", "19"] {
        // The same text at the same offsets each time.
        lab.rng = Rng(99);
        let touched = lab.write_text(20);
        let s = sync(&lab, &["--zstd-level", level]);
        assert_eq!(s["regions"], touched.len() as u64, "{s}");
        sent.push(s["bytes_sent"].as_u64().unwrap());
        lab.assert_replica_equals_primary();
    }
    assert!(
        sent[1] * 3 < sent[0] * 2,
        "level 19 vs -100 on text: {sent:?} bytes sent"
    );

    let o = bdr(&lab.primary_args(vec![
        "sync",
        "--once",
        "vol",
        "--peer",
        &addr,
        "--zstd-level",
        "25",
    ]));
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("-100 (fastest) to 19"),
        "{}",
        show(&o)
    );

    lab.write_random(10);
    let s = sync(&lab, &["--no-precopy", "--precopy"]);
    assert!(s["precopy_passes"].as_u64().unwrap() >= 1, "{s}");
    lab.write_random(10);
    let s = sync(&lab, &["--precopy", "--no-precopy"]);
    assert_eq!(s["precopy_passes"], 0, "{s}");
}

/// `primary run` yields to the primary's workload: every thread of the daemon runs at nice
/// 10 with the lowest best-effort I/O priority.
#[test]
fn the_daemon_runs_niced_with_low_io_priority() {
    let mut lab = Lab::new(24);
    let (_replica, addr) = lab.start_replica("127.0.0.1:0");
    let args = lab.primary_args(vec![
        "primary",
        "run",
        "vol",
        "--peer",
        &addr,
        "--interval",
        "100ms",
    ]);
    let mut daemon = Proc::spawn(&args, &lab.root.join("primary.log"));
    wait_for(Duration::from_secs(20), "the seed", || {
        (lab.primary_status()?["cuts_committed"].as_u64()? >= 1).then_some(())
    });
    lab.write_random(3);
    let tasks: Vec<_> = fs::read_dir(format!("/proc/{}/task", daemon.pid()))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(tasks.len() > 1, "one thread only: {tasks:?}");
    for t in &tasks {
        let stat = fs::read_to_string(format!("/proc/{}/task/{t}/stat", daemon.pid())).unwrap();
        // Fields after the command's closing parenthesis; nice is field 19 of stat(5).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let nice: i32 = rest.split(' ').nth(16).unwrap().parse().unwrap();
        assert_eq!(nice, 10, "thread {t}: {stat}");
        let tid: libc::c_int = t.parse().unwrap();
        // SAFETY: ioprio_get(2) with integer arguments only.
        let prio = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, tid) };
        assert_eq!(prio, (2 << 13) | 7, "thread {t}: I/O priority");
    }
    assert!(daemon.terminate().success(), "{}", daemon.log());
}

/// A daemon killed after the replica committed its cut, before it recorded the commit,
/// leaves its state one cut behind the replica and the cut's regions frozen in the bitmap
/// (what this test writes by hand). The next run adopts the replica's cut: an incremental
/// cut of the frozen and newer regions, no rescan. In another bitmap generation it rescans.
#[test]
fn a_cut_the_replica_committed_unrecorded_is_adopted_without_rescan() {
    let mut lab = Lab::new(25);
    let (_replica, addr) = lab.start_replica("127.0.0.1:0");
    lab.sync_once(&addr);
    let state_file = lab.pstate.join("primary.json");
    let map = FileDirtyMap::open(&lab.map).unwrap();
    // Rewinds the state to before cut `cut` and freezes `regions` again, as a daemon
    // killed between the replica's commit and its own record leaves them.
    let rewind = |cut: u64, regions: &std::collections::BTreeSet<u64>| {
        let mut st: Value = serde_json::from_slice(&fs::read(&state_file).unwrap()).unwrap();
        st["last_cut"] = (cut - 1).into();
        fs::write(&state_file, serde_json::to_vec_pretty(&st).unwrap()).unwrap();
        let g = map.info().unwrap().generation;
        for r in regions {
            map.mark(r * REGION, 1).unwrap();
        }
        map.freeze(g).unwrap();
    };

    let touched = lab.write_random(5);
    let s = lab.sync_once(&addr);
    assert_eq!(s["cut"], 2, "{s}");
    rewind(2, &touched);
    let more = lab.write_random(3);
    let o = bdr(&lab.primary_args(vec!["sync", "--once", "vol", "--peer", &addr, "--json"]));
    assert!(o.status.success(), "{}", show(&o));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["kind"], "incremental", "{s}");
    assert_eq!(s["parent"], 2, "{s}");
    assert_eq!(s["regions"], touched.union(&more).count() as u64, "{s}");
    assert!(text(&o.stderr).contains("adopted"), "{}", show(&o));
    lab.assert_replica_equals_primary();
    let st: Value = serde_json::from_slice(&fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(st["last_cut"], 3, "{st}");

    // The same, but the bitmap was recreated (bits lost): the replica is ahead, rescan.
    let touched = lab.write_random(4);
    let s = lab.sync_once(&addr);
    let cut = s["cut"].as_u64().unwrap();
    rewind(cut, &touched);
    map.recreate().unwrap();
    let s = lab.sync_once(&addr);
    assert_eq!(s["kind"], "rescan", "{s}");
    lab.assert_replica_equals_primary();
}
