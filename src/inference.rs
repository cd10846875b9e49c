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
}

#[derive(Default)]
struct Shared {
    latest: Mutex<Option<Processed>>,
    error: Mutex<Option<String>>,
    stop: AtomicBool,
}

pub struct InferenceWorker {
    capture: Arc<LatestFrame>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    pipeline_name: Option<&'static str>,
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
        let pipeline_name = pipeline.as_ref().map(|p| p.name());
        let (thread_capture, thread_shared) = (Arc::clone(&capture), Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                let mut people = People::default();
                people.tracker.config.smoothing = smoothing;
                while !thread_shared.stop.load(Ordering::SeqCst) {
                    let Some(frame) = thread_capture.wait(Duration::from_millis(50)) else {
                        continue;
                    };
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
                    let time_s = frame.timestamp.as_secs_f64();
                    let people =
                        people.update(frame.image.dimensions(), faces, time_s, &mut timings);
                    *lock(&thread_shared.latest) = Some(Processed {
                        frame,
                        people,
                        timings,
                    });
                }
            })
            .expect("spawning the inference thread");
        InferenceWorker {
            capture,
            shared,
            thread: Some(thread),
            pipeline_name,
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

    pub fn pipeline_name(&self) -> Option<&'static str> {
        self.pipeline_name
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
