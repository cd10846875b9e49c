//! The one path a frame takes from pixels to people: face pipeline → tracking (with fitting and
//! smoothing) → re-identification → the frame's record → the take being recorded and the VMC
//! stream. `polyface track`, the app's inference thread and take playback all run frames through
//! a [`FrameProcessor`], so they cannot drift apart.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::capture::Frame;
use crate::record::{FrameRecord, Take};
use crate::stream::VmcStreamer;
use crate::timing::{FrameTimings, Stage};
use crate::track::{People, Person};
use crate::vision::{FaceObservation, FacePipeline};

/// One frame after processing.
pub struct Processed {
    pub frame: Frame,
    pub people: Vec<Person>,
    /// What `faces.jsonl` and a take's `session.jsonl` store for this frame.
    pub record: FrameRecord,
    pub timings: FrameTimings,
    /// The pipeline that ran ("sfn", "mfn", "playback"), if any.
    pub pipeline: Option<&'static str>,
    /// Why the pipeline found no faces in this frame, when it failed (the frame is still
    /// tracked: everyone counts as unseen).
    pub pipeline_error: Option<String>,
}

/// Pipeline, people, and the optional take and stream, owned together.
pub struct FrameProcessor {
    pipeline: Option<Box<dyn FacePipeline>>,
    pub people: People,
    take: Option<Take>,
    stream: Option<VmcStreamer>,
    /// What recording and streaming said last (a failure stops them; processing goes on).
    notices: Vec<String>,
}

impl FrameProcessor {
    /// `pipeline` `None` only reads frames (no faces).
    pub fn new(pipeline: Option<Box<dyn FacePipeline>>, people: People) -> FrameProcessor {
        FrameProcessor {
            pipeline,
            people,
            take: None,
            stream: None,
            notices: Vec::new(),
        }
    }

    pub fn pipeline_name(&self) -> Option<&'static str> {
        self.pipeline.as_ref().map(|p| p.name())
    }

    /// Uses `pipeline` from the next frame on; tracking goes on across the switch.
    pub fn switch_pipeline(&mut self, pipeline: Box<dyn FacePipeline>) {
        self.pipeline = Some(pipeline);
    }

    /// Starts recording a take into `dir` (replacing none: stop the running one first).
    pub fn start_recording(&mut self, dir: &Path) -> Result<()> {
        anyhow::ensure!(self.take.is_none(), "already recording");
        self.take = Some(Take::create(dir)?);
        Ok(())
    }

    /// Ends the take: its folder and the animation files written.
    pub fn stop_recording(&mut self) -> Option<(PathBuf, Result<Vec<PathBuf>>)> {
        let take = self.take.take()?;
        let dir = take.dir().to_path_buf();
        Some((dir, take.finish()))
    }

    /// The folder being recorded into.
    pub fn recording(&self) -> Option<&Path> {
        self.take.as_ref().map(|t| t.dir())
    }

    pub fn start_streaming(&mut self, streamer: VmcStreamer) {
        self.stream = Some(streamer);
    }

    /// New receivers by name for the stream on now (nothing when not streaming: the next
    /// stream reads them from the settings).
    pub fn set_vmc_routes(
        &mut self,
        routes: std::collections::BTreeMap<String, std::net::SocketAddr>,
    ) {
        if let Some(stream) = self.stream.as_mut() {
            stream.set_routes(routes);
        }
    }

    pub fn stop_streaming(&mut self) -> bool {
        self.stream.take().is_some()
    }

    pub fn streaming(&self) -> bool {
        self.stream.is_some()
    }

    /// Messages from recording and streaming since the last call.
    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    /// Runs one frame through every stage.
    pub fn process(&mut self, frame: Frame) -> Processed {
        let mut timings = FrameTimings::new(frame.seq);
        timings.add(Stage::Capture, frame.decode_time);
        let mut pipeline_error = None;
        let faces: Vec<FaceObservation> = match self.pipeline.as_mut() {
            Some(p) => p.process(&frame.image, &mut timings).unwrap_or_else(|e| {
                pipeline_error = Some(format!("{e:#}"));
                Vec::new()
            }),
            None => Vec::new(),
        };
        let time_s = frame.timestamp.as_secs_f64();
        let mut people = self
            .people
            .update(frame.image.dimensions(), faces, time_s, &mut timings);
        self.people
            .reidentify(&frame.image, &mut people, time_s, &mut timings);
        let record = FrameRecord::new(&frame, &people);
        self.record_and_stream(&record, &people, time_s);
        Processed {
            pipeline: self.pipeline_name(),
            frame,
            people,
            record,
            timings,
            pipeline_error,
        }
    }

    /// A failed write stops the take (what it holds stays valid: `polyface recover`); a stream
    /// that cannot send says so once per failure and keeps trying.
    fn record_and_stream(&mut self, record: &FrameRecord, people: &[Person], time_s: f64) {
        if let Some(take) = self.take.as_mut() {
            if let Err(e) = take.write(record) {
                let dir = take.dir().display().to_string();
                self.notices.push(format!(
                    "recording stopped: {e:#}; what was written in {dir} stays valid \
                     (`polyface recover {dir}` rebuilds the animation files)"
                ));
                self.take = None;
            }
        }
        if let Some(stream) = self.stream.as_mut() {
            if let Err(e) = stream.send(people, time_s) {
                self.notices.push(format!("VMC: {e:#}"));
            }
        }
    }
}
