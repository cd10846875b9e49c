//! The inference thread: takes the newest captured frame, runs the face pipeline on it, and
//! keeps only the newest result for the UI. The UI never waits on inference; frames inference is
//! too slow for are dropped (and counted) at the capture hand-over, never queued.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::capture::{Frame, LatestFrame};
use crate::timing::{FrameTimings, Stage};
use crate::track::{People, Person};
use crate::vision::{FaceObservation, FacePipeline};

/// A frame with the people found in it.
pub struct Processed {
    pub frame: Frame,
    pub people: Vec<Person>,
    pub timings: FrameTimings,
    /// The pipeline that produced `people` ("sfn", "mfn"), if any.
    pub pipeline: Option<&'static str>,
}

/// How many recent frames the per-pipeline medians cover.
const RECENT: usize = 120;

#[derive(Default)]
struct Shared {
    latest: Mutex<Option<Processed>>,
    error: Mutex<Option<String>>,
    /// A pipeline to switch to before the next frame (the UI never waits for the swap).
    next_pipeline: Mutex<Option<Box<dyn FacePipeline>>>,
    pipeline_name: Mutex<Option<&'static str>>,
    /// Per pipeline: its recent face-stage times (preprocess + network + postprocess), ms.
    recent: Mutex<Vec<(&'static str, std::collections::VecDeque<f32>)>>,
    stop: AtomicBool,
}

pub struct InferenceWorker {
    capture: Arc<LatestFrame>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl InferenceWorker {
    /// Starts the thread. Without a pipeline, frames pass straight through (no faces).
    pub fn spawn(
        capture: LatestFrame,
        mut pipeline: Option<Box<dyn FacePipeline>>,
        smoothing: crate::track::Smoothing,
    ) -> InferenceWorker {
        let capture = Arc::new(capture);
        let shared = Arc::new(Shared::default());
        *lock(&shared.pipeline_name) = pipeline.as_ref().map(|p| p.name());
        let (thread_capture, thread_shared) = (Arc::clone(&capture), Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                let mut state = People::default()
                    .with_reid_from(&crate::vision::models_dir(None), &candle_core::Device::Cpu);
                state.tracker.config.smoothing = smoothing;
                while !thread_shared.stop.load(Ordering::SeqCst) {
                    let Some(frame) = thread_capture.wait(Duration::from_millis(50)) else {
                        continue;
                    };
                    if let Some(next) = lock(&thread_shared.next_pipeline).take() {
                        *lock(&thread_shared.pipeline_name) = Some(next.name());
                        pipeline = Some(next);
                    }
                    let mut timings = FrameTimings::new(frame.seq);
                    timings.add(Stage::Capture, frame.decode_time);
                    let faces: Vec<FaceObservation> = match pipeline.as_mut() {
                        Some(p) => match p.process(&frame.image, &mut timings) {
                            Ok(faces) => {
                                *lock(&thread_shared.error) = None;
                                faces
                            }
                            Err(e) => {
                                // Shown in the UI; the next frame is tried again.
                                *lock(&thread_shared.error) = Some(format!("{e:#}"));
                                Vec::new()
                            }
                        },
                        None => Vec::new(),
                    };
                    let name = pipeline.as_ref().map(|p| p.name());
                    if let Some(name) = name {
                        let face_ms = [Stage::Preprocess, Stage::Network, Stage::Postprocess]
                            .iter()
                            .filter_map(|s| timings.get(*s))
                            .sum::<f32>();
                        let mut recent = lock(&thread_shared.recent);
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
                    let time_s = frame.timestamp.as_secs_f64();
                    let mut people =
                        state.update(frame.image.dimensions(), faces, time_s, &mut timings);
                    state.reidentify(&frame.image, &mut people, time_s, &mut timings);
                    *lock(&thread_shared.latest) = Some(Processed {
                        frame,
                        people,
                        timings,
                        pipeline: name,
                    });
                }
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
        *lock(&self.shared.next_pipeline) = Some(pipeline);
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
