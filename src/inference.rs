//! The inference thread: takes the newest captured frame, runs it through the
//! [`FrameProcessor`] (pipeline, tracking, re-identification, the take and the VMC stream), and
//! keeps only the newest result for the UI. The UI never waits on inference; frames inference is
//! too slow for are dropped (and counted) at the capture hand-over, never queued. Recording and
//! streaming run here, so every processed frame is recorded whatever the display rate.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::capture::LatestFrame;
use crate::known::Choices;
use crate::processor::FrameProcessor;
pub use crate::processor::Processed;
use crate::stream::VmcStreamer;
use crate::timing::Stage;
use crate::track::Smoothing;
use crate::vision::FacePipeline;

/// How many recent frames the per-pipeline medians cover.
const RECENT: usize = 120;
/// Notices kept for the UI between reads (older ones are dropped).
const MAX_NOTICES: usize = 20;

/// What the UI asks the processor to do, applied before the next frame.
enum Command {
    SwitchPipeline(Box<dyn FacePipeline>),
    StartRecording(PathBuf),
    StopRecording,
    StartStreaming(Box<VmcStreamer>),
    StopStreaming,
    /// The stream's receivers by name changed.
    VmcRoutes(std::collections::BTreeMap<String, std::net::SocketAddr>),
    /// Name person `id` (store their embeddings with these settings).
    Name {
        id: u32,
        name: String,
        choices: Choices,
    },
    /// Person `id`'s own smoothing (`None`: the app's).
    Smoothing {
        id: u32,
        smoothing: Option<Smoothing>,
    },
    /// A name was forgotten (`None`: every name); the store was changed by the UI.
    Forgotten(Option<String>),
}

#[derive(Default)]
struct Shared {
    latest: Mutex<Option<Processed>>,
    error: Mutex<Option<String>>,
    commands: Mutex<Vec<Command>>,
    pipeline_name: Mutex<Option<&'static str>>,
    /// The folder being recorded into and whether the stream is on, as of the last frame.
    recording: Mutex<Option<PathBuf>>,
    streaming: AtomicBool,
    /// Frames processed so far.
    processed: AtomicU64,
    /// Messages from recording and streaming for the UI.
    notices: Mutex<Vec<String>>,
    /// Per pipeline: its recent face-stage times (preprocess + network + postprocess), ms.
    recent: Mutex<Vec<(&'static str, std::collections::VecDeque<f32>)>>,
    stop: AtomicBool,
}

impl Shared {
    fn notice(&self, text: String) {
        let mut notices = lock(&self.notices);
        notices.push(text);
        let excess = notices.len().saturating_sub(MAX_NOTICES);
        notices.drain(..excess);
    }

    fn apply(&self, processor: &mut FrameProcessor) {
        let commands = std::mem::take(&mut *lock(&self.commands));
        for command in commands {
            match command {
                Command::SwitchPipeline(pipeline) => processor.switch_pipeline(pipeline),
                Command::StartRecording(dir) => {
                    if let Err(e) = processor.start_recording(&dir) {
                        self.notice(format!("cannot record: {e:#}"));
                    }
                }
                Command::StopRecording => self.finish_take(processor),
                Command::StartStreaming(streamer) => processor.start_streaming(*streamer),
                Command::StopStreaming => {
                    if processor.stop_streaming() {
                        self.notice("VMC stream stopped".into());
                    }
                }
                Command::Name { id, name, choices } => {
                    self.notice(match processor.people.name_person(id, &name, choices) {
                        Ok(()) => format!("person #{id} is {name}: remembered"),
                        Err(e) => format!("cannot name person #{id}: {e:#}"),
                    })
                }
                Command::VmcRoutes(routes) => processor.set_vmc_routes(routes),
                Command::Smoothing { id, smoothing } => {
                    processor.people.tracker.set_smoothing(id, smoothing)
                }
                Command::Forgotten(name) => {
                    if let Some(known) = processor.people.known.as_mut() {
                        known.forgotten(name.as_deref());
                    }
                }
            }
        }
        *lock(&self.pipeline_name) = processor.pipeline_name();
        *lock(&self.recording) = processor.recording().map(|p| p.to_path_buf());
        self.streaming
            .store(processor.streaming(), Ordering::SeqCst);
    }

    fn finish_take(&self, processor: &mut FrameProcessor) {
        if let Some((dir, finished)) = processor.stop_recording() {
            let dir = dir.display();
            self.notice(match finished {
                Ok(files) => format!(
                    "saved {} animation file(s) and the CSVs in {dir}",
                    files.len()
                ),
                Err(e) => {
                    format!("{e:#} (the CSVs and session.jsonl are kept; `polyface recover {dir}`)")
                }
            });
        }
    }

    fn note_face_time(&self, processed: &Processed) {
        let Some(name) = processed.pipeline else {
            return;
        };
        let face_ms = [Stage::Preprocess, Stage::Network, Stage::Postprocess]
            .iter()
            .filter_map(|s| processed.timings.get(*s))
            .sum::<f32>();
        let mut recent = lock(&self.recent);
        let index = match recent.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                recent.push((name, Default::default()));
                recent.len() - 1
            }
        };
        let ring = &mut recent[index].1;
        ring.push_back(face_ms);
        while ring.len() > RECENT {
            ring.pop_front();
        }
    }
}

