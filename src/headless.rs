//! `polyface track`: the headless twin of `run`. Reads every frame (none dropped), runs the
//! pipeline, and writes per-frame faces (`faces.jsonl`) and stage timings (`timings.csv`).

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::capture::{self, CaptureError, SourceOptions, SourceSpec};
use crate::processor::FrameProcessor;
use crate::timing::{FrameTimings, TimingRing};

/// What a `track` run did.
#[derive(Debug)]
pub struct TrackSummary {
    pub frames: u64,
    pub faces: u64,
    pub warnings: Vec<String>,
    pub timings_csv: PathBuf,
    pub faces_jsonl: PathBuf,
    pub ring: TimingRing,
}

/// What `track` does besides reading frames.
pub struct TrackJob {
    /// Stop after this many frames.
    pub max_frames: Option<u64>,
    /// Pipeline, tracking, and the take and VMC stream if asked for.
    pub processor: FrameProcessor,
}

/// Runs every frame of `spec` through the frame processor and writes `timings.csv` and
/// `faces.jsonl` into `out`.
pub fn track(
    spec: &SourceSpec,
    options: &SourceOptions,
    out: &Path,
    job: TrackJob,
) -> Result<TrackSummary> {
    let TrackJob {
        max_frames,
        mut processor,
    } = job;
    let mut source = capture::open(spec, options)?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create the output folder", out.display()))?;
    let timings_csv = out.join("timings.csv");
    let faces_jsonl = out.join("faces.jsonl");
    let mut timings_file = create(&timings_csv)?;
    let mut faces_file = create(&faces_jsonl)?;
    writeln!(timings_file, "{}", FrameTimings::csv_header())
        .with_context(|| write_error(&timings_csv))?;

    let progress = progress_bar(source.as_ref(), spec, max_frames);
    let mut ring = TimingRing::with_capacity(1024);
    let mut warnings = Vec::new();
    let mut frames = 0u64;
    let mut face_count = 0u64;
    let started = Instant::now();
    loop {
        if max_frames.is_some_and(|max| frames >= max) {
            break;
        }
        let next = source.next_frame();
        for warning in source.take_warnings() {
            progress.suspend(|| log::warn!("{warning}"));
            warnings.push(warning);
        }
        let frame = match next {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e @ CaptureError::Corrupt { .. }) if frames > 0 => {
                // Frames already written stay valid; the run still fails so scripts notice.
                timings_file.flush().ok();
                faces_file.flush().ok();
                return Err(e).context(format!("stopped after {frames} good frames"));
            }
            Err(e) => return Err(e.into()),
        };
        let processed = processor.process(frame);
        if let Some(error) = processed.pipeline_error {
            anyhow::bail!("frame {}: {error}", processed.frame.seq);
        }
        for notice in processor.take_notices() {
            // Tracking goes on when recording or streaming fails.
            progress.suspend(|| log::warn!("{notice}"));
            warnings.push(notice);
        }
        // faces seen in this frame (the people not lost)
        face_count += processed
            .people
            .iter()
            .filter(|p| p.state != crate::track::TrackState::Lost)
            .count() as u64;
        serde_json::to_writer(&mut faces_file, &processed.record)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(faces_file))
            .with_context(|| write_error(&faces_jsonl))?;
        writeln!(timings_file, "{}", processed.timings.csv_row())
            .with_context(|| write_error(&timings_csv))?;
        ring.push(processed.timings);
        frames += 1;
        progress.inc(1);
    }
    timings_file
        .flush()
        .with_context(|| write_error(&timings_csv))?;
    faces_file
        .flush()
        .with_context(|| write_error(&faces_jsonl))?;
    progress.finish_and_clear();
    if let Some((_, finished)) = processor.stop_recording() {
        match finished {
            Ok(files) => log::info!("take: {} animation file(s)", files.len()),
            Err(e) => warnings.push(format!("{e:#}")),
        }
    }
    if frames == 0 {
        anyhow::bail!("{}: no frames could be read", source.name());
    }
    log::info!(
        "{frames} frames in {:.2} s -> {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(TrackSummary {
        frames,
        faces: face_count,
        warnings,
        timings_csv,
        faces_jsonl,
        ring,
    })
}

fn create(path: &Path) -> Result<BufWriter<File>> {
    Ok(BufWriter::new(File::create(path).with_context(|| {
        format!("{}: cannot create file", path.display())
    })?))
}

fn write_error(path: &Path) -> String {
    format!(
        "{}: write failed (disk full or folder not writable?)",
        path.display()
    )
}

fn progress_bar(
    source: &dyn capture::FrameSource,
    spec: &SourceSpec,
    max_frames: Option<u64>,
) -> indicatif::ProgressBar {
    if !std::io::stdout().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let total = match spec {
        SourceSpec::Path(path) if path.is_dir() => {
            std::fs::read_dir(path).map(|d| d.count() as u64).ok()
        }
        _ => None,
    }
    .or(max_frames);
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {pos}/{len} frames, {per_sec}, eta {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(source.name().to_string());
    bar
}
