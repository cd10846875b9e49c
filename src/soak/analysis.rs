//! A soak run's samples and what they say: memory growth after warm-up (least-squares slope and
//! percentage), frame rates, drops and latency over time, stalls; the CSV and the PNG plot.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::metrics::MetricsLine;
use crate::bench::plot::{line_chart, Chart, Series};
use crate::timing::Stage;

/// One sample of a soak run: one report of the app.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Seconds since the app was started (the report's time).
    pub t_s: f64,
    /// Resident memory of the app process, MB, read from outside it as the report arrived.
    pub rss_mb: f64,
    /// The app's report.
    pub app: Option<MetricsLine>,
    /// VMC packets received since the previous sample.
    pub vmc_packets: u64,
}

/// When a run fails.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How often the app reports; three times that without a report is a stall.
    pub report_every_s: f64,
    pub warmup_s: f64,
    /// Resident (and GPU) memory growth after warm-up, MB per second.
    pub max_growth_mb_s: f64,
    /// Resident memory growth after warm-up over the run, percent of the warm level.
    pub max_growth_percent: Option<f64>,
}

/// Least-squares line through `points`: (slope, intercept); `None` for fewer than two distinct x.
pub fn fit_line(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let slope = sxy / sxx;
    Some((slope, mean_y - slope * mean_x))
}

/// Growth of one quantity after warm-up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Growth {
    /// MB per second (fitted slope).
    pub mb_per_s: f64,
    /// The fitted line at the end of warm-up and at the last sample, MB.
    pub from_mb: f64,
    pub to_mb: f64,
}

impl Growth {
    pub fn percent(&self) -> f64 {
        100.0 * (self.to_mb - self.from_mb) / self.from_mb.max(1e-9)
    }
}

fn growth(points: &[(f64, f64)]) -> Option<Growth> {
    let (slope, intercept) = fit_line(points)?;
    let (first, last) = (points.first()?.0, points.last()?.0);
    Some(Growth {
        mb_per_s: slope,
        from_mb: intercept + slope * first,
        to_mb: intercept + slope * last,
    })
}

/// Per-interval rates and latency between two samples.
#[derive(Clone, Copy, Debug, Default)]
struct Interval {
    display_fps: f64,
    shown_fps: f64,
    capture_fps: f64,
    dropped_per_s: f64,
}

fn interval(previous: Option<&MetricsLine>, line: &MetricsLine) -> Option<Interval> {
    let previous = previous?;
    let dt = line.t_s - previous.t_s;
    if dt <= 0.0 {
        return None;
    }
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / dt;
    Some(Interval {
        display_fps: rate(previous.presented, line.presented),
        shown_fps: rate(previous.shown, line.shown),
        capture_fps: rate(previous.captured, line.captured),
        dropped_per_s: rate(previous.capture_dropped, line.capture_dropped),
    })
}

/// What a run measured, and what went wrong (nothing: it passed).
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub samples: usize,
    pub duration_s: f64,
    pub rss: Option<Growth>,
    pub gpu: Option<Growth>,
    pub rss_peak_mb: f64,
    pub captured: u64,
    pub capture_dropped: u64,
    pub processed: u64,
    pub shown: u64,
    pub presented: u64,
    /// Median over the samples after warm-up of each interval's latency p95, in the first and
    /// last fifth of the run after warm-up, and the largest interval p95.
    pub latency_p95_first_ms: Option<f32>,
    pub latency_p95_last_ms: Option<f32>,
    pub latency_p95_worst_ms: Option<f32>,
    pub people_max: usize,
    pub vmc_packets: u64,
    pub problems: Vec<String>,
}

fn median(mut values: Vec<f32>) -> Option<f32> {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied()
}

