//! Shared pieces of the host benchmarks (`bench/src/bin/`): CPU clocks, test data, medians,
//! markdown and PNG output.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes per MB in every figure (MB/s = 10^6 bytes per second).
pub const MB: f64 = 1e6;

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass, nothing else.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of the calling thread (user + system).
pub fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process, every thread (user + system).
pub fn process_cpu() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time of the finished children of this process (user + system), from getrusage.
pub fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Wall and thread-CPU time of `f`.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let c0 = thread_cpu();
    let t0 = Instant::now();
    let r = f();
    let wall = t0.elapsed();
    let cpu = thread_cpu() - c0;
    (r, wall, cpu)
}

/// The median of `v` (mean of the two middle values for an even count); NaN if empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// A small deterministic PRNG (xorshift64*).
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// What a region of test data holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Class {
    /// Incompressible (encrypted or already compressed data).
    Random,
    /// Text-like: words and numbers, ~3x with zstd level 1 (logs, source, documents).
    Text,
    /// Zeros (unused blocks of a file system, sparse files).
    Zeros,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Random => "random",
            Class::Text => "text",
            Class::Zeros => "zeros",
        }
    }
}

/// The class of region `i` in the "mix" data set: 50% random, 35% text, 15% zeros, spread
/// deterministically.
pub fn mix_class(i: u64) -> Class {
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    match x % 20 {
        0..=9 => Class::Random,
        10..=16 => Class::Text,
        _ => Class::Zeros,
    }
}

const WORDS: &[&str] = &[
    "the",
    "block",
    "device",
    "replica",
    "primary",
    "cut",
    "region",
    "journal",
    "commit",
    "error",
    "warning",
    "info",
    "kernel",
    "write",
    "read",
    "snapshot",
    "bitmap",
    "chunk",
    "zstd",
    "blake3",
    "frame",
    "offset",
    "length",
    "volume",
    "filesystem",
    "inode",
    "extent",
    "metadata",
    "request",
    "response",
    "GET",
    "POST",
    "/var/lib/bdr",
    "user",
    "session",
    "timeout",
    "connection",
    "established",
    "closed",
    "2024-11-25T14:36:00Z",
    "ok",
    "failed",
];

/// Fills `buf` with data of class `c` (seeded by `seed`).
pub fn fill_class(c: Class, seed: u64, buf: &mut [u8]) {
    let mut rng = Rng::new(seed);
    match c {
        Class::Random => rng.fill(buf),
        Class::Zeros => buf.fill(0),
        Class::Text => {
            let mut i = 0;
            while i < buf.len() {
                let r = rng.next_u64();
                let w: &[u8] = if r % 7 == 0 {
                    // a number: varies more than words
                    let n = format!("{} ", (r >> 8) % 100_000);
                    let l = n.len().min(buf.len() - i);
                    buf[i..i + l].copy_from_slice(&n.as_bytes()[..l]);
                    i += l;
                    continue;
                } else {
                    WORDS[(r >> 8) as usize % WORDS.len()].as_bytes()
                };
                let l = w.len().min(buf.len() - i);
                buf[i..i + l].copy_from_slice(&w[..l]);
                i += l;
                if i < buf.len() {
                    buf[i] = if r % 11 == 0 { b'\n' } else { b' ' };
                    i += 1;
                }
            }
        }
    }
}

/// `regions` regions of `region` bytes; region `i` of class `class(i)`.
pub fn make_data(regions: u64, region: usize, seed: u64, class: impl Fn(u64) -> Class) -> Vec<u8> {
    let mut v = vec![0u8; regions as usize * region];
    for (i, r) in v.chunks_mut(region).enumerate() {
        fill_class(
            class(i as u64),
            seed ^ (i as u64).wrapping_mul(0x1000_0001),
            r,
        );
    }
    v
}

/// The workspace root (bench/..), from this crate's manifest dir.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

/// Host facts for the JSON results: CPU model, cores, load, kernel.
pub fn host_info() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serde_json::json!({
        "cpu": model,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "kernel": kernel.trim(),
    })
}

