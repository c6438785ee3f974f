//! Catch-up bench: `bdr sync --once` against `rsync --inplace --no-whole-file` after a
//! change of a fraction of the 64 KiB regions of an image, both over loopback.
//!
//!   catchup [--size-mb N] [--percent P] [--rounds N] [--dir DIR] [--out DIR] [--bdr PATH]
//!
//! bdr: the release binary with the file stand-in (`--stand-in-device/--stand-in-map`: the
//! bench writes the changes and marks the dirty map exactly as the kernel target would) and
//! a real `bdr replica serve` on 127.0.0.1. rsync: an rsync daemon on 127.0.0.1 (rsync://),
//! so the bytes on the wire are real. Both replicas start identical to the primary image
//! (bdr's is seeded by a first `sync --once`, a rescan that ships nothing); every round
//! changes new random regions, then runs both (order alternated), then compares both copies
//! with the primary byte for byte. rsync runs with `--ignore-times`: its quick check (same
//! size and modification second) would otherwise skip a file changed within the second of
//! its previous run (bdr relies on the dirty map, not on times).

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bdr_bench::{
    bar_chart, children_cpu, fill_class, host_info, md_table, median, mix_class,
    register_chart_font, Bar, Class, Rng, MB,
};
use bdr_bitmap::{FileDirtyMap, Geometry};
use serde_json::Value;

const REGION: u64 = 64 << 10;

struct Args {
    size_mb: u64,
    percent: f64,
    rounds: usize,
    dir: PathBuf,
    out: PathBuf,
    bdr: PathBuf,
}