/// Sums up `samples` against `limits`; `extra_problems` (crash, errors in the log) are added.
pub fn summarize(samples: &[Sample], limits: Limits, extra_problems: Vec<String>) -> Summary {
    let mut summary = Summary {
        samples: samples.len(),
        duration_s: samples.last().map_or(0.0, |s| s.t_s),
        rss_peak_mb: samples.iter().map(|s| s.rss_mb).fold(0.0, f64::max),
        vmc_packets: samples.iter().map(|s| s.vmc_packets).sum(),
        problems: extra_problems,
        ..Default::default()
    };
    let warm: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_s >= limits.warmup_s && s.rss_mb.is_finite())
        .collect();
    let rss_points: Vec<(f64, f64)> = warm.iter().map(|s| (s.t_s, s.rss_mb)).collect();
    let gpu_points: Vec<(f64, f64)> = warm
        .iter()
        .filter_map(|s| Some((s.t_s, s.app.as_ref()?.gpu_allocated_mb?)))
        .collect();
    summary.rss = growth(&rss_points);
    summary.gpu = growth(&gpu_points);
    if warm.len() < 3 {
        summary.problems.push(format!(
            "only {} samples after the {:.0} s warm-up: the run was too short or the app left early",
            warm.len(),
            limits.warmup_s
        ));
    }
    for (what, g) in [("resident", summary.rss), ("GPU", summary.gpu)] {
        if let Some(g) = g.filter(|g| g.mb_per_s > limits.max_growth_mb_s) {
            summary.problems.push(format!(
                "{what} memory grew {:.3} MB/s after warm-up ({:.1} -> {:.1} MB; limit {} MB/s)",
                g.mb_per_s, g.from_mb, g.to_mb, limits.max_growth_mb_s
            ));
        }
    }
    if let (Some(g), Some(limit)) = (summary.rss, limits.max_growth_percent) {
        if g.percent() > limit {
            summary.problems.push(format!(
                "resident memory grew {:.1} % after warm-up ({:.1} -> {:.1} MB; limit {limit} %)",
                g.percent(),
                g.from_mb,
                g.to_mb
            ));
        }
    }
    if let Some(last) = samples.iter().rev().find_map(|s| s.app.as_ref()) {
        summary.captured = last.captured;
        summary.capture_dropped = last.capture_dropped;
        summary.processed = last.processed;
        summary.shown = last.shown;
        summary.presented = last.presented;
    }
    summary.people_max = samples
        .iter()
        .filter_map(|s| s.app.as_ref().map(|a| a.people))
        .max()
        .unwrap_or(0);
    // stalls: a gap after warm-up without a report (the app reports from its redraw), or
    // (with people in view) a report without a VMC packet since the previous one
    let mut previous: Option<&Sample> = None;
    for s in samples.iter().filter(|s| s.app.is_some()) {
        if let Some(p) = previous.filter(|_| s.t_s >= limits.warmup_s) {
            let gap = s.t_s - p.t_s;
            if gap > 3.0 * limits.report_every_s {
                summary.problems.push(format!(
                    "no report from the app for {gap:.0} s (from {:.0} to {:.0} s): it stalled",
                    p.t_s, s.t_s
                ));
            }
            let (line, before) = (s.app.as_ref(), p.app.as_ref());
            if let (Some(line), Some(before)) = (line, before) {
                if line.people > 0 && before.people > 0 && s.vmc_packets == 0 {
                    summary.problems.push(format!(
                        "no VMC packet between {:.0} and {:.0} s with {} people in view",
                        p.t_s, s.t_s, line.people
                    ));
                }
            }
        }
        previous = Some(s);
    }
    let p95s: Vec<(f64, f32)> = warm
        .iter()
        .filter_map(|s| Some((s.t_s, s.app.as_ref()?.latency_p95_ms?)))
        .collect();
    let fifth = p95s.len().div_ceil(5);
    summary.latency_p95_first_ms = median(p95s.iter().take(fifth).map(|p| p.1).collect());
    summary.latency_p95_last_ms = median(p95s.iter().rev().take(fifth).map(|p| p.1).collect());
    summary.latency_p95_worst_ms = p95s.iter().map(|p| p.1).reduce(f32::max);
    summary
}

