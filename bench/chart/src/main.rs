//! `bdr-bench-chart RESULT.json OUT.png [FONT.ttf]`: bench/summarize.py's JSON as a PNG.
//! Top: IOPS of each device relative to dm-linear in the same rounds, per backend and job.
//! Bottom: p99 completion latency (µs, log scale). Text is drawn with ab_glyph from a TTF
//! file (default: Debian's fonts-dejavu-core), so no fontconfig is needed.
use std::error::Error;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};
use serde_json::Value;

const DEVS: [(&str, &str); 6] = [
    ("raw", "raw"),
    ("linear", "dm-linear"),
    ("bdr", "bdr idle"),
    ("bdrcut", "bdr during a cut"),
    ("drbdA", "DRBD A"),
    ("drbdC", "DRBD C"),
];
const COLORS: [RGBColor; 6] = [
    RGBColor(150, 150, 150),
    RGBColor(90, 90, 90),
    RGBColor(31, 119, 180),
    RGBColor(120, 180, 230),
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
];

fn job_label(j: &str) -> String {
    match j {
        "rand4k-qd1" => "4k rand QD1".into(),
        "rand4k-qd32" => "4k rand QD32".into(),
        "seq128k-qd4" => "128k seq QD4".into(),
        _ => j.into(),
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: bdr-bench-chart RESULT.json OUT.png [FONT.ttf]".into());
    }
    let font_path = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into());
    let font: &'static [u8] = Box::leak(
        std::fs::read(&font_path)
            .map_err(|e| format!("{font_path}: {e} (install fonts-dejavu-core)"))?
            .into_boxed_slice(),
    );
    register_font("sans-serif", FontStyle::Normal, font).map_err(|_| "bad font file")?;

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&args[1])?)?;
    let kver = v["kernel"].as_str().unwrap_or("?").to_string();
    // Groups: (label, per device: Some((iops ratio, p99 µs))).
    let mut groups: Vec<(String, Vec<Option<(f64, f64)>>)> = Vec::new();
    if let Some(bes) = v["backends"].as_object() {
        for be in ["nullb", "brd"] {
            let Some(jobs) = bes.get(be).and_then(|j| j.as_object()) else { continue };
            for (job, r) in jobs {
                let row = DEVS
                    .iter()
                    .map(|(d, _)| {
                        let x = &r["devices"][*d];
                        let p99 = x["p99_us"].as_f64()?;
                        let ratio = if *d == "linear" {
                            1.0
                        } else {
                            r["vs_linear"][*d]["iops_ratio_paired"].as_f64()?
                        };
                        Some((ratio, p99))
                    })
                    .collect();
                groups.push((format!("{be} {}", job_label(job)), row));
            }
        }
    }
    if groups.is_empty() {
        return Err("no device results in the JSON".into());
    }
    let n = groups.len() as f64;
    let ymax = groups
        .iter()
        .flat_map(|g| g.1.iter().flatten().map(|x| x.0))
        .fold(1.2f64, f64::max)
        * 1.08;
    let (pmin, pmax) = groups
        .iter()
        .flat_map(|g| g.1.iter().flatten().map(|x| x.1))
        .fold((f64::MAX, 0f64), |(a, b), p| (a.min(p), b.max(p)));

    let full = BitMapBackend::new(&args[2], (1400, 1000)).into_drawing_area();
    full.fill(&WHITE)?;
    let mut title = format!("bdr bench, kernel {kver} (QEMU TCG): vs dm-linear and DRBD 8.4");
    if let Some(c) = v["cuts_under_load"].as_object() {
        let f = |k: &str| c.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
        title += &format!(
            "  |  cuts under load: {:.0}/min, suspend p50 {:.0} / p99 {:.0} ms, RPO p50 {:.1} s",
            f("cuts_per_min"),
            f("suspend_ms_p50"),
            f("suspend_ms_p99"),
            f("rpo_s_p50")
        );
    }
    let root = full.titled(&title, ("sans-serif", 20))?;
    let (top, bottom) = root.split_vertically(560);
    let labels: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
    let fmt = |_: &f64| String::new();
    let label_style = TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    let bw = 0.8 / DEVS.len() as f64;

    let mut c = ChartBuilder::on(&top)
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .caption("IOPS relative to dm-linear (same rounds, median of per-round ratios)", ("sans-serif", 18))
        .build_cartesian_2d(0f64..n, 0f64..ymax)?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&fmt)
        .y_desc("IOPS / dm-linear")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (di, (_, name)) in DEVS.iter().enumerate() {
        let col = COLORS[di];
        let bars: Vec<_> = groups
            .iter()
            .enumerate()
            .filter_map(|(gi, g)| {
                let (r, _) = g.1[di]?;
                let x0 = gi as f64 + 0.1 + di as f64 * bw;
                Some(Rectangle::new([(x0, 0.0), (x0 + bw * 0.9, r)], col.filled()))
            })
            .collect();
        c.draw_series(bars)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], col.filled()));
    }
    c.draw_series(LineSeries::new([(0.0, 1.0), (n, 1.0)], BLACK.stroke_width(1)))?;
    for (gi, l) in labels.iter().enumerate() {
        let (x, y) = c.backend_coord(&(gi as f64 + 0.5, 0.0));
        full.draw(&Text::new(l.clone(), (x, y + 6), label_style.clone()))?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;

    let lo = (pmin / 1.5).max(0.1);
    let mut c = ChartBuilder::on(&bottom)
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .caption("p99 completion latency (µs, log scale)", ("sans-serif", 18))
        .build_cartesian_2d(0f64..n, (lo..pmax * 1.5).log_scale())?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&fmt)
        .y_desc("p99 µs")
        .y_label_formatter(&|v: &f64| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (di, _) in DEVS.iter().enumerate() {
        let col = COLORS[di];
        let bars: Vec<_> = groups
            .iter()
            .enumerate()
            .filter_map(|(gi, g)| {
                let (_, p) = g.1[di]?;
                let x0 = gi as f64 + 0.1 + di as f64 * bw;
                Some(Rectangle::new([(x0, lo), (x0 + bw * 0.9, p)], col.filled()))
            })
            .collect();
        c.draw_series(bars)?;
    }
    for (gi, l) in labels.iter().enumerate() {
        let (x, y) = c.backend_coord(&(gi as f64 + 0.5, lo));
        full.draw(&Text::new(l.clone(), (x, y + 6), label_style.clone()))?;
    }
    full.present()?;
    Ok(())
}