fn parse_args() -> Result<Args> {
    let exe = std::env::current_exe()?;
    let mut a = Args {
        size_mb: 1024,
        percent: 1.0,
        rounds: 3,
        dir: PathBuf::from("/dev/shm"),
        out: bdr_bench::repo_root().join("bench/results"),
        bdr: exe.with_file_name("bdr"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().context(format!("{k} needs a value"));
        match k.as_str() {
            "--size-mb" => a.size_mb = v()?.parse()?,
            "--percent" => a.percent = v()?.parse()?,
            "--rounds" => a.rounds = v()?.parse()?,
            "--dir" => a.dir = v()?.into(),
            "--out" => a.out = v()?.into(),
            "--bdr" => a.bdr = v()?.into(),
            "-h" | "--help" => {
                println!("catchup [--size-mb N] [--percent P] [--rounds N] [--dir DIR] [--out DIR] [--bdr PATH]");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {k}"),
        }
    }
    Ok(a)
}

/// A child process killed on drop.
struct Guard(Option<Child>);

impl Guard {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// (own CPU, reaped children's CPU) of process `pid` from /proc/PID/stat.
fn proc_cpu(pid: u32) -> (Duration, Duration) {
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<u64> = s
        .rsplit_once(')')
        .map(|x| x.1)
        .unwrap_or("")
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if f.len() < 15 {
        return (Duration::ZERO, Duration::ZERO);
    }
    // After the comm: utime = index 11, stime 12, cutime 13, cstime 14.
    let d = |t: u64| Duration::from_secs_f64(t as f64 / tck);
    (d(f[11] + f[12]), d(f[13] + f[14]))
}

/// Runs `cmd` to completion (bounded); returns stdout, wall time and its CPU time.
fn run(mut cmd: Command, limit: Duration) -> Result<(String, Duration, Duration)> {
    let c0 = children_cpu();
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} timed out after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall = t0.elapsed();
    let out = t1.join().unwrap();
    let err = t2.join().unwrap();
    if !status.success() {
        bail!("{cmd:?} failed ({status}):\n{out}\n{err}");
    }
    Ok((out, wall, children_cpu() - c0))
}

fn same_files(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> Option<()>) -> Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f().is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out waiting for {what}")
}

#[derive(Clone, Default)]
struct Run {
    wall: Duration,
    /// bdr: the stand-in's whole-image copy inside the cut (a dm-snapshot takes ~0).
    standin_copy: Duration,
    /// bdr: its own elapsed time from the cut to the replica's commit (elapsed_ms).
    cut_to_commit: Duration,
    wire: u64,
    client_cpu: Duration,
    server_cpu: Duration,
    identical: bool,
}

fn main() -> Result<()> {
    let a = parse_args()?;
    anyhow::ensure!(
        a.bdr.exists(),
        "{} missing: cargo build --release first",
        a.bdr.display()
    );
    let which = Command::new("rsync").arg("--version").output();
    let rsync_version = match which {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        _ => bail!("rsync is not installed (scripts/install-deps.sh installs it)"),
    };
    let work = tempfile::Builder::new()
        .prefix("bdr-bench-catchup-")
        .tempdir_in(&a.dir)?;
    let w = work.path();
    let size = a.size_mb << 20;
    let nregions = size / REGION;
    let changed = ((nregions as f64 * a.percent / 100.0).round() as u64).max(1);
    eprintln!(
        "catchup: {} MiB image, {} of {} regions of 64 KiB changed per round, {} rounds, in {}",
        a.size_mb,
        changed,
        nregions,
        a.rounds,
        w.display()
    );

    // The primary image (mix data), its copies, the dirty map.
    let prim = w.join("primary.img");
    {
        let mut f = BufWriter::with_capacity(4 << 20, File::create(&prim)?);
        let mut buf = vec![0u8; REGION as usize];
        for i in 0..nregions {
            fill_class(mix_class(i), 0xc47c ^ i.wrapping_mul(0x1000_0001), &mut buf);
            f.write_all(&buf)?;
        }
        f.flush()?;
    }
    let rdev = w.join("replica.img");
    fs::copy(&prim, &rdev)?;
    let rsync_dir = w.join("rsync-module");
    fs::create_dir_all(&rsync_dir)?;
    let rsync_dst = rsync_dir.join("primary.img");
    fs::copy(&prim, &rsync_dst)?;
    let map = w.join("primary.map");
    FileDirtyMap::create(
        &map,
        Geometry::new((REGION / 512) as u32, size / 512).map_err(|e| anyhow::anyhow!("{e}"))?,
    )?;
    let (pstate, rstate, cow) = (w.join("pstate"), w.join("rstate"), w.join("cow"));
    fs::create_dir_all(&cow)?;

    // bdr replica serve on 127.0.0.1.
    let rlog = File::create(w.join("replica.log"))?;
    let serve = Guard(Some(
        Command::new(&a.bdr)
            .args(["replica", "serve", "--device"])
            .arg(&rdev)
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&rstate)
            .env("RUST_LOG", "warn")
            .env_remove("BDR_KMOD")
            .stdin(Stdio::null())
            .stdout(rlog.try_clone()?)
            .stderr(rlog)
            .spawn()?,
    ));
    let mut addr = String::new();
    wait_until(Duration::from_secs(30), "bdr replica serve", || {
        let v: Value =
            serde_json::from_slice(&fs::read(rstate.join("replica-status.json")).ok()?).ok()?;
        (v["pid"] == serve.pid() && v["state"] == "serving").then(|| {
            addr = v["listen"].as_str().unwrap_or("").to_string();
        })
    })?;
    let bdr_sync = || {
        let mut c = Command::new(&a.bdr);
        c.args(["sync", "--once", "vol", "--peer", &addr, "--json"])
            .arg("--stand-in-device")
            .arg(&prim)
            .arg("--stand-in-map")
            .arg(&map)
            .arg("--state-dir")
            .arg(&pstate)
            .arg("--cow")
            .arg(&cow)
            .env("RUST_LOG", "warn")
            .env_remove("BDR_KMOD");
        c
    };
    // Seed: a rescan of identical images ships nothing.
    let (out, seed_wall, _) = run(bdr_sync(), Duration::from_secs(600))?;
    let seed: Value = serde_json::from_str(&out)?;
    anyhow::ensure!(
        seed["kind"] == "rescan" && seed["regions"] == 0,
        "the seeding rescan shipped regions: {seed}"
    );
    eprintln!(
        "bdr seed (rescan of identical images): {:.2} s, {} bytes sent",
        seed_wall.as_secs_f64(),
        seed["bytes_sent"]
    );

    // rsync daemon on 127.0.0.1.
    let port = free_port()?;
    let conf = w.join("rsyncd.conf");
    fs::write(
        &conf,
        format!(
            "use chroot = no\nuid = root\ngid = root\npid file = {}\nlog file = {}\n[bench]\npath = {}\nread only = false\n",
            w.join("rsyncd.pid").display(),
            w.join("rsyncd.log").display(),
            rsync_dir.display()
        ),
    )?;
    let daemon = Guard(Some(
        Command::new("rsync")
            .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--config={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    ));
    wait_until(Duration::from_secs(10), "the rsync daemon", || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    })?;
    let rsync_url = format!("rsync://127.0.0.1:{port}/bench/primary.img");

    let mut bdr_runs: Vec<Run> = Vec::new();
    let mut rsync_runs: Vec<Run> = Vec::new();
    let mut raw_rounds = Vec::new();
    for round in 0..a.rounds {
        // Change `changed` distinct random regions, as the kernel would see the writes:
        // data, then the dirty mark, under the device file's lock.
        let mut rng = Rng::new(1000 + round as u64);
        let mut set = std::collections::BTreeSet::new();
        while (set.len() as u64) < changed {
            set.insert(rng.next_u64() % nregions);
        }
        {
            let f = OpenOptions::new().write(true).open(&prim)?;
            let m = FileDirtyMap::open(&map)?;
            let mut buf = vec![0u8; REGION as usize];
            for &r in &set {
                let c = if rng.next_u64() % 2 == 0 {
                    Class::Random
                } else {
                    Class::Text
                };
                fill_class(c, rng.next_u64(), &mut buf);
                // SAFETY: flock(2) on a descriptor we own and keep open.
                unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
                f.write_all_at(&buf, r * REGION)?;
                m.mark(r * REGION, REGION)?;
                unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
            }
        }
        let mut rb = Run::default();
        let mut rr = Run::default();
        let order = if round % 2 == 0 {
            ["bdr", "rsync"]
        } else {
            ["rsync", "bdr"]
        };
        for tool in order {
            if tool == "bdr" {
                let s0 = proc_cpu(serve.pid()).0;
                let (out, wall, cpu) = run(bdr_sync(), Duration::from_secs(600))?;
                let v: Value = serde_json::from_str(&out)?;
                anyhow::ensure!(
                    v["kind"] == "incremental" && v["regions"] == changed,
                    "bdr shipped something else than the changed regions: {v}"
                );
                rb = Run {
                    wall,
                    standin_copy: Duration::from_secs_f64(
                        v["suspend_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                    ),
                    cut_to_commit: Duration::from_secs_f64(
                        v["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                    ),
                    wire: v["bytes_sent"].as_u64().unwrap_or(0),
                    client_cpu: cpu,
                    server_cpu: proc_cpu(serve.pid()).0.saturating_sub(s0),
                    identical: same_files(&prim, &rdev)?,
                };
            } else {
                let d0 = proc_cpu(daemon.pid());
                let mut c = Command::new("rsync");
                c.args(["--inplace", "--no-whole-file", "--ignore-times", "--stats"])
                    .arg(&prim)
                    .arg(&rsync_url);
                let (out, wall, cpu) = run(c, Duration::from_secs(600))?;
                let num = |key: &str| -> u64 {
                    out.lines()
                        .find(|l| l.starts_with(key))
                        .and_then(|l| l.split(':').nth(1))
                        .map(|s| s.trim().replace(',', ""))
                        .and_then(|s| s.split_whitespace().next().map(str::to_string))
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0)
                };
                let sent = num("Total bytes sent");
                let recv = num("Total bytes received");
                anyhow::ensure!(sent > 0, "no rsync --stats in:\n{out}");
                // The daemon's forked server has exited and been reaped: its CPU is in
                // the daemon's children time (give the daemon a moment to reap it).
                std::thread::sleep(Duration::from_millis(100));
                let d1 = proc_cpu(daemon.pid());
                rr = Run {
                    wall,
                    standin_copy: Duration::ZERO,
                    cut_to_commit: Duration::ZERO,
                    wire: sent + recv,
                    client_cpu: cpu,
                    server_cpu: (d1.0 + d1.1).saturating_sub(d0.0 + d0.1),
                    identical: same_files(&prim, &rsync_dst)?,
                };
            }
        }
        eprintln!(
            "round {}: bdr {:.3} s ({:.3} s stand-in copy), {} B; rsync {:.3} s, {} B; identical: bdr {} rsync {}",
            round + 1,
            rb.wall.as_secs_f64(),
            rb.standin_copy.as_secs_f64(),
            rb.wire,
            rr.wall.as_secs_f64(),
            rr.wire,
            rb.identical,
            rr.identical
        );
        let j = |r: &Run| {
            serde_json::json!({
                "wall_s": r.wall.as_secs_f64(),
                "standin_copy_s": r.standin_copy.as_secs_f64(),
                "cut_to_commit_s": r.cut_to_commit.as_secs_f64(),
                "wire_bytes": r.wire,
                "client_cpu_s": r.client_cpu.as_secs_f64(),
                "server_cpu_s": r.server_cpu.as_secs_f64(),
                "identical": r.identical,
            })
        };
        raw_rounds.push(serde_json::json!({
            "round": round + 1, "order": order, "changed_regions": changed,
            "bdr": j(&rb), "rsync": j(&rr),
        }));
        bdr_runs.push(rb);
        rsync_runs.push(rr);
    }
    drop(daemon);
    drop(serve);

    let m = |v: &[Run], f: &dyn Fn(&Run) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let wall = |r: &Run| r.wall.as_secs_f64();
    let net = |r: &Run| (r.wall.saturating_sub(r.standin_copy)).as_secs_f64();
    let ship = |r: &Run| r.cut_to_commit.as_secs_f64();
    let wire = |r: &Run| r.wire as f64;
    let ccpu = |r: &Run| r.client_cpu.as_secs_f64();
    let scpu = |r: &Run| r.server_cpu.as_secs_f64();
    let bs = m(&bdr_runs, &ship);
    let (bw, bn, rw) = (
        m(&bdr_runs, &wall),
        m(&bdr_runs, &net),
        m(&rsync_runs, &wall),
    );
    let (bwire, rwire) = (m(&bdr_runs, &wire), m(&rsync_runs, &wire));
    let all_ok = bdr_runs.iter().chain(&rsync_runs).all(|r| r.identical);
    let changed_bytes = changed * REGION;
    let mut md = format!(
        "### Catch-up: {} MiB image, {} of {} 64 KiB regions changed ({:.1}%, {:.1} MB), median of {} rounds, files in {}\n\n",
        a.size_mb,
        changed,
        nregions,
        a.percent,
        changed_bytes as f64 / MB,
        a.rounds,
        a.dir.display()
    );
    let row = |name: &str, v: &[Run], w: f64| {
        vec![
            name.to_string(),
            format!("{:.3}", w),
            format!("{:.0}", m(v, &wire) / 1e3),
            format!("{:.2}", m(v, &ccpu)),
            format!("{:.2}", m(v, &scpu)),
            if v.iter().all(|r| r.identical) {
                "yes".into()
            } else {
                "NO".into()
            },
        ]
    };
    md += &md_table(
        &[
            "tool",
            "wall s",
            "wire KB",
            "client CPU s",
            "server CPU s",
            "identical",
        ],
        &[
            row("bdr sync --once (stand-in, total)", &bdr_runs, bw),
            row(
                "bdr sync --once, without the stand-in's image copy",
                &bdr_runs,
                bn,
            ),
            row(
                "bdr: ship + replica commit only (elapsed_ms: after the cut)",
                &bdr_runs,
                bs,
            ),
            row("rsync --inplace --no-whole-file (daemon)", &rsync_runs, rw),
        ],
    );
    md += &format!(
        "\nbdr vs rsync: {:.2}x faster in total wall time ({:.1}x without the stand-in's {:.0} MB image copy; {:.1}x for the ship and commit alone), {:.1}x fewer bytes on the wire. Target: ≥ 10x faster.\n",
        rw / bw,
        rw / bn,
        size as f64 / MB,
        rw / bs,
        rwire / bwire
    );
    md += &format!(
        "bdr's wire bytes are the primary's (bytes_sent; the replica's replies are ~100 B); rsync's are sent + received (--stats). The stand-in copies the whole image at each cut (a dm-snapshot does not): its time is suspend_ms in bdr's summary. {rsync_version}.\n"
    );
    print!("{md}");

    fs::create_dir_all(&a.out)?;
    let json = serde_json::json!({
        "bench": "host-catchup",
        "host": host_info(),
        "dir": a.dir,
        "image_bytes": size,
        "region_bytes": REGION,
        "changed_regions": changed,
        "percent": a.percent,
        "rounds": a.rounds,
        "rsync": rsync_version,
        "bdr_seed_rescan_s": seed_wall.as_secs_f64(),
        "median": {
            "bdr_wall_s": bw, "bdr_wall_without_standin_copy_s": bn, "rsync_wall_s": rw,
            "bdr_wire_bytes": bwire, "rsync_wire_bytes": rwire,
            "speedup": rw / bw, "speedup_without_standin_copy": rw / bn,
            "bdr_ship_commit_s": bs, "speedup_ship_commit": rw / bs,
            "wire_ratio": rwire / bwire,
            "bdr_client_cpu_s": m(&bdr_runs, &ccpu), "bdr_server_cpu_s": m(&bdr_runs, &scpu),
            "rsync_client_cpu_s": m(&rsync_runs, &ccpu), "rsync_server_cpu_s": m(&rsync_runs, &scpu),
        },
        "all_identical": all_ok,
        "rounds_raw": raw_rounds,
        "markdown": md,
    });
    let jp = a.out.join("host-catchup.json");
    File::create(&jp)?.write_all(serde_json::to_string_pretty(&json)?.as_bytes())?;
    let text = register_chart_font();
    let pp = a.out.join("host-catchup.png");
    bar_chart(
        &pp,
        &format!(
            "catch-up of {} MiB with {}% of 64 KiB regions changed: wall ms",
            a.size_mb, a.percent
        ),
        "milliseconds (median)",
        &[
            Bar {
                label: "rsync --inplace --no-whole-file".into(),
                value: rw * 1e3,
                group: 1,
            },
            Bar {
                label: "bdr sync --once (stand-in)".into(),
                value: bw * 1e3,
                group: 0,
            },
            Bar {
                label: "bdr, without stand-in copy".into(),
                value: bn * 1e3,
                group: 0,
            },
            Bar {
                label: "bdr, ship + commit only".into(),
                value: bs * 1e3,
                group: 2,
            },
        ],
        &[(rw * 1e3 / 10.0, "10x faster than rsync")],
        text,
    )?;
    let pw = a.out.join("host-catchup-wire.png");
    bar_chart(
        &pw,
        "catch-up: bytes on the wire, KB",
        "KB (median)",
        &[
            Bar {
                label: "rsync (sent + received)".into(),
                value: rwire / 1e3,
                group: 1,
            },
            Bar {
                label: "bdr (bytes_sent)".into(),
                value: bwire / 1e3,
                group: 0,
            },
            Bar {
                label: "changed data, plain".into(),
                value: changed_bytes as f64 / 1e3,
                group: 2,
            },
        ],
        &[],
        text,
    )?;
    eprintln!(
        "wrote {}, {} and {}",
        jp.display(),
        pp.display(),
        pw.display()
    );
    anyhow::ensure!(all_ok, "a copy differs from the primary");
    Ok(())
}
