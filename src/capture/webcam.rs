//! Webcams through nokhwa (V4L2 / AVFoundation / Media Foundation), MJPEG and YUYV decoded to RGB.

use std::time::Instant;

use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{
    ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
    Resolution,
};
use nokhwa::{Camera, NokhwaError};

use super::{CameraInfo, CaptureError, Frame, FrameSource, SourceOptions};

/// Resolution asked for when none is given: plenty for face tracking, cheap to decode.
const DEFAULT_RESOLUTION: (u32, u32) = (640, 480);
const DEFAULT_FPS: u32 = 30;

pub fn list() -> Result<Vec<CameraInfo>, CaptureError> {
    let cameras = match nokhwa::query(ApiBackend::Auto) {
        Ok(cameras) => cameras,
        // No video subsystem at all (no /dev/video*, no permissions) means: no cameras.
        Err(e) => {
            log::debug!("camera query failed: {e}");
            Vec::new()
        }
    };
    Ok(cameras
        .into_iter()
        .enumerate()
        .map(|(position, info)| CameraInfo {
            index: match info.index() {
                CameraIndex::Index(i) => *i,
                CameraIndex::String(_) => position as u32,
            },
            name: info.human_name(),
            description: info.description().to_string(),
        })
        .collect())
}

/// Picks a camera by index ("0") or by a case-insensitive part of its name ("logitech").
fn select(selector: Option<&str>) -> Result<CameraInfo, CaptureError> {
    let cameras = list()?;
    if cameras.is_empty() {
        return Err(CaptureError::NoCamera);
    }
    let Some(selector) = selector.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(cameras[0].clone());
    };
    if let Ok(index) = selector.parse::<u32>() {
        return cameras
            .into_iter()
            .find(|c| c.index == index)
            .ok_or_else(|| CaptureError::CameraNotFound(selector.to_string()));
    }
    let wanted = selector.to_lowercase();
    cameras
        .into_iter()
        .find(|c| c.name.to_lowercase().contains(&wanted))
        .ok_or_else(|| CaptureError::CameraNotFound(selector.to_string()))
}

/// Turns nokhwa's errors into ours; "busy" and "gone" matter to the user, so they get their own.
fn classify(name: &str, error: NokhwaError) -> CaptureError {
    let text = error.to_string();
    let lower = text.to_lowercase();
    if lower.contains("busy") || lower.contains("ebusy") || lower.contains("os error 16") {
        CaptureError::CameraBusy(name.to_string())
    } else if lower.contains("no such device")
        || lower.contains("os error 19")
        || lower.contains("enodev")
    {
        CaptureError::Disconnected(format!("camera {name}"))
    } else {
        CaptureError::Camera {
            name: name.to_string(),
            reason: text,
        }
    }
}

pub struct WebcamSource {
    camera: Camera,
    name: String,
    seq: u64,
    started: Option<Instant>,
    fps: f64,
}

impl WebcamSource {
    pub fn open(selector: Option<&str>, options: &SourceOptions) -> Result<Self, CaptureError> {
        let info = select(selector)?;
        let (width, height) = options.resolution.unwrap_or(DEFAULT_RESOLUTION);
        let fps = options
            .fps
            .map(|f| f.round().max(1.0) as u32)
            .unwrap_or(DEFAULT_FPS);
        let wanted = CameraFormat::new(Resolution::new(width, height), FrameFormat::MJPEG, fps);
        let request = RequestedFormat::new::<RgbFormat>(RequestedFormatType::Closest(wanted));
        let name = format!("{} (#{})", info.name, info.index);
        let mut camera =
            Camera::new(CameraIndex::Index(info.index), request).map_err(|e| classify(&name, e))?;
        camera.open_stream().map_err(|e| classify(&name, e))?;
        let fps = camera.frame_rate() as f64;
        Ok(WebcamSource {
            camera,
            name,
            seq: 0,
            started: None,
            fps,
        })
    }
}

impl FrameSource for WebcamSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn resolution(&self) -> Option<(u32, u32)> {
        let r = self.camera.resolution();
        Some((r.width(), r.height()))
    }

    fn is_live(&self) -> bool {
        true
    }

    fn fps(&self) -> Option<f64> {
        Some(self.fps)
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        let buffer = self.camera.frame().map_err(|e| classify(&self.name, e))?;
        let captured_at = Instant::now();
        let image = buffer
            .decode_image::<RgbFormat>()
            .map_err(|e| classify(&self.name, e))?;
        let started = *self.started.get_or_insert(captured_at);
        let frame = Frame {
            seq: self.seq,
            captured_at,
            timestamp: captured_at - started,
            decode_time: captured_at.elapsed(),
            image,
        };
        self.seq += 1;
        Ok(Some(frame))
    }
}

impl Drop for WebcamSource {
    fn drop(&mut self) {
        let _ = self.camera.stop_stream();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_unplugged_cameras_get_their_own_errors() {
        let busy = NokhwaError::OpenDeviceError(
            "/dev/video0".into(),
            "Device or resource busy (os error 16)".into(),
        );
        assert!(matches!(classify("Cam", busy), CaptureError::CameraBusy(_)));
        let gone = NokhwaError::ReadFrameError("No such device (os error 19)".into());
        let err = classify("Cam", gone);
        assert!(matches!(err, CaptureError::Disconnected(_)), "{err}");
        let other = NokhwaError::ReadFrameError("timeout".into());
        assert!(matches!(
            classify("Cam", other),
            CaptureError::Camera { .. }
        ));
        assert!(CaptureError::CameraBusy("Cam".into())
            .to_string()
            .contains("another program"));
    }
}