impl Summary {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// The figures as a few lines of text.
    pub fn report(&self, limits: &Limits) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "{} samples over {:.0} s, warm-up {:.0} s",
            self.samples, self.duration_s, limits.warmup_s
        );
        if let Some(g) = self.rss {
            let _ = writeln!(
                text,
                "resident memory after warm-up: {:.1} -> {:.1} MB (fitted), {:+.4} MB/s, {:+.2} %; peak {:.1} MB",
                g.from_mb,
                g.to_mb,
                g.mb_per_s,
                g.percent(),
                self.rss_peak_mb
            );
        }
        if let Some(g) = self.gpu {
            let _ = writeln!(
                text,
                "GPU memory (allocator, live resources): {:.1} -> {:.1} MB, {:+.4} MB/s",
                g.from_mb, g.to_mb, g.mb_per_s
            );
        }
        let _ = writeln!(
            text,
            "frames: {} captured, {} dropped at the capture hand-over ({:.1} %), {} processed, {} shown; {} presented",
            self.captured,
            self.capture_dropped,
            100.0 * self.capture_dropped as f64 / self.captured.max(1) as f64,
            self.processed,
            self.shown,
            self.presented
        );
        let ms = |v: Option<f32>| v.map_or("-".into(), |v| format!("{v:.1}"));
        let _ = writeln!(
            text,
            "capture-to-present latency p95 (per {:.0} s interval): first fifth {} ms, last fifth {} ms, worst {} ms",
            if self.samples > 1 {
                self.duration_s / (self.samples - 1) as f64
            } else {
                0.0
            },
            ms(self.latency_p95_first_ms),
            ms(self.latency_p95_last_ms),
            ms(self.latency_p95_worst_ms)
        );
        let _ = writeln!(
            text,
            "people in view: up to {}; VMC packets received: {}",
            self.people_max, self.vmc_packets
        );
        if self.passed() {
            text.push_str("PASS\n");
        } else {
            for problem in &self.problems {
                let _ = writeln!(text, "FAIL: {problem}");
            }
        }
        text
    }
}

