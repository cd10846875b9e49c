//! Face state per person: refined expressions, tracked identity, smoothing and a fitted 3D head
//! pose, in one step per frame. Both the app and `polyface track` use it.

use glam::Vec2;

use super::identities::{Gallery, MatchRules, Sighting};
use super::{TrackState, Tracker, TrackerConfig};
use crate::fit::{
    fit_pose, fit_pose_from, log_so3, refine_blendshapes, rotation_in_camera, Camera, FitOptions,
    HeadPose,
};
use crate::known::Recogniser;
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
    /// The name the user gave this person (now or in an earlier session), if any.
    pub name: Option<String>,
}

pub struct People {
    pub tracker: Tracker,
    pub fit_options: FitOptions,
    /// Vertical field of view assumed for the camera, degrees.
    pub vertical_fov_deg: f32,
    /// Face embeddings that give returning people their old IDs (when a re-ID model is loaded).
    pub reid: Option<Reidentifier>,
    /// The people the user named, recognised when a new ID appears (needs `reid`).
    pub known: Option<Recogniser>,
    /// Last frame's fitted pose per person and the frame size it was fitted in: next frame's
    /// solve starts there.
    last_poses: std::collections::HashMap<u32, ((u32, u32), HeadPose)>,
}

/// A warm start further than this from the network's rotation is not trusted (a relabelled
/// ID, a fit that went astray): the fit starts from the network's rotation instead.
const WARM_START_MAX_TURN_RAD: f32 = 0.25;

/// The re-identification state: the embedding network and everyone seen this session.
pub struct Reidentifier {
    net: ReId,
    pub gallery: Gallery,
    /// Seconds between embeddings of a person in view (new people are embedded when confirmed).
    pub recheck_s: f64,
    /// Cosine margin by which somebody else must fit better before a person's ID changes.
    pub keep_bonus: f32,
}

impl Reidentifier {
    pub fn new(net: ReId) -> Reidentifier {
        Reidentifier {
            net,
            gallery: Gallery::default(),
            recheck_s: 0.5,
            keep_bonus: 0.1,
        }
    }
}

