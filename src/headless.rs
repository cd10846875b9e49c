//! `polyface track`: the headless twin of `run`. Reads every frame (none dropped), runs the
//! pipeline, and writes per-frame faces (`faces.jsonl`) and stage timings (`timings.csv`).

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::capture::{self, CaptureError, SourceOptions, SourceSpec};
use crate::record::FrameRecord;
use crate::timing::{FrameTimings, Stage, TimingRing};
use crate::track::People;
use crate::vision::FacePipeline;

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
#[derive(Default)]
pub struct TrackJob<'a> {
    /// Stop after this many frames.
    pub max_frames: Option<u64>,
    /// The face pipeline; without one only frames are read (timings of capture alone).
    pub pipeline: Option<&'a mut (dyn FacePipeline + 'static)>,
    /// Tracking, smoothing and fitting settings.
    pub people: People,
    /// Also record a take (Live Link Face CSV per person, session.jsonl) into this folder.
    pub record: Option<&'a Path>,
    /// Also stream every person over VMC.
    pub stream: Option<&'a mut crate::stream::VmcStreamer>,
}

/// Runs the pipeline over every frame of `spec` and writes `timings.csv` and `faces.jsonl` into
/// `out`.
pub fn track(
    spec: &SourceSpec,
    options: &SourceOptions,
    out: &Path,
    job: TrackJob<'_>,
) -> Result<TrackSummary> {
    let TrackJob {
        max_frames,
        mut pipeline,
        mut people,
        record,
        mut stream,
    } = job;
    let mut recorder = record.map(crate::record::Take::create).transpose()?;
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
        let mut timings = FrameTimings::new(frame.seq);
        timings.add(Stage::Capture, frame.decode_time);
        let faces = match pipeline.as_deref_mut() {
            Some(p) => p.process(&frame.image, &mut timings)?,
            None => Vec::new(),
        };
        face_count += faces.len() as u64;
        let time_s = frame.timestamp.as_secs_f64();
        let mut persons = people.update(frame.image.dimensions(), faces, time_s, &mut timings);
        people.reidentify(&frame.image, &mut persons, time_s, &mut timings);
        let record = FrameRecord::new(&frame, &persons);
        serde_json::to_writer(&mut faces_file, &record)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(faces_file))
            .with_context(|| write_error(&faces_jsonl))?;
        if let Some(take) = recorder.as_mut().filter(|t| t.failed().is_none()) {
            if let Err(e) = take.write(&record) {
                // Tracking goes on; what the take holds so far stays valid.
                let warning = format!("recording stopped: {e:#}");
                progress.suspend(|| log::warn!("{warning}"));
                warnings.push(warning);
            }
        }
        if let Some(streamer) = stream.as_deref_mut() {
            if let Err(e) = streamer.send(&persons, time_s) {
                // A receiver that is not listening must not stop the run.
                progress.suspend(|| log::warn!("{e:#}"));
            }
        }
        writeln!(timings_file, "{}", timings.csv_row())
            .with_context(|| write_error(&timings_csv))?;
        ring.push(timings);
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
    if let Some(take) = recorder {
        match take.finish() {
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
