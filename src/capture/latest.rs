//! A capture thread that always hands over the newest frame.
//!
//! The consumer (inference, the UI) takes whatever frame is newest when it is ready for one;
//! frames it was too slow for are dropped and counted, so latency never builds up. When the
//! source fails (camera unplugged, folder deleted) the thread reports it and keeps trying to
//! open the source again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{CaptureError, Frame, FrameSource, Pacer};

/// Opens (and re-opens, after a failure) the source the thread reads.
pub type SourceOpener = Box<dyn FnMut() -> Result<Box<dyn FrameSource>, CaptureError> + Send>;

/// What the capture thread is doing.
#[derive(Clone, Debug, PartialEq)]
pub enum CaptureStatus {
    Opening,
    Running {
        name: String,
        resolution: Option<(u32, u32)>,
    },
    /// The source failed; the thread tries to open it again every `RETRY_INTERVAL`.
    Reconnecting {
        error: String,
    },
    /// A file source reached its end.
    Ended,
    /// The source failed and the thread gave up (reconnect disabled).
    Failed {
        error: String,
    },
}

/// How long the thread waits before opening a failed source again.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Source warnings kept until someone takes them; older ones are dropped (a folder full of bad
/// files warns once per file per loop, for as long as it plays).
pub const MAX_WARNINGS: usize = 100;

#[derive(Default)]
struct Slot {
    latest: Option<Frame>,
    delivered: u64,
    dropped: u64,
    warnings: Vec<String>,
}

impl Slot {
    fn warn(&mut self, warnings: Vec<String>) {
        self.warnings.extend(warnings);
        let excess = self.warnings.len().saturating_sub(MAX_WARNINGS);
        self.warnings.drain(..excess);
    }
}

struct Shared {
    slot: Mutex<Slot>,
    status: Mutex<CaptureStatus>,
    frame_ready: Condvar,
    stop: AtomicBool,
}

