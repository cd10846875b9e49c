//! Track: faces frame to frame become people with stable integer IDs.
//!
//! Each frame's faces are assigned to the existing tracks by the Hungarian method on a cost of
//! box overlap and landmark distance, measured against where each track is predicted to be
//! (constant velocity), so people who cross paths keep their IDs. A track is tentative until seen
//! twice, confirmed after that, lost while unseen, and dropped after `max_lost_s`. Each track
//! smooths its landmarks, rotation and blendshapes with One-Euro filters. Boxes alone cannot tell
//! people apart who trade places or come back: [`identities`] fixes IDs from face embeddings.

mod hungarian;
pub mod identities;
mod one_euro;
mod people;

use glam::{Mat3, Quat, Vec2};

pub use hungarian::assign;
pub use one_euro::{OneEuro, OneEuroBank, OneEuroParams};
pub use people::{People, Person};

use crate::vision::iou;
use crate::vision::FaceObservation;

/// Life cycle of a track.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackState {
    /// Seen once; could still be a false detection.
    Tentative,
    Confirmed,
    /// Not seen recently; kept (its avatar holds still) until `max_lost_s` passes.
    Lost,
}

/// Smoothing settings per channel (see [`OneEuroParams`]); landmarks in pixels, rotation in
/// quaternion components, blendshapes in weight units.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Smoothing {
    pub landmarks: OneEuroParams,
    pub rotation: OneEuroParams,
    pub blendshapes: OneEuroParams,
}

impl Default for Smoothing {
    fn default() -> Self {
        Smoothing {
            landmarks: OneEuroParams::new(1.5, 0.02),
            rotation: OneEuroParams::new(1.5, 0.5),
            blendshapes: OneEuroParams::new(3.0, 1.0),
        }
    }
}

/// The range of [`Smoothing::steadier`] the people panel offers.
pub const STEADINESS_RANGE: std::ops::RangeInclusive<f32> = 0.25..=4.0;

impl Smoothing {
    /// These settings `factor` times steadier at rest (every channel's `min_cutoff` divided by
    /// it; < 1: less lag, more jitter). Fast moves stay as responsive (`beta` is kept).
    pub fn steadier(&self, factor: f32) -> Smoothing {
        let factor = factor.clamp(*STEADINESS_RANGE.start(), *STEADINESS_RANGE.end());
        let scale = |p: OneEuroParams| OneEuroParams {
            min_cutoff: p.min_cutoff / factor,
            ..p
        };
        Smoothing {
            landmarks: scale(self.landmarks),
            rotation: scale(self.rotation),
            blendshapes: scale(self.blendshapes),
        }
    }

    /// How much steadier than `base` these settings are (the inverse of [`Smoothing::steadier`],
    /// read from the landmarks' cutoff).
    pub fn steadiness_against(&self, base: &Smoothing) -> f32 {
        base.landmarks.min_cutoff / self.landmarks.min_cutoff.max(1e-6)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrackerConfig {
    /// Sightings before a track is confirmed.
    pub confirm_hits: u32,
    /// Seconds a lost track is kept before it is dropped.
    pub max_lost_s: f64,
    /// Weight of the landmark distance (in inter-ocular distances) against 1 − IoU.
    pub landmark_weight: f32,
    /// Pairs costlier than this are never matched.
    pub max_cost: f32,
    pub smoothing: Smoothing,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            confirm_hits: 2,
            max_lost_s: 1.0,
            landmark_weight: 0.5,
            max_cost: 1.6,
            smoothing: Smoothing::default(),
        }
    }
}

/// A person as the tracker sees them this frame.
#[derive(Clone, Debug)]
pub struct TrackedFace {
    pub id: u32,
    pub state: TrackState,
    /// This frame's observation as the network gave it (the last one, for a lost track).
    pub raw: FaceObservation,
    /// The same after smoothing.
    pub smoothed: FaceObservation,
}

struct Track {
    id: u32,
    state: TrackState,
    hits: u32,
    last_seen_s: f64,
    raw: FaceObservation,
    smoothed: FaceObservation,
    /// Box-centre velocity, pixels per second.
    velocity: Vec2,
    landmark_filter: OneEuroBank,
    rotation_filter: OneEuroBank,
    blend_filter: OneEuroBank,
    last_quat: Quat,
}

