//! Face state per person: refined expressions, tracked identity, smoothing and a fitted 3D head
//! pose, in one step per frame. Both the app and `polyface track` use it.

use glam::Vec2;

use super::{TrackState, Tracker, TrackerConfig};
use crate::fit::{fit_pose, refine_blendshapes, rotation_in_camera, Camera, FitOptions, HeadPose};
use crate::timing::{FrameTimings, Stage};
use crate::vision::{FaceObservation, ReId};

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
    /// Face embeddings that give returning people their old IDs (when a re-ID model is loaded).
    pub reid: Option<Reidentifier>,
}

/// The re-identification state: everyone seen this session, by ID.
pub struct Reidentifier {
    net: ReId,
    /// (ID, embedding) of every person identified so far.
    gallery: Vec<(u32, Vec<f32>)>,
    /// Track IDs already embedded (each track is embedded once, when it is confirmed).
    done: std::collections::HashSet<u32>,
}

impl Reidentifier {
    pub fn new(net: ReId) -> Reidentifier {
        Reidentifier {
            net,
            gallery: Vec::new(),
            done: Default::default(),
        }
    }

    /// Best gallery match for `embedding` among IDs not in `present`: (ID, cosine).
    fn best_match(&self, embedding: &[f32], present: &[u32]) -> Option<(u32, f32)> {
        self.gallery
            .iter()
            .filter(|(id, _)| !present.contains(id))
            .map(|(id, e)| (*id, crate::vision::reid::cosine(e, embedding)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

impl Default for People {
    fn default() -> Self {
        People {
            tracker: Tracker::new(TrackerConfig::default()),
            fit_options: FitOptions::default(),
            vertical_fov_deg: 63.0,
            reid: None,
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

    /// Loads `reid.safetensors` from `models` if it is there (re-ID is optional: without it
    /// a returning person simply gets a new ID).
    pub fn with_reid_from(
        mut self,
        models: &std::path::Path,
        device: &candle_core::Device,
    ) -> People {
        let path = models.join("reid.safetensors");
        if path.exists() {
            match ReId::load(&path, device) {
                Ok(net) => self.reid = Some(Reidentifier::new(net)),
                Err(e) => log::warn!("re-identification off: {e}"),
            }
        }
        self
    }

    /// Embeds people confirmed since the last call and gives each the ID of the best-matching
    /// person who is not in the frame any more, when similar enough. Once per new track.
    pub fn reidentify(
        &mut self,
        frame: &image::RgbImage,
        persons: &mut [Person],
        timings: &mut FrameTimings,
    ) {
        let Some(reid) = self.reid.as_mut() else {
            return;
        };
        let fresh: Vec<usize> = persons
            .iter()
            .enumerate()
            .filter(|(_, p)| p.state == TrackState::Confirmed && !reid.done.contains(&p.id))
            .map(|(i, _)| i)
            .collect();
        if fresh.is_empty() {
            return;
        }
        let start = std::time::Instant::now();
        let mut aligned = Vec::new();
        let mut which = Vec::new();
        for &i in &fresh {
            reid.done.insert(persons[i].id);
            if let Some(face) = crate::vision::reid::align(frame, &persons[i].smoothed.landmarks) {
                aligned.push(face);
                which.push(i);
            }
        }
        let embeddings = match reid.net.embed_aligned(&aligned) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("re-identification failed: {e}");
                return;
            }
        };
        let mut present: Vec<u32> = persons.iter().map(|p| p.id).collect();
        for (i, embedding) in which.into_iter().zip(embeddings) {
            let id = persons[i].id;
            match reid.best_match(&embedding, &present) {
                Some((old, similarity))
                    if similarity >= reid.net.threshold && self.tracker.rename(id, old) =>
                {
                    log::info!("person #{id} is #{old} again (similarity {similarity:.2})");
                    persons[i].id = old;
                    reid.done.insert(old);
                    present.push(old);
                }
                _ => reid.gallery.push((id, embedding)),
            }
        }
        timings.add(Stage::ReId, start.elapsed());
    }

    pub fn reset(&mut self) {
        self.tracker.reset();
        if let Some(reid) = self.reid.as_mut() {
            reid.gallery.clear();
            reid.done.clear();
        }
    }
}
