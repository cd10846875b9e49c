//! Capture: every way frames enter polyface, behind one trait.
//!
//! A [`FrameSource`] yields [`Frame`]s: RGB pixels with a sequence number and a capture
//! timestamp. Webcams, video files, image folders and single images all implement it, so the
//! rest of the pipeline cannot tell them apart. [`LatestFrame`] runs any source on its own thread
//! and always hands over the newest frame, dropping stale ones so latency never builds up.

mod image_folder;
mod latest;
mod video;
#[cfg(feature = "webcam")]
mod webcam;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use image_folder::{ImageFolderSource, SingleImageSource, IMAGE_EXTENSIONS};
pub use latest::{CaptureStatus, LatestFrame, SourceOpener, RETRY_INTERVAL};
pub use video::{VideoSource, VIDEO_EXTENSIONS};
#[cfg(feature = "webcam")]
pub use webcam::WebcamSource;

/// One captured frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Counts frames delivered by the source, from 0, without gaps.
    pub seq: u64,
    /// When the frame was captured (or decoded, for files), on this machine's monotonic clock.
    pub captured_at: Instant,
    /// Position in the stream: time since the first frame (camera) or presentation time (files).
    pub timestamp: Duration,
    /// Time the source spent reading and decoding this frame's pixels (the capture stage).
    pub decode_time: Duration,
    pub image: image::RgbImage,
}

impl Frame {
    pub fn width(&self) -> u32 {
        self.image.width()
    }
    pub fn height(&self) -> u32 {
        self.image.height()
    }
}

/// Everything that can go wrong while opening or reading a source. Each message names the
/// thing and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{0}: no such file or folder; check the path given to --input")]
    NotFound(PathBuf),
    #[error("{0}: the folder holds no readable images (.jpg, .png, .bmp, .webp, .tif, .gif); add images or pick another folder")]
    EmptyFolder(PathBuf),
    #[error("{path}: not a supported input ({reason}); use a video (.mp4 .mkv .avi .webm .mov), an image or an image folder")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: cannot decode ({reason}); the file may be corrupt or truncated")]
    Corrupt { path: PathBuf, reason: String },
    #[error("ffmpeg is needed to read video files but was not found ({0}); install it (Debian/Ubuntu: apt install ffmpeg)")]
    FfmpegMissing(String),
    #[error(
        "no camera found; plug one in, or run with --input PATH (video, image or image folder)"
    )]
    NoCamera,
    #[error("camera {0:?} not found; `polyface cameras` lists the available ones")]
    CameraNotFound(String),
    #[error("camera {0} is busy (another program is using it); close that program or pick another camera")]
    CameraBusy(String),
    #[error("camera {name} failed: {reason}")]
    Camera { name: String, reason: String },
    #[error("{0} was disconnected or removed")]
    Disconnected(String),
    #[error(
        "this build has no webcam support (built without the `webcam` feature); use --input PATH"
    )]
    NoWebcamSupport,
}

/// A stream of frames: webcam, video file, image folder or single image.
pub trait FrameSource {
    /// Human-readable name (camera name or file path).
    fn name(&self) -> &str;
    /// Frame size if known before the first frame.
    fn resolution(&self) -> Option<(u32, u32)>;
    /// True for live sources (cameras): frames arrive in real time and cannot be replayed.
    fn is_live(&self) -> bool;
    /// Nominal frame rate, if the source has one.
    fn fps(&self) -> Option<f64>;
    /// Blocks until the next frame. `Ok(None)` means the stream ended normally.
    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError>;
    /// Warnings collected while reading (skipped files and the like), drained by the caller.
    fn take_warnings(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// What to read frames from.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    /// A camera by index or (part of its) name; `None` = the default camera.
    Camera(Option<String>),
    /// A video file, image file or image folder.
    Path(PathBuf),
}

/// How to read a source.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceOptions {
    /// Requested camera resolution (width, height).
    pub resolution: Option<(u32, u32)>,
    /// Requested camera rate; the rate of image folders / single images.
    pub fps: Option<f64>,
    /// Start file sources again at their end (the app's demo mode).
    pub looped: bool,
}

/// Default pace of image folders and single images when no `--fps` is given.
pub const DEFAULT_IMAGE_FPS: f64 = 30.0;

/// Opens the source `spec` describes.
pub fn open(
    spec: &SourceSpec,
    options: &SourceOptions,
) -> Result<Box<dyn FrameSource>, CaptureError> {
    match spec {
        SourceSpec::Path(path) => open_path(path, options),
        SourceSpec::Camera(selector) => open_camera(selector.as_deref(), options),
    }
}

fn open_path(path: &Path, options: &SourceOptions) -> Result<Box<dyn FrameSource>, CaptureError> {
    if !path.exists() {
        return Err(CaptureError::NotFound(path.to_path_buf()));
    }
    if path.is_dir() {
        return Ok(Box::new(ImageFolderSource::open(path, options)?));
    }
    let ext = extension_of(path);
    if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
        Ok(Box::new(SingleImageSource::open(path, options)?))
    } else if VIDEO_EXTENSIONS.contains(&ext.as_str()) {
        Ok(Box::new(VideoSource::open(path, options)?))
    } else {
        Err(CaptureError::Unsupported {
            path: path.to_path_buf(),
            reason: if ext.is_empty() {
                "no file extension".into()
            } else {
                format!("unknown extension .{ext}")
            },
        })
    }
}

#[cfg(feature = "webcam")]
fn open_camera(
    selector: Option<&str>,
    options: &SourceOptions,
) -> Result<Box<dyn FrameSource>, CaptureError> {
    Ok(Box::new(WebcamSource::open(selector, options)?))
}

#[cfg(not(feature = "webcam"))]
fn open_camera(
    _selector: Option<&str>,
    _options: &SourceOptions,
) -> Result<Box<dyn FrameSource>, CaptureError> {
    Err(CaptureError::NoWebcamSupport)
}

/// A camera the system offers.
#[derive(Clone, Debug, PartialEq)]
pub struct CameraInfo {
    pub index: u32,
    pub name: String,
    pub description: String,
}

/// A [`SourceOpener`] for `spec`, for [`LatestFrame::spawn`].
pub fn opener(spec: SourceSpec, options: SourceOptions) -> SourceOpener {
    Box::new(move || open(&spec, &options))
}

/// Lists the cameras the system offers (an empty list when there are none).
pub fn list_cameras() -> Result<Vec<CameraInfo>, CaptureError> {
    #[cfg(feature = "webcam")]
    {
        webcam::list()
    }
    #[cfg(not(feature = "webcam"))]
    {
        Err(CaptureError::NoWebcamSupport)
    }
}

pub(crate) fn extension_of(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Keeps a paced source on schedule: frame `n` is due at `start + n / fps`.
#[derive(Debug)]
pub(crate) struct Pacer {
    interval: Option<Duration>,
    start: Option<Instant>,
    emitted: u64,
}

impl Pacer {
    pub fn new(fps: Option<f64>) -> Self {
        let interval = fps
            .filter(|f| *f > 0.0)
            .map(|f| Duration::from_secs_f64(1.0 / f));
        Pacer {
            interval,
            start: None,
            emitted: 0,
        }
    }

    /// Sleeps until the next frame is due.
    pub fn wait(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        let start = *self.start.get_or_insert_with(Instant::now);
        let due = start + interval.mul_f64(self.emitted as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > interval * 4 {
            // Fell far behind (e.g. the machine was suspended): restart the schedule, don't burst.
            self.start = Some(now);
            self.emitted = 0;
        }
        self.emitted += 1;
    }
}