/// Loads a TrueType font for chart text (DejaVu Sans or Liberation Sans from the
/// distribution, or `BDR_BENCH_FONT`) and registers it for plotters. `false`: no font,
/// charts are drawn without text.
pub fn register_chart_font() -> bool {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("BDR_BENCH_FONT") {
        candidates.push(p.into());
    }
    for p in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    ] {
        candidates.push(p.into());
    }
    for p in candidates {
        if let Ok(bytes) = std::fs::read(&p) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font(
                "sans-serif",
                plotters::style::FontStyle::Normal,
                bytes,
            )
            .is_ok()
            {
                return true;
            }
        }
    }
    false
}

/// One bar of a chart.
pub struct Bar {
    pub label: String,
    pub value: f64,
    /// Index into the palette: bars of the same group share a colour.
    pub group: usize,
}

/// A horizontal bar chart with optional vertical reference lines (`(x, label)`), as PNG.
pub fn bar_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    bars: &[Bar],
    refs: &[(f64, &str)],
    text: bool,
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let palette = [
        RGBColor(0x4c, 0x72, 0xb0),
        RGBColor(0xdd, 0x84, 0x52),
        RGBColor(0x55, 0xa8, 0x68),
        RGBColor(0xc4, 0x4e, 0x52),
        RGBColor(0x81, 0x72, 0xb3),
        RGBColor(0x93, 0x78, 0x60),
    ];
    let h = 120 + 34 * bars.len() as u32;
    let root = BitMapBackend::new(path, (1000, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = bars
        .iter()
        .map(|b| b.value)
        .chain(refs.iter().map(|r| r.0))
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.15;
    let n = bars.len();
    let mut cb = ChartBuilder::on(&root);
    cb.margin(12);
    if text {
        cb.caption(title, ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(260);
    } else {
        cb.x_label_area_size(10).y_label_area_size(10);
    }
    let mut chart = cb.build_cartesian_2d(0f64..xmax, 0f64..n as f64)?;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    let mut mesh = chart.configure_mesh();
    mesh.disable_y_mesh().y_labels(0);
    if text {
        mesh.x_desc(x_label).x_label_style(("sans-serif", 14));
    } else {
        mesh.x_labels(0);
    }
    mesh.draw()?;
    for (i, b) in bars.iter().enumerate() {
        // Top to bottom in the given order.
        let y = (n - 1 - i) as f64;
        let c = palette[b.group % palette.len()];
        let v = if b.value.is_finite() { b.value } else { 0.0 };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y + 0.15), (v, y + 0.85)],
            c.filled(),
        )))?;
        if text {
            chart.draw_series(std::iter::once(Text::new(
                format!("{:.0}", v),
                (v + xmax * 0.005, y + 0.7),
                ("sans-serif", 14).into_font(),
            )))?;
        }
    }
    for (x, l) in refs {
        chart.draw_series(LineSeries::new(
            [(*x, 0.0), (*x, n as f64)],
            ShapeStyle::from(&BLACK).stroke_width(2),
        ))?;
        if text {
            chart.draw_series(std::iter::once(Text::new(
                l.to_string(),
                (*x + xmax * 0.005, n as f64 - 0.1),
                ("sans-serif", 13).into_font(),
            )))?;
        }
    }
    if text {
        // Category labels in the left label area.
        let area = chart.plotting_area();
        let (px0, _) = area.get_base_pixel();
        let dim = area.dim_in_pixel();
        let step = dim.1 as f64 / n as f64;
        for (i, l) in labels.iter().enumerate() {
            let y = area.get_base_pixel().1 + (step * (i as f64 + 0.5)) as i32 - 8;
            root.draw(&Text::new(
                l.clone(),
                (px0 - 255, y),
                ("sans-serif", 14).into_font(),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}

/// A markdown table.
pub fn md_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n", header.join(" | "));
    s += &format!(
        "|{}\n",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for r in rows {
        s += &format!("| {} |\n", r.join(" | "));
    }
    s
}