impl Track {
    fn predicted_shift(&self, now_s: f64) -> Vec2 {
        self.velocity * (now_s - self.last_seen_s).min(0.5) as f32
    }

    fn cost(&self, face: &FaceObservation, now_s: f64, config: &TrackerConfig) -> f32 {
        let shift = self.predicted_shift(now_s);
        let predicted = (self.raw.bbox.0 + shift, self.raw.bbox.1 + shift);
        let overlap = iou(&predicted, &face.bbox);
        let scale = self.raw.inter_ocular().max(face.inter_ocular()).max(1.0);
        let distance = self
            .raw
            .landmarks
            .iter()
            .zip(&face.landmarks)
            .map(|(a, b)| (*a + shift).distance(*b))
            .sum::<f32>()
            / face.landmarks.len().max(1) as f32
            / scale;
        (1.0 - overlap) + config.landmark_weight * distance.min(2.0)
    }

    fn update(
        &mut self,
        face: FaceObservation,
        now_s: f64,
        config: &TrackerConfig,
        smoothing: &Smoothing,
    ) {
        let dt = (now_s - self.last_seen_s).max(0.0) as f32;
        if dt > 0.0 {
            let moved = (face.bbox.0 + face.bbox.1 - self.raw.bbox.0 - self.raw.bbox.1) / 2.0 / dt;
            self.velocity = self.velocity * 0.5 + moved * 0.5;
        }
        self.hits += 1;
        self.last_seen_s = now_s;
        self.state = if self.hits >= config.confirm_hits {
            TrackState::Confirmed
        } else {
            TrackState::Tentative
        };
        self.smoothed = smooth(self, &face, dt, smoothing);
        self.raw = face;
    }
}

fn smooth(
    track: &mut Track,
    face: &FaceObservation,
    dt: f32,
    smoothing: &Smoothing,
) -> FaceObservation {
    let mut coords: Vec<f32> = face.landmarks.iter().flat_map(|p| [p.x, p.y]).collect();
    track
        .landmark_filter
        .filter(&mut coords, dt, &smoothing.landmarks);
    let landmarks: Vec<Vec2> = coords
        .chunks_exact(2)
        .map(|c| Vec2::new(c[0], c[1]))
        .collect();

    // Quaternions q and −q are the same rotation: keep the sign continuous before filtering.
    let mut q = Quat::from_mat3(&face.rotation);
    if q.dot(track.last_quat) < 0.0 {
        q = -q;
    }
    track.last_quat = q;
    let mut components = q.to_array();
    track
        .rotation_filter
        .filter(&mut components, dt, &smoothing.rotation);
    let rotation = Mat3::from_quat(Quat::from_array(components).normalize());

    let mut blendshapes = face.blendshapes.clone();
    track
        .blend_filter
        .filter(&mut blendshapes, dt, &smoothing.blendshapes);
    blendshapes.iter_mut().for_each(|b| *b = b.clamp(0.0, 1.0));

    FaceObservation {
        bbox: crate::vision::tight_box(&landmarks).unwrap_or(face.bbox),
        score: face.score,
        landmarks,
        rotation,
        blendshapes,
    }
}