/// The samples as CSV: one row per sample, rates and latency over the interval before it.
pub fn write_csv(path: &Path, samples: &[Sample]) -> Result<()> {
    let mut text = String::from(
        "t_s,rss_mb,gpu_allocated_mb,gpu_reserved_mb,display_fps,shown_fps,capture_fps,\
         dropped_per_s,captured,capture_dropped,processed,shown,latency_p50_ms,latency_p95_ms,\
         latency_max_ms,total_p95_ms",
    );
    for stage in Stage::ALL {
        let _ = write!(text, ",{}_p95_ms", stage.name());
    }
    text.push_str(",people,vmc_packets,avatar_files,avatars_worn,stage_draws,warnings\n");
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
    let mut previous: Option<&MetricsLine> = None;
    for s in samples {
        let _ = write!(text, "{:.1},{:.2}", s.t_s, s.rss_mb);
        match &s.app {
            Some(a) => {
                let i = interval(previous, a);
                let f = |v: Option<f32>| opt(v.map(f64::from));
                let _ = write!(
                    text,
                    ",{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    opt(a.gpu_allocated_mb),
                    opt(a.gpu_reserved_mb),
                    opt(i.map(|i| i.display_fps)),
                    opt(i.map(|i| i.shown_fps)),
                    opt(i.map(|i| i.capture_fps)),
                    opt(i.map(|i| i.dropped_per_s)),
                    a.captured,
                    a.capture_dropped,
                    a.processed,
                    a.shown,
                    f(a.latency_p50_ms),
                    f(a.latency_p95_ms),
                    f(a.latency_max_ms),
                    f(a.total_p95_ms),
                    Stage::ALL
                        .iter()
                        .map(|st| f(a.stage_p95_ms.get(st.name()).copied()))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                let _ = writeln!(
                    text,
                    ",{},{},{},{},{},{}",
                    a.people,
                    s.vmc_packets,
                    a.avatar_files,
                    a.avatars_worn,
                    a.stage_draws,
                    a.warnings
                );
                previous = Some(a);
            }
            None => {
                let empty = 14 + Stage::COUNT;
                // no report: the app's columns stay empty, the packets counted still show
                let _ = writeln!(text, "{},,{},,,,", ",".repeat(empty), s.vmc_packets);
            }
        }
    }
    std::fs::write(path, text).with_context(|| format!("{}: cannot write", path.display()))
}

/// Memory, latency and frame rates over time, three charts stacked into one PNG.
pub fn write_plot(path: &Path, samples: &[Sample], limits: &Limits, title: &str) -> Result<()> {
    let minutes = |t: f64| t / 60.0;
    let series = |name: &str, colour: [u8; 3], points: Vec<(f64, f64)>| Series {
        name: name.to_string(),
        colour,
        width: 2,
        dots: false,
        points,
    };
    let app_points = |f: &dyn Fn(&MetricsLine) -> Option<f64>| -> Vec<(f64, f64)> {
        samples
            .iter()
            .filter_map(|s| Some((minutes(s.t_s), f(s.app.as_ref()?)?)))
            .collect()
    };
    let rss: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.rss_mb.is_finite())
        .map(|s| (minutes(s.t_s), s.rss_mb))
        .collect();
    let top = rss.iter().map(|p| p.1).fold(1.0, f64::max);
    let warm = minutes(limits.warmup_s);
    let warmup_mark = |top: f64| Series {
        name: "end of warm-up".into(),
        colour: [150, 150, 150],
        width: 1,
        dots: false,
        points: vec![(warm, 0.0), (warm, top)],
    };
    let memory = Chart {
        size: (900, 330),
        caption: title,
        x_label: "minutes",
        y_label: "MB",
        x_ticks: None,
        series: vec![
            series("resident memory", [230, 110, 60], rss),
            series(
                "GPU allocator (live resources)",
                [60, 140, 230],
                app_points(&|a| a.gpu_allocated_mb),
            ),
            warmup_mark(top),
        ],
    };
    let latency_points = app_points(&|a| a.latency_p95_ms.map(f64::from));
    let latency_top = latency_points.iter().map(|p| p.1).fold(1.0, f64::max);
    let latency = Chart {
        size: (900, 330),
        caption: "per interval",
        x_label: "minutes",
        y_label: "ms",
        x_ticks: None,
        series: vec![
            series(
                "capture-to-present latency p95",
                [230, 110, 60],
                latency_points,
            ),
            series(
                "stage total p95",
                [60, 140, 230],
                app_points(&|a| a.total_p95_ms.map(f64::from)),
            ),
            warmup_mark(latency_top),
        ],
    };
    let mut rates: Vec<[Vec<(f64, f64)>; 3]> = Vec::new();
    let mut previous: Option<&MetricsLine> = None;
    for s in samples {
        if let Some(a) = &s.app {
            if let Some(i) = interval(previous, a) {
                let t = minutes(s.t_s);
                rates.push([
                    vec![(t, i.display_fps)],
                    vec![(t, i.shown_fps)],
                    vec![(t, i.dropped_per_s)],
                ]);
            }
            previous = Some(a);
        }
    }
    let column = |k: usize| rates.iter().flat_map(|r| r[k].clone()).collect::<Vec<_>>();
    let frames = Chart {
        size: (900, 330),
        caption: "frames per second",
        x_label: "minutes",
        y_label: "per s",
        x_ticks: None,
        series: vec![
            series("presented (display)", [90, 190, 90], column(0)),
            series("camera frames shown", [60, 140, 230], column(1)),
            series("dropped at capture", [230, 110, 60], column(2)),
        ],
    };
    let charts = [
        line_chart(&memory)?,
        line_chart(&latency)?,
        line_chart(&frames)?,
    ];
    let height = charts.iter().map(|c| c.height()).sum();
    let mut image = image::RgbImage::new(900, height);
    let mut y = 0;
    for chart in &charts {
        image::imageops::replace(&mut image, chart, 0, y as i64);
        y += chart.height();
    }
    // the smallest PNG the encoder makes: the plots go into the repository
    let file = std::fs::File::create(path)
        .with_context(|| format!("{}: cannot write the plot", path.display()))?;
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        std::io::BufWriter::new(file),
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Adaptive,
    );
    image
        .write_with_encoder(encoder)
        .with_context(|| format!("{}: cannot write the plot", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, rss_mb: f64, presented: u64, people: usize, vmc: u64) -> Sample {
        Sample {
            t_s,
            rss_mb,
            app: Some(MetricsLine {
                t_s,
                rss_mb,
                gpu_allocated_mb: Some(20.0),
                presented,
                shown: presented / 2,
                captured: presented,
                people,
                latency_p95_ms: Some(40.0 + t_s as f32 / 100.0),
                ..Default::default()
            }),
            vmc_packets: vmc,
        }
    }

    const LIMITS: Limits = Limits {
        report_every_s: 5.0,
        warmup_s: 20.0,
        max_growth_mb_s: 0.5,
        max_growth_percent: Some(5.0),
    };

    #[test]
    fn a_line_is_fitted_exactly() {
        let (slope, intercept) = fit_line(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]).unwrap();
        assert!((slope - 2.0).abs() < 1e-12 && (intercept - 1.0).abs() < 1e-12);
        assert!(fit_line(&[(1.0, 1.0)]).is_none());
        assert!(fit_line(&[(1.0, 1.0), (1.0, 2.0)]).is_none());
    }

    #[test]
    fn flat_memory_after_warm_up_passes_and_growth_fails() {
        // steep during warm-up, then flat with noise: passes
        let flat: Vec<Sample> = (0..19)
            .map(|k| {
                let t = 5.0 * k as f64;
                let rss = if t < 20.0 { 100.0 + 5.0 * t } else { 200.0 } + (k % 3) as f64;
                sample(t, rss, 100 * k as u64, 3, 50)
            })
            .collect();
        let summary = summarize(&flat, LIMITS, Vec::new());
        assert!(summary.passed(), "{:?}", summary.problems);
        let g = summary.rss.unwrap();
        assert!(g.mb_per_s.abs() < 0.05, "{g:?}");
        // 0.6 MB/s after warm-up: fails on the rate
        let growing: Vec<Sample> = (0..19)
            .map(|k| {
                let t = 5.0 * k as f64;
                sample(t, 200.0 + 0.6 * t, 100 * k as u64, 3, 50)
            })
            .collect();
        let summary = summarize(&growing, LIMITS, Vec::new());
        assert!((summary.rss.unwrap().mb_per_s - 0.6).abs() < 1e-9);
        assert!(summary.problems.iter().any(|p| p.contains("MB/s")));
        // slow but long growth: 0.1 MB/s over an hour from 200 MB is +180 %: fails on the share
        let hour: Vec<Sample> = (0..73)
            .map(|k| {
                let t = 50.0 * k as f64;
                sample(t, 200.0 + 0.1 * t, 100 * k as u64, 3, 50)
            })
            .collect();
        let every_50_s = Limits {
            report_every_s: 50.0,
            ..LIMITS
        };
        let summary = summarize(&hour, every_50_s, Vec::new());
        assert_eq!(summary.problems.len(), 1, "{:?}", summary.problems);
        assert!(summary.problems[0].contains('%'));
    }

    #[test]
    fn stalls_and_silent_streams_are_problems() {
        let mut samples: Vec<Sample> = (0..12)
            .map(|k| sample(5.0 * k as f64, 200.0, 100 * k as u64, 3, 50))
            .collect();
        samples[6].vmc_packets = 0;
        // no report at 40, 45 and 50 s: 20 s without one
        samples.drain(8..11);
        let summary = summarize(&samples, LIMITS, vec!["the app exited with 1".into()]);
        let all = summary.problems.join("\n");
        assert!(all.contains("no VMC packet between 25 and 30 s"), "{all}");
        assert!(
            all.contains("no report from the app for 20 s (from 35 to 55 s)"),
            "{all}"
        );
        assert!(all.contains("exited with 1"));
        assert_eq!(summary.problems.len(), 3, "{all}");
        // reports 15 s apart (three intervals) are not a stall
        samples.remove(5);
        samples[6].vmc_packets = 50;
        let summary = summarize(&samples, LIMITS, Vec::new());
        assert!(
            summary
                .problems
                .iter()
                .all(|p| !p.contains("from 20 to 35")),
            "{:?}",
            summary.problems
        );
    }

    #[test]
    fn csv_rows_have_every_column_and_the_plot_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut samples: Vec<Sample> = (0..6)
            .map(|k| sample(5.0 * k as f64, 200.0, 100 * k as u64, 3, 50))
            .collect();
        samples[3].app = None;
        let csv = dir.path().join("soak.csv");
        write_csv(&csv, &samples).unwrap();
        let text = std::fs::read_to_string(&csv).unwrap();
        let widths: Vec<usize> = text.lines().map(|l| l.split(',').count()).collect();
        assert_eq!(widths.len(), 7);
        assert!(widths.iter().all(|w| *w == widths[0]), "{widths:?}");
        assert!(
            text.lines().nth(2).unwrap().contains(",20.000,"),
            "display fps: {text}"
        );
        let png = dir.path().join("soak.png");
        write_plot(&png, &samples, &LIMITS, "test").unwrap();
        let image = image::open(&png).unwrap();
        assert_eq!((image.width(), image.height()), (900, 990));
        let bytes = std::fs::metadata(&png).unwrap().len();
        assert!(
            bytes < 150_000,
            "small enough for the repository: {bytes} bytes"
        );
    }
}