impl Default for People {
    fn default() -> Self {
        People {
            tracker: Tracker::new(TrackerConfig::default()),
            fit_options: FitOptions::default(),
            vertical_fov_deg: 63.0,
            reid: None,
            known: None,
            last_poses: Default::default(),
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
        let last_poses = std::mem::take(&mut self.last_poses);
        let persons: Vec<Person> = timings.time(Stage::Fit, || {
            tracked
                .into_iter()
                .map(|t| {
                    let network = t.smoothed.rotation;
                    let warm = last_poses.get(&t.id).filter(|(size, pose)| {
                        *size == frame_size
                            && log_so3(&(network.transpose() * pose.rotation)).length()
                                < WARM_START_MAX_TURN_RAD
                    });
                    let points = &t.smoothed.landmarks;
                    let options = &self.fit_options;
                    let fit = match warm {
                        Some(&(_, start)) => {
                            fit_pose_from(points, &camera, Some(network), start, options)
                        }
                        None => fit_pose(points, &camera, Some(network), options),
                    };
                    Person {
                        id: t.id,
                        state: t.state,
                        raw: t.raw,
                        smoothed: t.smoothed,
                        pose: fit.map(|f| f.pose),
                        fit_rms_px: fit.map_or(f32::NAN, |f| f.rms_px),
                        name: self
                            .known
                            .as_ref()
                            .and_then(|k| k.name_of(t.id))
                            .map(str::to_string),
                    }
                })
                .collect()
        });
        self.last_poses = persons
            .iter()
            .filter_map(|p| Some((p.id, (frame_size, p.pose?))))
            .collect();
        persons
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

    /// Recognises the people the user named (with re-identification only: recognition needs
    /// its embeddings).
    pub fn with_known(mut self, recogniser: Recogniser) -> People {
        if self.reid.is_some() {
            self.known = Some(recogniser);
        }
        self
    }

    /// Keeps IDs with their people: embeds the confirmed people in view when one of them is new
    /// or due for a check, and applies what the gallery decides (a returning person gets their
    /// old ID back, two people who traded places get theirs back). Lost people the returning
    /// ones turn out to be are dropped from `persons`.
    pub fn reidentify(
        &mut self,
        frame: &image::RgbImage,
        persons: &mut Vec<Person>,
        time_s: f64,
        timings: &mut FrameTimings,
    ) {
        let Some(reid) = self.reid.as_mut() else {
            return;
        };
        let in_view: Vec<usize> = (0..persons.len())
            .filter(|&i| persons[i].state == TrackState::Confirmed)
            .collect();
        let ids_in_view: Vec<u32> = in_view.iter().map(|&i| persons[i].id).collect();
        reid.gallery.retain_in_view(&ids_in_view);
        if !ids_in_view
            .iter()
            .any(|&id| reid.gallery.due(id, time_s, reid.recheck_s))
        {
            return;
        }
        let start = std::time::Instant::now();
        let mut aligned = Vec::new();
        let mut embedded = Vec::new();
        for &i in &in_view {
            if let Some(face) = reid.net.align(frame, &persons[i].smoothed.landmarks) {
                aligned.push(face);
                embedded.push(persons[i].id);
            }
        }
        let embeddings = match reid.net.embed_aligned(&aligned) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("re-identification failed: {e}");
                return;
            }
        };
        // Everyone in view who was not embedded now (tentative, or no alignable face) keeps their ID.
        let held: Vec<u32> = persons
            .iter()
            .filter(|p| p.state != TrackState::Lost && !embedded.contains(&p.id))
            .map(|p| p.id)
            .collect();
        // recognition compares the new IDs' embeddings with the named people (a copy only when
        // somebody is named)
        let for_names: Vec<(u32, Vec<f32>)> = match &self.known {
            Some(_) => embedded.iter().copied().zip(embeddings.clone()).collect(),
            None => Vec::new(),
        };
        let sightings = embedded
            .iter()
            .zip(embeddings)
            .map(|(&id, embedding)| Sighting { id, embedding })
            .collect();
        let rules = MatchRules {
            threshold: reid.net.threshold,
            keep_bonus: reid.keep_bonus,
        };
        let tracker = &mut self.tracker;
        let changes = reid
            .gallery
            .settle(sightings, &held, time_s, rules, || tracker.fresh_id());
        let mut pairs: Vec<(u32, u32)> = changes.iter().map(|c| (c.from, c.to)).collect();
        let relabelled = !changes.is_empty() && self.tracker.relabel(&pairs);
        if !relabelled {
            pairs.clear();
        }
        if relabelled {
            for change in &changes {
                log::info!(
                    "person #{} is #{} (similarity {:.2})",
                    change.from,
                    change.to,
                    change.similarity
                );
            }
            // A lost person who turned out to be in view under another ID is gone.
            persons.retain(|p| {
                !(p.state == TrackState::Lost && pairs.iter().any(|&(_, to)| to == p.id))
            });
            for person in persons.iter_mut() {
                if let Some(&(_, to)) = pairs.iter().find(|&&(from, _)| from == person.id) {
                    person.id = to;
                }
            }
            persons.sort_by_key(|p| p.id);
            if let Some(known) = self.known.as_mut() {
                known.relabel(&pairs);
            }
        }
        if let Some(known) = self.known.as_mut() {
            let settled = |id: u32| {
                pairs
                    .iter()
                    .find(|&&(from, _)| from == id)
                    .map_or(id, |&(_, to)| to)
            };
            let faces: Vec<(u32, &[f32])> = for_names
                .iter()
                .map(|(id, e)| (settled(*id), e.as_slice()))
                .collect();
            let in_view: Vec<u32> = persons.iter().map(|p| p.id).collect();
            known.recognise(&faces, &in_view);
            for person in persons.iter_mut() {
                person.name = known.name_of(person.id).map(str::to_string);
            }
        }
        timings.add(Stage::ReId, start.elapsed());
    }

    /// Names person `id` (their session embeddings are stored) with the settings they chose.
    pub fn name_person(
        &mut self,
        id: u32,
        name: &str,
        choices: crate::known::Choices,
    ) -> anyhow::Result<()> {
        let embeddings = self
            .reid
            .as_ref()
            .and_then(|r| r.gallery.people.iter().find(|p| p.id == id))
            .map(|p| p.embeddings.clone())
            .unwrap_or_default();
        let known = self
            .known
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("naming people is off (no re-ID model)"))?;
        known.name(id, name, &embeddings, choices)
    }

    pub fn reset(&mut self) {
        if let Some(known) = self.known.as_mut() {
            known.reset();
        }
        self.tracker.reset();
        self.last_poses.clear();
        if let Some(reid) = self.reid.as_mut() {
            reid.gallery.clear();
        }
    }
}