pub struct InferenceWorker {
    capture: Arc<LatestFrame>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl InferenceWorker {
    /// Starts the thread with everything a frame goes through.
    pub fn spawn(capture: LatestFrame, mut processor: FrameProcessor) -> InferenceWorker {
        let capture = Arc::new(capture);
        let shared = Arc::new(Shared::default());
        *lock(&shared.pipeline_name) = processor.pipeline_name();
        let (thread_capture, thread_shared) = (Arc::clone(&capture), Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                while !thread_shared.stop.load(Ordering::SeqCst) {
                    thread_shared.apply(&mut processor);
                    let Some(frame) = thread_capture.wait(Duration::from_millis(50)) else {
                        continue;
                    };
                    let processed = processor.process(frame);
                    // Shown in the UI; the next frame is tried again.
                    *lock(&thread_shared.error) = processed.pipeline_error.clone();
                    for notice in processor.take_notices() {
                        thread_shared.notice(notice);
                    }
                    thread_shared.note_face_time(&processed);
                    thread_shared.processed.fetch_add(1, Ordering::Relaxed);
                    *lock(&thread_shared.latest) = Some(processed);
                }
                // Commands sent before the stop still count; a take in progress is finished.
                thread_shared.apply(&mut processor);
                thread_shared.finish_take(&mut processor);
            })
            .expect("spawning the inference thread");
        InferenceWorker {
            capture,
            shared,
            thread: Some(thread),
        }
    }

    /// The newest processed frame not yet taken.
    pub fn take(&self) -> Option<Processed> {
        lock(&self.shared.latest).take()
    }

    pub fn capture(&self) -> &LatestFrame {
        &self.capture
    }

    /// Frames processed so far (the UI shows the newest; the others were replaced unseen).
    pub fn processed(&self) -> u64 {
        self.shared.processed.load(Ordering::Relaxed)
    }

    /// The last pipeline error, if the most recent frame failed.
    pub fn error(&self) -> Option<String> {
        lock(&self.shared.error).clone()
    }

    /// The pipeline in use (after a switch: once the worker has picked it up).
    pub fn pipeline_name(&self) -> Option<&'static str> {
        *lock(&self.shared.pipeline_name)
    }

    /// Switches to `pipeline` from the next frame on, without stopping capture or tracking.
    pub fn switch_pipeline(&self, pipeline: Box<dyn FacePipeline>) {
        self.send(Command::SwitchPipeline(pipeline));
    }

    /// Starts recording a take into `dir` (its failure comes back as a notice).
    pub fn start_recording(&self, dir: PathBuf) {
        self.send(Command::StartRecording(dir));
    }

    /// Ends the take; what was saved comes back as a notice.
    pub fn stop_recording(&self) {
        self.send(Command::StopRecording);
    }

    pub fn start_streaming(&self, streamer: VmcStreamer) {
        self.send(Command::StartStreaming(Box::new(streamer)));
    }

    /// Names person `id` (their embeddings and these settings are stored).
    pub fn name_person(&self, id: u32, name: String, choices: Choices) {
        self.send(Command::Name { id, name, choices });
    }

    /// Smooths person `id` with `smoothing` from the next frame on (`None`: the app's).
    pub fn set_smoothing(&self, id: u32, smoothing: Option<Smoothing>) {
        self.send(Command::Smoothing { id, smoothing });
    }

    /// `name` (or everyone) was forgotten: nobody in view carries it any more.
    pub fn forgotten(&self, name: Option<String>) {
        self.send(Command::Forgotten(name));
    }

    /// The stream on now (if any) sends named people to these receivers from the next frame.
    pub fn set_vmc_routes(&self, routes: std::collections::BTreeMap<String, std::net::SocketAddr>) {
        self.send(Command::VmcRoutes(routes));
    }

    pub fn stop_streaming(&self) {
        self.send(Command::StopStreaming);
    }

    /// The folder being recorded into (as of the last frame processed).
    pub fn recording(&self) -> Option<PathBuf> {
        lock(&self.shared.recording).clone()
    }

    pub fn streaming(&self) -> bool {
        self.shared.streaming.load(Ordering::SeqCst)
    }

    /// Messages from recording and streaming since the last call.
    pub fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.shared.notices))
    }

    fn send(&self, command: Command) {
        lock(&self.shared.commands).push(command);
    }

    /// Median face-stage time (preprocess + network + postprocess, ms) of every pipeline that
    /// ran recently, in the order they were first used: the live SFN/MFN comparison.
    pub fn pipeline_medians(&self) -> Vec<(&'static str, f32)> {
        lock(&self.shared.recent)
            .iter()
            .map(|(name, ring)| {
                let mut v: Vec<f32> = ring.iter().copied().collect();
                v.sort_by(|a, b| a.total_cmp(b));
                (*name, crate::timing::percentile(&v, 0.5))
            })
            .collect()
    }
}

impl Drop for InferenceWorker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_nobody_reads_are_kept_to_the_newest_few() {
        let shared = Shared::default();
        for i in 0..1000 {
            shared.notice(format!("VMC: sending failed ({i})"));
        }
        let notices = lock(&shared.notices);
        assert_eq!(notices.len(), MAX_NOTICES);
        assert_eq!(
            notices.last().map(String::as_str),
            Some("VMC: sending failed (999)")
        );
    }
}
