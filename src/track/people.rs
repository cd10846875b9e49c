//! Face state per person: refined expressions, tracked identity, smoothing and a fitted 3D head
//! pose, in one step per frame. Both the app and `polyface track` use it.

use glam::Vec2;

use super::{TrackState, Tracker, TrackerConfig};
use crate::fit::{fit_pose, refine_blendshapes, rotation_in_camera, Camera, FitOptions, HeadPose};
use crate::timing::{FrameTimings, Stage};
use crate::vision::FaceObservation;

/// One person this frame.
#[derive(Clone, Debug)]
pub struct Person {
    pub id: u32,
    pub state: TrackState,
    /// The network's observation (blendshapes refined), in frame pixels.
    pub raw: FaceObservation,
    /// Smoothed observation; its rotation is in the frame camera's space.
    pub smoothed: FaceObservation,
    /// Head pose fitted to the smoothed landmarks, camera space (cm).
    pub pose: Option<HeadPose>,
    /// Reprojection error of the fitted pose, pixels.
    pub fit_rms_px: f32,
}

pub struct People {
    pub tracker: Tracker,
    pub fit_options: FitOptions,
    /// Vertical field of view assumed for the camera, degrees.
    pub vertical_fov_deg: f32,
}

impl Default for People {
    fn default() -> Self {
        People {
            tracker: Tracker::new(TrackerConfig::default()),
            fit_options: FitOptions::default(),
            vertical_fov_deg: 63.0,
        }
    }
}

impl People {
    /// Turns this frame's observations into people; records fit and track times.
    pub fn update(
        &mut self,
        frame_size: (u32, u32),
        mut faces: Vec<FaceObservation>,
        time_s: f64,
        timings: &mut FrameTimings,
    ) -> Vec<Person> {
        let camera = Camera::assumed(frame_size.0, frame_size.1, self.vertical_fov_deg);
        timings.time(Stage::Fit, || {
            for face in &mut faces {
                refine_blendshapes(&face.landmarks, &mut face.blendshapes);
                let center: Vec2 = (face.bbox.0 + face.bbox.1) / 2.0;
                face.rotation = rotation_in_camera(face.rotation, center, &camera);
            }
        });
        let tracked = timings.time(Stage::Track, || self.tracker.update(faces, time_s));
        timings.time(Stage::Fit, || {
            tracked
                .into_iter()
                .map(|t| {
                    let fit = fit_pose(
                        &t.smoothed.landmarks,
                        &camera,
                        Some(t.smoothed.rotation),
                        &self.fit_options,
                    );
                    Person {
                        id: t.id,
                        state: t.state,
                        raw: t.raw,
                        smoothed: t.smoothed,
                        pose: fit.map(|f| f.pose),
                        fit_rms_px: fit.map_or(f32::NAN, |f| f.rms_px),
                    }
                })
                .collect()
        })
    }

    pub fn reset(&mut self) {
        self.tracker.reset();
    }
}
