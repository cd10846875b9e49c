//! What the app reports about itself while it runs (`polyface run --metrics FILE`): one JSON
//! line every few seconds with its memory, the GPU allocator's figures, frames captured, dropped,
//! processed and shown, capture-to-present latency and stage p95 over the frames since the last
//! line. `polyface soak` reads these lines.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::timing::{percentile, Stage, TimingRing};

/// One report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    /// Seconds since the app started.
    pub t_s: f64,
    /// Resident memory, MB (as the process itself reads it).
    pub rss_mb: f64,
    /// GPU memory the allocator holds for live resources and reserves in blocks, MB; absent
    /// where the backend does not report it.
    pub gpu_allocated_mb: Option<f64>,
    pub gpu_reserved_mb: Option<f64>,
    /// Counts since the app started: display frames presented, processed frames shown, frames
    /// captured, frames replaced at the capture hand-over before inference took them, frames
    /// inference processed.
    pub presented: u64,
    pub shown: u64,
    pub captured: u64,
    pub capture_dropped: u64,
    pub processed: u64,
    /// Capture-to-present latency of the frames shown since the last line, ms.
    pub latency_p50_ms: Option<f32>,
    pub latency_p95_ms: Option<f32>,
    pub latency_max_ms: Option<f32>,
    /// p95 per stage (and of the per-frame total) over the frames shown since the last line, ms.
    pub stage_p95_ms: BTreeMap<String, f32>,
    pub total_p95_ms: Option<f32>,
    /// Confirmed people in the newest frame, avatar files loaded, people with avatar buffers,
    /// avatar stage draws so far, warning lines on screen.
    pub people: usize,
    pub avatar_files: usize,
    pub avatars_worn: usize,
    pub stage_draws: u64,
    pub warnings: usize,
}

/// What the app hands over each frame for the next report.
pub struct AppHealth<'a> {
    pub ring: &'a TimingRing,
    pub device: &'a wgpu::Device,
    /// Frames captured and dropped at the capture hand-over, frames processed.
    pub captured: u64,
    pub capture_dropped: u64,
    pub processed: u64,
    pub people: usize,
    pub avatar_files: usize,
    pub avatars_worn: usize,
    pub warnings: usize,
}

/// Latencies kept between two reports at most (a report every few seconds sees far fewer).
const MAX_LATENCIES: usize = 10_000;

/// Writes [`MetricsLine`]s to a file.
pub struct MetricsLog {
    file: BufWriter<File>,
    every: Duration,
    started: Instant,
    next: Instant,
    presented: u64,
    shown: u64,
    stage_draws: u64,
    latencies: Vec<f32>,
    /// The newest frame (sequence number) the last report covered.
    reported_seq: Option<u64>,
}

impl MetricsLog {
    pub fn create(path: &Path, every: Duration) -> Result<MetricsLog> {
        let file = File::create(path)
            .with_context(|| format!("{}: cannot create the metrics file", path.display()))?;
        let now = Instant::now();
        Ok(MetricsLog {
            file: BufWriter::new(file),
            every,
            started: now,
            next: now + every,
            presented: 0,
            shown: 0,
            stage_draws: 0,
            latencies: Vec::new(),
            reported_seq: None,
        })
    }

    /// Counts one presented display frame; `latency_ms` when it showed a newly processed frame,
    /// `stage_drawn` when the avatar stage was drawn for it.
    pub fn presented(&mut self, latency_ms: Option<f32>, stage_drawn: bool) {
        self.presented += 1;
        self.stage_draws += stage_drawn as u64;
        if let Some(ms) = latency_ms {
            self.shown += 1;
            if self.latencies.len() < MAX_LATENCIES {
                self.latencies.push(ms);
            }
        }
    }

