//! Playback of a recorded take (`polyface run --play DIR`): a frame source that replays the
//! take's timing as blank frames of the recorded size, and a face "pipeline" that hands back the
//! recorded faces of the frame being shown. Everything downstream (tracking, avatars, recording,
//! streaming) runs unchanged. A shared clock gives the UI a timeline: position, pause, seek.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{FrameRecord, PersonRecord};
use crate::capture::{CaptureError, Frame, FrameSource};
use crate::timing::FrameTimings;
use crate::track::TrackState;
use crate::vision::{FaceObservation, FacePipeline};
use anyhow::{Context, Result};

/// One recorded frame.
#[derive(Clone, Debug)]
pub struct RecordedFrame {
    pub time_s: f64,
    pub size: (u32, u32),
    pub faces: Vec<FaceObservation>,
}

/// A take loaded from its `session.jsonl`.
#[derive(Clone, Debug)]
pub struct Recording {
    pub name: String,
    pub frames: Vec<RecordedFrame>,
}

impl Recording {
    pub fn load(dir: &Path) -> Result<Recording> {
        let path = dir.join("session.jsonl");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: cannot read the take (is it a recording folder?)",
                path.display()
            )
        })?;
        let frames: Vec<RecordedFrame> =
            FrameRecord::parse_all(&text, &path.display().to_string())?
                .into_iter()
                .map(|frame| RecordedFrame {
                    time_s: frame.time_s,
                    size: (frame.width.clamp(1, 8192), frame.height.clamp(1, 8192)),
                    faces: frame
                        .people
                        .iter()
                        .filter(|p| p.state == TrackState::Confirmed)
                        .map(PersonRecord::smoothed_observation)
                        .collect(),
                })
                .collect();
        anyhow::ensure!(
            !frames.is_empty(),
            "{}: no frames in the take",
            path.display()
        );
        Ok(Recording {
            name: dir.display().to_string(),
            frames,
        })
    }

    pub fn duration_s(&self) -> f64 {
        let first = self.frames.first().map_or(0.0, |f| f.time_s);
        self.frames.last().map_or(0.0, |f| f.time_s - first)
    }
}

/// Where playback is; shared by the source, the pipeline and the UI.
#[derive(Default)]
pub struct PlaybackClock {
    /// Index of the frame last handed out.
    pub position: AtomicUsize,
    pub paused: AtomicBool,
    seek: Mutex<Option<usize>>,
    pub frame_count: usize,
}

impl PlaybackClock {
    /// Continue from frame `index` (clamped).
    pub fn seek(&self, index: usize) {
        *self.seek.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(index.min(self.frame_count.saturating_sub(1)));
    }

    /// The frame a seek asked for since the last call, if any.
    fn take_seek(&self) -> Option<usize> {
        self.seek.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Replays the take's timing as blank frames, looping.
pub struct PlaybackSource {
    recording: Arc<Recording>,
    clock: Arc<PlaybackClock>,
    next: usize,
    seq: u64,
    /// Wall time when frame `anchor` was due.
    started: Instant,
    anchor: usize,
}

impl PlaybackSource {
    pub fn new(recording: Arc<Recording>, clock: Arc<PlaybackClock>) -> PlaybackSource {
        PlaybackSource {
            recording,
            clock,
            next: 0,
            seq: 0,
            started: Instant::now(),
            anchor: 0,
        }
    }
}

impl FrameSource for PlaybackSource {
    fn name(&self) -> &str {
        &self.recording.name
    }
    fn resolution(&self) -> Option<(u32, u32)> {
        self.recording.frames.first().map(|f| f.size)
    }
    fn is_live(&self) -> bool {
        false
    }
    fn fps(&self) -> Option<f64> {
        let d = self.recording.duration_s();
        (d > 0.0).then(|| (self.recording.frames.len() - 1) as f64 / d)
    }
    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        let frames = &self.recording.frames;
        if let Some(to) = self.clock.take_seek() {
            self.next = to;
            self.anchor = to;
            self.started = Instant::now();
        }
        while self.clock.paused.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            self.anchor = self.next;
            self.started = Instant::now();
            if let Some(to) = self.clock.take_seek() {
                self.next = to;
                self.anchor = to;
                // show the frame sought to even while paused
                break;
            }
        }
        if self.next >= frames.len() {
            self.next = 0;
            self.anchor = 0;
            self.started = Instant::now();
        }
        let frame = &frames[self.next];
        // pace by the recorded times
        let due = frame.time_s - frames[self.anchor].time_s;
        let wait = due - self.started.elapsed().as_secs_f64();
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait.min(1.0)));
        }
        self.clock.position.store(self.next, Ordering::SeqCst);
        let image =
            image::RgbImage::from_pixel(frame.size.0, frame.size.1, image::Rgb([24, 26, 30]));
        let out = Frame {
            seq: self.seq,
            captured_at: Instant::now(),
            timestamp: Duration::from_secs_f64((frame.time_s - frames[0].time_s).max(0.0)),
            decode_time: Duration::ZERO,
            image,
        };
        self.seq += 1;
        self.next += 1;
        Ok(Some(out))
    }
}

/// Hands back the recorded faces of the frame playback is at.
pub struct PlaybackPipeline {
    recording: Arc<Recording>,
    clock: Arc<PlaybackClock>,
}

impl PlaybackPipeline {
    pub fn new(recording: Arc<Recording>, clock: Arc<PlaybackClock>) -> PlaybackPipeline {
        PlaybackPipeline { recording, clock }
    }
}

impl FacePipeline for PlaybackPipeline {
    fn name(&self) -> &'static str {
        "playback"
    }
    fn process(
        &mut self,
        _frame: &image::RgbImage,
        _timings: &mut FrameTimings,
    ) -> Result<Vec<FaceObservation>> {
        let i = self.clock.position.load(Ordering::SeqCst);
        Ok(self
            .recording
            .frames
            .get(i)
            .map(|f| f.faces.clone())
            .unwrap_or_default())
    }
    fn reset(&mut self) {}
}

/// Source, pipeline and clock for playing the take in `dir`.
pub fn open(dir: &Path) -> Result<(Arc<Recording>, Arc<PlaybackClock>)> {
    let recording = Arc::new(Recording::load(dir)?);
    let clock = Arc::new(PlaybackClock {
        frame_count: recording.frames.len(),
        ..Default::default()
    });
    Ok((recording, clock))
}
