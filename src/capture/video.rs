//! Video files, decoded by the `ffmpeg` command-line tool in a child process.
//!
//! Why a subprocess rather than a binding: FFmpeg's whole codec set with no build-time
//! bindgen/headers (the build stays fast and portable), and a corrupt file that crashes the
//! decoder takes down only the child, never the app. The cost is one copy of each raw RGB frame
//! through a pipe (~1 ms for 1080p), small next to decoding itself.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{CaptureError, Frame, FrameSource, SourceOptions};

/// File extensions read as videos (lower case).
pub const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "mkv", "avi", "webm", "mov", "m4v", "mpg", "mpeg", "ts", "y4m",
];

/// What ffprobe tells about a video's first video stream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VideoInfo {
    pub width: u32,
    pub height: u32,
    pub fps: f64,
}

/// Reads a video's size and frame rate with `ffprobe`.
pub fn probe(path: &Path) -> Result<VideoInfo, CaptureError> {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .arg("stream=width,height,avg_frame_rate,r_frame_rate:stream_side_data=rotation:stream_tags=rotate")
        .args(["-of", "json"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CaptureError::FfmpegMissing(format!("ffprobe: {e}")))?;
    let corrupt = |reason: String| CaptureError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if !output.status.success() {
        return Err(corrupt(first_line(
            &String::from_utf8_lossy(&output.stderr),
            "ffprobe failed",
        )));
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| corrupt(format!("unreadable ffprobe output: {e}")))?;
    let stream = json["streams"]
        .get(0)
        .ok_or_else(|| corrupt("no video stream".into()))?;
    let (Some(width), Some(height)) = (stream["width"].as_u64(), stream["height"].as_u64()) else {
        return Err(corrupt("video stream has no frame size".into()));
    };
    if width == 0 || height == 0 || width > 16384 || height > 16384 {
        return Err(corrupt(format!("implausible frame size {width}x{height}")));
    }
    let fps = [&stream["avg_frame_rate"], &stream["r_frame_rate"]]
        .into_iter()
        .filter_map(|v| v.as_str().and_then(parse_rate))
        .next()
        .unwrap_or(30.0);
    // ffmpeg applies rotation metadata when decoding, so a portrait phone video comes out upright.
    let rotation = stream["side_data_list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["rotation"].as_f64())
        .chain(
            stream["tags"]["rotate"]
                .as_str()
                .and_then(|r| r.parse().ok()),
        )
        .next()
        .unwrap_or(0.0);
    let quarter_turns = ((rotation / 90.0).round() as i64).rem_euclid(4);
    let (width, height) = if quarter_turns % 2 == 1 {
        (height, width)
    } else {
        (width, height)
    };
    Ok(VideoInfo {
        width: width as u32,
        height: height as u32,
        fps,
    })
}

fn parse_rate(text: &str) -> Option<f64> {
    let (num, den) = text.split_once('/').unwrap_or((text, "1"));
    let rate = num.parse::<f64>().ok()? / den.parse::<f64>().ok()?;
    (rate.is_finite() && rate > 0.0 && rate < 1000.0).then_some(rate)
}

fn first_line(text: &str, fallback: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(fallback)
        .to_string()
}

struct Decoder {
    child: Child,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<String>>,
}

impl Decoder {
    fn spawn(path: &Path) -> Result<Self, CaptureError> {
        let mut child = Command::new("ffmpeg")
            .args(["-nostdin", "-hide_banner", "-v", "error", "-i"])
            .arg(path)
            .args(["-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CaptureError::FfmpegMissing(format!("ffmpeg: {e}")))?;
        let stdout =
            BufReader::with_capacity(1 << 20, child.stdout.take().expect("stdout is piped"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut child_stderr = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        // Drain stderr on a thread so a chatty decoder can never block on a full pipe.
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = child_stderr.read_to_string(&mut text);
            if let Ok(mut s) = sink.lock() {
                *s = text;
            }
        });
        Ok(Decoder {
            child,
            stdout,
            stderr,
        })
    }

    fn error_text(&self) -> String {
        self.stderr
            .lock()
            .map(|s| first_line(&s, ""))
            .unwrap_or_default()
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A video file, frame by frame.
pub struct VideoSource {
    path: PathBuf,
    name: String,
    info: VideoInfo,
    decoder: Option<Decoder>,
    seq: u64,
    frames_this_pass: u64,
    looped: bool,
}

impl VideoSource {
    pub fn open(path: &Path, options: &SourceOptions) -> Result<Self, CaptureError> {
        if !path.is_file() {
            return Err(CaptureError::NotFound(path.to_path_buf()));
        }
        let info = probe(path)?;
        Ok(VideoSource {
            path: path.to_path_buf(),
            name: path.display().to_string(),
            info,
            decoder: Some(Decoder::spawn(path)?),
            seq: 0,
            frames_this_pass: 0,
            looped: options.looped,
        })
    }

    pub fn info(&self) -> VideoInfo {
        self.info
    }

    fn corrupt(&self, reason: String) -> CaptureError {
        CaptureError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }
}

impl FrameSource for VideoSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn resolution(&self) -> Option<(u32, u32)> {
        Some((self.info.width, self.info.height))
    }

    fn is_live(&self) -> bool {
        false
    }

    fn fps(&self) -> Option<f64> {
        Some(self.info.fps)
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        let frame_bytes = self.info.width as usize * self.info.height as usize * 3;
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(None);
            };
            let started = Instant::now();
            let mut buffer = vec![0u8; frame_bytes];
            let mut filled = 0;
            while filled < frame_bytes {
                match decoder.stdout.read(&mut buffer[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.corrupt(format!("reading decoded frames: {e}"))),
                }
            }
            if filled == frame_bytes {
                let image = image::RgbImage::from_raw(self.info.width, self.info.height, buffer)
                    .expect("buffer has exactly one frame");
                let frame = Frame {
                    seq: self.seq,
                    captured_at: Instant::now(),
                    timestamp: Duration::from_secs_f64(self.seq as f64 / self.info.fps),
                    decode_time: started.elapsed(),
                    image,
                };
                self.seq += 1;
                self.frames_this_pass += 1;
                return Ok(Some(frame));
            }
            // End of the decoder's output: a clean end, or a failure to report.
            let status = match decoder.child.wait() {
                Ok(status) => status,
                Err(e) => return Err(self.corrupt(e.to_string())),
            };
            // Give the stderr thread a moment to collect the decoder's last words.
            std::thread::sleep(Duration::from_millis(20));
            let message = decoder.error_text();
            self.decoder = None;
            if !status.success() || self.frames_this_pass == 0 {
                let reason = if message.is_empty() {
                    format!(
                        "ffmpeg exited with {status} after {} frames",
                        self.frames_this_pass
                    )
                } else {
                    message
                };
                return Err(self.corrupt(reason));
            }
            if filled > 0 {
                log::warn!("{}: last frame truncated, ignored", self.name);
            }
            if !self.looped {
                return Ok(None);
            }
            if !self.path.is_file() {
                return Err(CaptureError::Disconnected(self.name.clone()));
            }
            self.decoder = Some(Decoder::spawn(&self.path)?);
            self.frames_this_pass = 0;
        }
    }
}