    /// Writes a report when one is due. A write failure is logged once the file is unusable;
    /// the app goes on.
    pub fn maybe_report(&mut self, app: &AppHealth) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + self.every;
        let line = self.line(now, app);
        let written = serde_json::to_string(&line)
            .map_err(std::io::Error::other)
            .and_then(|text| writeln!(self.file, "{text}"))
            .and_then(|_| self.file.flush());
        if let Err(e) = written {
            log::warn!("metrics: {e}");
        }
    }

    fn line(&mut self, now: Instant, app: &AppHealth) -> MetricsLine {
        let mut latencies = std::mem::take(&mut self.latencies);
        latencies.sort_by(|a, b| a.total_cmp(b));
        let p = |q: f32| (!latencies.is_empty()).then(|| percentile(&latencies, q));
        let fresh: Vec<_> = app
            .ring
            .iter()
            .filter(|f| self.reported_seq.is_none_or(|seq| f.seq > seq))
            .collect();
        self.reported_seq = fresh.last().map(|f| f.seq).or(self.reported_seq);
        let p95 = |mut values: Vec<f32>| {
            values.sort_by(|a, b| a.total_cmp(b));
            (!values.is_empty()).then(|| percentile(&values, 0.95))
        };
        let stage_p95_ms = Stage::ALL
            .iter()
            .filter_map(|stage| {
                let values = fresh.iter().filter_map(|f| f.get(*stage)).collect();
                Some((stage.name().to_string(), p95(values)?))
            })
            .collect();
        let report = app.device.generate_allocator_report();
        let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        MetricsLine {
            t_s: (now - self.started).as_secs_f64(),
            rss_mb: resident_mb().unwrap_or(f64::NAN),
            gpu_allocated_mb: report.as_ref().map(|r| mb(r.total_allocated_bytes)),
            gpu_reserved_mb: report.as_ref().map(|r| mb(r.total_reserved_bytes)),
            presented: self.presented,
            shown: self.shown,
            captured: app.captured,
            capture_dropped: app.capture_dropped,
            processed: app.processed,
            latency_p50_ms: p(0.5),
            latency_p95_ms: p(0.95),
            latency_max_ms: latencies.last().copied(),
            stage_p95_ms,
            total_p95_ms: p95(fresh.iter().map(|f| f.total()).collect()),
            people: app.people,
            avatar_files: app.avatar_files,
            avatars_worn: app.avatars_worn,
            stage_draws: self.stage_draws,
            warnings: app.warnings,
        }
    }
}

/// Resident memory of process `pid` (`None`: this one), MB, from /proc (Linux).
pub fn resident_mb_of(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn resident_mb() -> Option<f64> {
    resident_mb_of(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timing::FrameTimings;

    #[test]
    fn latencies_between_reports_are_bounded_and_reports_cover_new_frames_only() {
        let Ok(gpu) = crate::render::Gpu::headless() else {
            eprintln!("skipped: no GPU adapter");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::create(&path, Duration::ZERO).unwrap();
        let mut ring = TimingRing::with_capacity(600);
        fn app<'a>(ring: &'a TimingRing, device: &'a wgpu::Device) -> AppHealth<'a> {
            AppHealth {
                ring,
                device,
                captured: 0,
                capture_dropped: 0,
                processed: 0,
                people: 0,
                avatar_files: 0,
                avatars_worn: 0,
                warnings: 0,
            }
        }
        for seq in 0..100 {
            let mut t = FrameTimings::new(seq);
            t.add(Stage::Network, Duration::from_millis(10 + seq % 10));
            ring.push(t);
        }
        // hours without a report: only MAX_LATENCIES are kept
        for i in 0..3 * MAX_LATENCIES {
            log.presented(Some(i as f32 / 100.0), i % 2 == 0);
        }
        assert_eq!(log.latencies.len(), MAX_LATENCIES);
        log.maybe_report(&app(&ring, &gpu.device));
        for seq in 100..110 {
            let mut t = FrameTimings::new(seq);
            t.add(Stage::Network, Duration::from_millis(50));
            ring.push(t);
        }
        log.presented(Some(40.0), false);
        log.maybe_report(&app(&ring, &gpu.device));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<MetricsLine> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].presented, 3 * MAX_LATENCIES as u64);
        assert_eq!(lines[0].stage_draws, 3 * MAX_LATENCIES as u64 / 2);
        assert!((lines[0].stage_p95_ms["network"] - 19.0).abs() < 0.01);
        assert_eq!(lines[1].shown, 3 * MAX_LATENCIES as u64 + 1);
        assert_eq!(
            lines[1].latency_p95_ms,
            Some(40.0),
            "only the new frame's latency"
        );
        assert!(
            (lines[1].stage_p95_ms["network"] - 50.0).abs() < 0.01,
            "only frames after the last report"
        );
        assert!(lines[1].rss_mb > 1.0);
    }
}