/// Follows faces across frames.
pub struct Tracker {
    pub config: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u32,
    /// People with their own smoothing (the app's per-person setting), by ID.
    own_smoothing: std::collections::HashMap<u32, Smoothing>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new(TrackerConfig::default())
    }
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Tracker {
        Tracker {
            config,
            tracks: Vec::new(),
            next_id: 1,
            own_smoothing: Default::default(),
        }
    }

    /// Person `id` is smoothed with `smoothing` from their next frame on (`None`: the config's
    /// again). Forgotten when their track is dropped.
    pub fn set_smoothing(&mut self, id: u32, smoothing: Option<Smoothing>) {
        match smoothing {
            Some(s) if self.tracks.iter().any(|t| t.id == id) => {
                self.own_smoothing.insert(id, s);
            }
            _ => {
                self.own_smoothing.remove(&id);
            }
        }
    }

    /// The smoothing person `id` gets.
    pub fn smoothing_of(&self, id: u32) -> &Smoothing {
        self.own_smoothing
            .get(&id)
            .unwrap_or(&self.config.smoothing)
    }

    /// Assigns this frame's faces (taken at `now_s` seconds) to people. Returns every track not
    /// yet dropped, ordered by ID.
    pub fn update(&mut self, faces: Vec<FaceObservation>, now_s: f64) -> Vec<TrackedFace> {
        let costs: Vec<Vec<f32>> = self
            .tracks
            .iter()
            .map(|t| {
                faces
                    .iter()
                    .map(|f| t.cost(f, now_s, &self.config))
                    .collect()
            })
            .collect();
        let pairs = assign(&costs, self.config.max_cost);
        let mut face_taken = vec![false; faces.len()];
        let mut track_matched = vec![false; self.tracks.len()];
        let mut faces: Vec<Option<FaceObservation>> = faces.into_iter().map(Some).collect();
        for (t, f) in pairs {
            if let Some(face) = faces[f].take() {
                let smoothing = *self.smoothing_of(self.tracks[t].id);
                self.tracks[t].update(face, now_s, &self.config, &smoothing);
                face_taken[f] = true;
                track_matched[t] = true;
            }
        }
        for (track, matched) in self.tracks.iter_mut().zip(&track_matched) {
            if !matched && track.state != TrackState::Tentative {
                track.state = TrackState::Lost;
            }
        }
        // Tentative tracks that were not seen again were false alarms; lost ones time out.
        let max_lost = self.config.max_lost_s;
        self.tracks.retain(|t| match t.state {
            TrackState::Tentative => t.last_seen_s == now_s,
            TrackState::Lost => now_s - t.last_seen_s <= max_lost,
            TrackState::Confirmed => true,
        });
        let tracks = &self.tracks;
        self.own_smoothing
            .retain(|id, _| tracks.iter().any(|t| t.id == *id));
        for face in faces.into_iter().flatten() {
            let id = self.next_id;
            self.next_id += 1;
            let mut track = Track {
                id,
                state: TrackState::Tentative,
                hits: 0,
                last_seen_s: now_s,
                raw: face.clone(),
                smoothed: face.clone(),
                velocity: Vec2::ZERO,
                landmark_filter: OneEuroBank::default(),
                rotation_filter: OneEuroBank::default(),
                blend_filter: OneEuroBank::default(),
                last_quat: Quat::IDENTITY,
            };
            track.update(face, now_s, &self.config, &self.config.smoothing);
            self.tracks.push(track);
        }
        self.tracks.sort_by_key(|t| t.id);
        self.tracks
            .iter()
            .map(|t| TrackedFace {
                id: t.id,
                state: t.state,
                raw: t.raw.clone(),
                smoothed: t.smoothed.clone(),
            })
            .collect()
    }

    /// Applies ID changes `(from, to)` all at once, so two people can swap IDs. A target ID held
    /// by a lost track that is not itself renamed is taken over (that track is dropped: its person
    /// is the one seen again). Returns false, changing nothing, when a source does not exist, a
    /// target appears twice, or a target belongs to a track in view that keeps its ID.
    pub fn relabel(&mut self, changes: &[(u32, u32)]) -> bool {
        let sources: Vec<u32> = changes.iter().map(|c| c.0).collect();
        let mut targets: Vec<u32> = changes.iter().map(|c| c.1).collect();
        targets.sort_unstable();
        if targets.windows(2).any(|w| w[0] == w[1])
            || !sources
                .iter()
                .all(|s| self.tracks.iter().any(|t| t.id == *s))
        {
            return false;
        }
        let holder_stays = |t: &Track| targets.contains(&t.id) && !sources.contains(&t.id);
        if self
            .tracks
            .iter()
            .any(|t| holder_stays(t) && t.state != TrackState::Lost)
        {
            return false;
        }
        self.tracks.retain(|t| !holder_stays(t));
        for track in &mut self.tracks {
            if let Some(&(_, to)) = changes.iter().find(|c| c.0 == track.id) {
                track.id = to;
            }
        }
        // a person's own smoothing follows their ID
        let moved: Vec<(u32, Option<Smoothing>)> = changes
            .iter()
            .map(|&(from, to)| (to, self.own_smoothing.get(&from).copied()))
            .collect();
        for &(from, _) in changes {
            self.own_smoothing.remove(&from);
        }
        for (to, smoothing) in moved {
            match smoothing {
                Some(s) => self.own_smoothing.insert(to, s),
                None => self.own_smoothing.remove(&to),
            };
        }
        self.tracks.sort_by_key(|t| t.id);
        true
    }

    /// An ID nobody has had yet.
    pub fn fresh_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id - 1
    }

    /// Forgets everyone (new source).
    pub fn reset(&mut self) {
        self.tracks.clear();
        self.own_smoothing.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A face whose landmarks are a fixed pattern of `size` pixels centred on `center`.
    fn face_at(center: Vec2, size: f32) -> FaceObservation {
        let landmarks: Vec<Vec2> = crate::fit::MEAN_FACE_68
            .iter()
            .map(|p| center + Vec2::new(p[0], -p[1]) * (size / 16.0))
            .collect();
        FaceObservation {
            bbox: crate::vision::tight_box(&landmarks).unwrap(),
            score: 0.9,
            landmarks,
            rotation: Mat3::IDENTITY,
            blendshapes: vec![0.2; 51],
        }
    }

    #[test]
    fn life_cycle_tentative_confirmed_lost_dropped() {
        let mut tracker = Tracker::default();
        let dt = 1.0 / 30.0;
        let out = tracker.update(vec![face_at(Vec2::new(100.0, 100.0), 80.0)], 0.0);
        assert_eq!(out[0].state, TrackState::Tentative);
        let out = tracker.update(vec![face_at(Vec2::new(102.0, 100.0), 80.0)], dt);
        assert_eq!((out[0].id, out[0].state), (1, TrackState::Confirmed));
        let out = tracker.update(vec![], 2.0 * dt);
        assert_eq!(out[0].state, TrackState::Lost);
        let out = tracker.update(vec![face_at(Vec2::new(106.0, 100.0), 80.0)], 3.0 * dt);
        assert_eq!(
            (out[0].id, out[0].state),
            (1, TrackState::Confirmed),
            "found again: same ID"
        );
        assert!(
            tracker.update(vec![], 3.0 * dt + 1.5).is_empty(),
            "dropped after max_lost_s"
        );
        // A one-frame false alarm never gets confirmed and disappears.
        tracker.update(vec![face_at(Vec2::new(300.0, 300.0), 60.0)], 10.0);
        assert!(tracker.update(vec![], 10.0 + dt).is_empty());
    }

    #[test]
    fn crossing_paths_never_swap_ids() {
        let mut tracker = Tracker::default();
        let dt = 1.0 / 30.0;
        let mut swaps = 0;
        let mut ids: Option<(u32, u32)> = None;
        for i in 0..90 {
            let t = i as f64 * dt;
            // A walks right, B walks left; they cross around frame 45, B passing in front of A.
            let a = face_at(Vec2::new(100.0 + 6.0 * i as f32, 200.0), 90.0);
            let b = face_at(Vec2::new(640.0 - 6.0 * i as f32, 215.0), 100.0);
            let occluded = (43..48).contains(&i);
            let faces = if occluded {
                vec![b.clone()]
            } else {
                vec![b.clone(), a.clone()]
            };
            let out = tracker.update(faces, t);
            let find = |x_sign: f32| {
                out.iter()
                    .filter(|f| {
                        f.state == TrackState::Confirmed
                            && f.raw.bbox == if x_sign > 0.0 { a.bbox } else { b.bbox }
                    })
                    .map(|f| f.id)
                    .next()
            };
            if let (Some(ia), Some(ib)) = (find(1.0), find(-1.0)) {
                match ids {
                    None => ids = Some((ia, ib)),
                    Some(known) if known != (ia, ib) => swaps += 1,
                    _ => {}
                }
            }
        }
        assert!(ids.is_some());
        assert_eq!(swaps, 0);
        assert_eq!(tracker.next_id, 3, "no extra IDs were handed out");
    }

    /// Standard deviation.
    fn std(v: &[f32]) -> f32 {
        let m = v.iter().sum::<f32>() / v.len() as f32;
        (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32).sqrt()
    }

    #[test]
    fn smoothing_removes_jitter_of_a_still_face() {
        let mut tracker = Tracker::default();
        let mut raw_x = Vec::new();
        let mut smooth_x = Vec::new();
        for i in 0..120 {
            let wobble = if i % 2 == 0 { 0.8 } else { -0.8 };
            let out = tracker.update(
                vec![face_at(Vec2::new(200.0 + wobble, 200.0), 100.0)],
                i as f64 / 30.0,
            );
            if i >= 30 {
                raw_x.push(out[0].raw.landmarks[30].x);
                smooth_x.push(out[0].smoothed.landmarks[30].x);
            }
        }
        assert!(
            std(&smooth_x) < 0.2 * std(&raw_x),
            "{} vs {}",
            std(&smooth_x),
            std(&raw_x)
        );
    }

    /// Spread (std) of a landmark's x over frames 30–119 of a face wobbling ±0.8 px in place,
    /// for person #1 (smoothed with `own` when given) and for person #2 beside them.
    fn wobble_spread(own: Option<Smoothing>) -> (f32, f32) {
        let mut tracker = Tracker::default();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for i in 0..120 {
            let wobble = if i % 2 == 0 { 0.8 } else { -0.8 };
            let faces = vec![
                face_at(Vec2::new(200.0 + wobble, 200.0), 100.0),
                face_at(Vec2::new(500.0 + wobble, 200.0), 100.0),
            ];
            let out = tracker.update(faces, i as f64 / 30.0);
            if i == 0 {
                tracker.set_smoothing(1, own);
            }
            if i >= 30 {
                first.push(out[0].smoothed.landmarks[30].x);
                second.push(out[1].smoothed.landmarks[30].x);
            }
        }
        (std(&first), std(&second))
    }

    #[test]
    fn a_person_with_their_own_smoothing_is_smoothed_with_it() {
        let (plain, beside) = wobble_spread(None);
        assert!((plain - beside).abs() < 1e-4, "{plain} vs {beside}");
        let base = Smoothing::default();
        let (steady, beside) = wobble_spread(Some(base.steadier(4.0)));
        let (lively, _) = wobble_spread(Some(base.steadier(0.25)));
        assert!(
            (beside - plain).abs() < 1e-4,
            "others keep the app's smoothing"
        );
        // a first-order low-pass at these cutoffs passes ~cutoff/15 Hz of a 15 Hz wobble
        assert!(steady < 0.5 * plain, "steadier: {steady} vs {plain}");
        assert!(lively > 2.0 * plain, "livelier: {lively} vs {plain}");
        assert!((base.steadier(4.0).steadiness_against(&base) - 4.0).abs() < 1e-5);
        assert_eq!(
            base.steadier(100.0),
            base.steadier(4.0),
            "clamped to the range"
        );
    }

    #[test]
    fn own_smoothing_follows_the_id_and_goes_with_the_track() {
        let mut tracker = Tracker::default();
        let dt = 1.0 / 30.0;
        let steady = Smoothing::default().steadier(3.0);
        tracker.update(vec![face_at(Vec2::new(100.0, 100.0), 80.0)], 0.0);
        tracker.set_smoothing(1, Some(steady));
        tracker.set_smoothing(7, Some(steady));
        assert_eq!(tracker.own_smoothing.len(), 1, "nobody has ID 7");
        assert!(tracker.relabel(&[(1, 5)]));
        assert_eq!(*tracker.smoothing_of(5), steady);
        assert_eq!(*tracker.smoothing_of(1), tracker.config.smoothing);
        tracker.update(vec![face_at(Vec2::new(101.0, 100.0), 80.0)], dt);
        assert_eq!(*tracker.smoothing_of(5), steady);
        tracker.update(vec![], 5.0);
        assert!(tracker.own_smoothing.is_empty(), "dropped with the track");
    }

    #[test]
    fn people_who_left_are_dropped_so_the_tracks_stay_few() {
        let mut tracker = Tracker::default();
        let dt = 1.0 / 30.0;
        // every third of a second four new people appear where nobody was (1,200 people in all)
        let phase_frames = 10;
        let phase_s = phase_frames as f64 * dt;
        let most_lost_phases = (tracker.config.max_lost_s / phase_s).ceil() as usize + 1;
        let bound = 4 * (1 + most_lost_phases);
        let mut most = 0;
        for frame in 0..3000 {
            let phase = frame / phase_frames;
            let faces = (0..4)
                .map(|k| {
                    let x = 100.0 + 150.0 * k as f32 + 2000.0 * (phase % 7) as f32;
                    face_at(Vec2::new(x, 100.0 + 300.0 * (phase % 3) as f32), 80.0)
                })
                .collect();
            let out = tracker.update(faces, frame as f64 * dt);
            most = most.max(out.len());
            assert!(out.len() <= bound, "frame {frame}: {} tracks", out.len());
        }
        assert!(tracker.next_id > 1000, "IDs churned: {}", tracker.next_id);
        assert!(most > 4, "lost people were kept a while: at most {most}");
    }
}