/// Runs a source on its own thread and keeps only its newest frame.
pub struct LatestFrame {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LatestFrame {
    /// Starts the capture thread. `paced`: deliver file frames at their frame rate (the app)
    /// rather than as fast as they decode; live sources are never paced. `reconnect`: after a
    /// failure, keep trying to open the source again instead of giving up.
    pub fn spawn(opener: SourceOpener, paced: bool, reconnect: bool) -> Self {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::default()),
            status: Mutex::new(CaptureStatus::Opening),
            frame_ready: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || capture_loop(&thread_shared, opener, paced, reconnect))
            .expect("spawning the capture thread");
        LatestFrame {
            shared,
            thread: Some(thread),
        }
    }

    /// The newest frame not yet taken, without waiting.
    pub fn take(&self) -> Option<Frame> {
        lock(&self.shared.slot).latest.take()
    }

    /// Waits up to `timeout` for a frame not yet taken.
    pub fn wait(&self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        let mut slot = lock(&self.shared.slot);
        loop {
            if let Some(frame) = slot.latest.take() {
                return Some(frame);
            }
            let now = Instant::now();
            if now >= deadline || self.is_finished() {
                return None;
            }
            slot = self
                .shared
                .frame_ready
                .wait_timeout(slot, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    pub fn status(&self) -> CaptureStatus {
        lock(&self.shared.status).clone()
    }

    /// True once the thread has stopped (end of a file source, or failure without reconnect).
    pub fn is_finished(&self) -> bool {
        matches!(
            self.status(),
            CaptureStatus::Ended | CaptureStatus::Failed { .. }
        )
    }

    /// Frames captured so far, and how many of them were replaced before anyone took them.
    pub fn counts(&self) -> (u64, u64) {
        let slot = lock(&self.shared.slot);
        (slot.delivered, slot.dropped)
    }

    /// Warnings from the source (skipped files and the like) since the last call.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut lock(&self.shared.slot).warnings)
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.frame_ready.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LatestFrame {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take capture down with it: the data is plain and still valid.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_status(shared: &Shared, status: CaptureStatus) {
    let mut current = lock(&shared.status);
    if *current == status {
        return;
    }
    // Logged once per change, not once per retry.
    if let CaptureStatus::Reconnecting { error } | CaptureStatus::Failed { error } = &status {
        log::warn!("capture: {error}");
    }
    *current = status;
    drop(current);
    shared.frame_ready.notify_all();
}

/// Sleeps up to `duration`, returning early when asked to stop.
fn sleep_unless_stopped(shared: &Shared, duration: Duration) {
    let deadline = Instant::now() + duration;
    while !shared.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

fn capture_loop(shared: &Shared, mut opener: SourceOpener, paced: bool, reconnect: bool) {
    while !shared.stop.load(Ordering::SeqCst) {
        let mut source = match opener() {
            Ok(source) => source,
            Err(e) => {
                if !reconnect {
                    set_status(
                        shared,
                        CaptureStatus::Failed {
                            error: e.to_string(),
                        },
                    );
                    return;
                }
                set_status(
                    shared,
                    CaptureStatus::Reconnecting {
                        error: e.to_string(),
                    },
                );
                sleep_unless_stopped(shared, RETRY_INTERVAL);
                continue;
            }
        };
        set_status(
            shared,
            CaptureStatus::Running {
                name: source.name().to_string(),
                resolution: source.resolution(),
            },
        );
        let paced = paced && !source.is_live();
        let mut pacer = Pacer::new(if paced { source.fps() } else { None });
        let mut announced_resolution = source.resolution();
        while !shared.stop.load(Ordering::SeqCst) {
            match source.next_frame() {
                Ok(Some(mut frame)) => {
                    if paced {
                        pacer.wait();
                        frame.captured_at = Instant::now();
                    }
                    let size = Some(frame.image.dimensions());
                    if announced_resolution != size {
                        announced_resolution = size;
                        set_status(
                            shared,
                            CaptureStatus::Running {
                                name: source.name().to_string(),
                                resolution: size,
                            },
                        );
                    }
                    let warnings = source.take_warnings();
                    let mut slot = lock(&shared.slot);
                    if slot.latest.replace(frame).is_some() {
                        slot.dropped += 1;
                    }
                    slot.delivered += 1;
                    slot.warn(warnings);
                    drop(slot);
                    shared.frame_ready.notify_all();
                }
                Ok(None) => {
                    lock(&shared.slot).warn(source.take_warnings());
                    set_status(shared, CaptureStatus::Ended);
                    return;
                }
                Err(e) => {
                    lock(&shared.slot).warn(source.take_warnings());
                    if !reconnect {
                        set_status(
                            shared,
                            CaptureStatus::Failed {
                                error: e.to_string(),
                            },
                        );
                        return;
                    }
                    set_status(
                        shared,
                        CaptureStatus::Reconnecting {
                            error: e.to_string(),
                        },
                    );
                    break;
                }
            }
        }
        drop(source);
        sleep_unless_stopped(shared, RETRY_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live source that warns with every frame.
    struct Grumbling {
        seq: u64,
        pending: Vec<String>,
    }

    impl FrameSource for Grumbling {
        fn name(&self) -> &str {
            "grumbling"
        }
        fn resolution(&self) -> Option<(u32, u32)> {
            Some((4, 4))
        }
        fn is_live(&self) -> bool {
            true
        }
        fn fps(&self) -> Option<f64> {
            None
        }
        fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
            self.pending.push(format!("warning {}", self.seq));
            self.seq += 1;
            std::thread::sleep(Duration::from_micros(200));
            Ok(Some(Frame {
                seq: self.seq - 1,
                captured_at: Instant::now(),
                timestamp: Duration::ZERO,
                decode_time: Duration::ZERO,
                image: image::RgbImage::new(4, 4),
            }))
        }
        fn take_warnings(&mut self) -> Vec<String> {
            std::mem::take(&mut self.pending)
        }
    }

    #[test]
    fn warnings_nobody_takes_are_kept_to_the_newest_few() {
        let capture = LatestFrame::spawn(
            Box::new(|| {
                Ok(Box::new(Grumbling {
                    seq: 0,
                    pending: Vec::new(),
                }) as Box<dyn FrameSource>)
            }),
            false,
            false,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while capture.counts().0 < 3 * MAX_WARNINGS as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (delivered, dropped) = capture.counts();
        assert!(delivered >= 3 * MAX_WARNINGS as u64, "{delivered} frames");
        assert!(
            dropped + 1 >= delivered,
            "nobody took frames: all but the newest dropped"
        );
        let warnings = capture.take_warnings();
        assert_eq!(warnings.len(), MAX_WARNINGS);
        let newest: u64 = warnings.last().unwrap()["warning ".len()..]
            .parse()
            .unwrap();
        assert!(
            newest + 5 >= delivered - 1,
            "the newest are kept: {newest} of {delivered}"
        );
    }
}
