//! One card per person: ID or name, head angles, live expression bars, neutral calibration,
//! their own smoothing, and naming (remember this person between sessions) or forgetting them.

use std::collections::HashMap;

use crate::retarget::{arkit_weights, Retargeter, ARKIT_52};
use crate::track::{Person, Smoothing, TrackState, STEADINESS_RANGE};

/// The expressions shown as bars (all 52 are tracked; these tell at a glance that it works).
const SHOWN: [&str; 10] = [
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "jawOpen",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthFunnel",
    "mouthPucker",
    "browInnerUp",
    "browDownLeft",
    "cheekPuff",
];

/// Neutral calibrations (and own smoothings) kept; the oldest is forgotten past this.
pub const MAX_CALIBRATIONS: usize = 64;

/// What a card asks for besides calibration.
#[derive(Clone, Debug, PartialEq)]
pub enum PeopleRequest {
    /// Remember person `id` as `name` (their embeddings and settings are stored).
    Name { id: u32, name: String },
    /// Delete what is stored about `name`.
    Forget(String),
    /// Person `id`'s own smoothing changed (`None`: back to the app's).
    Smoothing {
        id: u32,
        smoothing: Option<Smoothing>,
    },
}

/// Values per person ID, the most recently set [`MAX_CALIBRATIONS`] of them.
struct Recent<V> {
    values: HashMap<u32, (V, u64)>,
    made: u64,
}

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Recent {
            values: HashMap::new(),
            made: 0,
        }
    }
}

impl<V> Recent<V> {
    fn get(&self, id: u32) -> Option<&V> {
        self.values.get(&id).map(|(v, _)| v)
    }

    fn insert(&mut self, id: u32, value: V) {
        self.made += 1;
        self.values.insert(id, (value, self.made));
        if self.values.len() > MAX_CALIBRATIONS {
            let oldest = self
                .values
                .iter()
                .min_by_key(|(_, (_, made))| *made)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.values.remove(&id);
            }
        }
    }

    fn remove(&mut self, id: u32) {
        self.values.remove(&id);
    }
}

#[derive(Default)]
pub struct PeoplePanel {
    /// The name typed on each card in view.
    pub typed_names: HashMap<u32, String>,
    /// Per person: the retargeter holding their neutral calibration.
    calibration: Recent<Retargeter>,
    /// Per person: their own smoothing (the app's for everyone else).
    smoothing: Recent<Smoothing>,
}

impl PeoplePanel {
    /// The calibrated ARKit weights of a person (identity mapping onto ARKit names).
    pub fn weights(&self, person: &Person) -> Vec<(String, f32)> {
        let raw = arkit_weights(&person.smoothed.blendshapes);
        match self.calibration.get(person.id) {
            Some(r) => r.apply(&raw),
            None => ARKIT_52.iter().map(|n| n.to_string()).zip(raw).collect(),
        }
    }

    /// Makes `person`'s current face their neutral.
    pub fn calibrate(&mut self, person: &Person) {
        self.set_neutral(person.id, &arkit_weights(&person.smoothed.blendshapes));
    }

    /// Person `id`'s neutral face (ARKit-52 weights), if calibrated.
    pub fn neutral(&self, id: u32) -> Option<[f32; 52]> {
        self.calibration.get(id).and_then(|r| r.neutral())
    }

    /// Person `id`'s own smoothing, if they have one.
    pub fn smoothing(&self, id: u32) -> Option<Smoothing> {
        self.smoothing.get(id).copied()
    }

    /// Gives person `id` their own smoothing (`None`: the app's).
    pub fn set_smoothing(&mut self, id: u32, smoothing: Option<Smoothing>) {
        match smoothing {
            Some(s) => self.smoothing.insert(id, s),
            None => self.smoothing.remove(id),
        }
    }

    /// Gives person `id` a stored neutral face.
    pub fn set_neutral(&mut self, id: u32, neutral: &[f32; 52]) {
        let names: Vec<String> = ARKIT_52.iter().map(|n| n.to_string()).collect();
        let (mut retargeter, _) = Retargeter::by_name(&names);
        retargeter.calibrate_neutral(neutral);
        self.calibration.insert(id, retargeter);
    }

    /// People with a neutral calibration.
    pub fn calibrated(&self) -> usize {
        self.calibration.values.len()
    }

    /// The cards; returns what the user asked for (naming, forgetting, smoothing). `base` is
    /// the app's smoothing, which a person's own is relative to.
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        people: &[Person],
        base: &Smoothing,
    ) -> Vec<PeopleRequest> {
        let mut requests = Vec::new();
        self.typed_names
            .retain(|id, _| people.iter().any(|p| p.id == *id));
        let confirmed: Vec<&Person> = people
            .iter()
            .filter(|p| p.state == TrackState::Confirmed)
            .collect();
        if confirmed.is_empty() {
            ui.label("no people yet");
            return requests;
        }
        for person in confirmed {
            let (yaw, pitch, roll) = person.smoothed.yaw_pitch_roll();
            let title = match &person.name {
                Some(name) => format!("{name} (#{})", person.id),
                None => format!("person #{}", person.id),
            };
            egui::CollapsingHeader::new(title)
                .id_salt(person.id)
                .default_open(true)
                .show(ui, |ui| {
                    ui.label(format!(
                        "yaw {yaw:+.0}°  pitch {pitch:+.0}°  roll {roll:+.0}°"
                    ));
                    let weights: HashMap<String, f32> = self.weights(person).into_iter().collect();
                    for name in SHOWN {
                        let value = weights.get(name).copied().unwrap_or(0.0);
                        ui.add(
                            egui::ProgressBar::new(value)
                                .desired_width(200.0)
                                .text(format!("{name} {value:.2}")),
                        );
                    }
                    let calibrated = self.calibration.get(person.id).is_some();
                    ui.horizontal(|ui| {
                        if ui.button("calibrate neutral").clicked() {
                            self.calibrate(person);
                        }
                        if calibrated && ui.button("reset").clicked() {
                            self.calibration.remove(person.id);
                        }
                    });
                    if let Some(request) = self.smoothing_row(ui, person.id, base) {
                        requests.push(request);
                    }
                    ui.horizontal(|ui| {
                        let typed = self.typed_names.entry(person.id).or_default();
                        ui.add(
                            egui::TextEdit::singleline(typed)
                                .hint_text(person.name.as_deref().unwrap_or("name"))
                                .desired_width(90.0),
                        );
                        let label = if person.name.is_some() {
                            "rename"
                        } else {
                            "remember"
                        };
                        let button = ui
                            .add_enabled(!typed.trim().is_empty(), egui::Button::new(label))
                            .on_hover_text(
                                "keeps this person's face embeddings (not images), avatar, \
                                 neutral face and smoothing on this computer, to recognise them \
                                 next time",
                            );
                        if button.clicked() {
                            requests.push(PeopleRequest::Name {
                                id: person.id,
                                name: typed.trim().to_string(),
                            });
                            typed.clear();
                        }
                        if let Some(name) = &person.name {
                            if ui
                                .button(format!("forget {name}"))
                                .on_hover_text("deletes everything stored about them")
                                .clicked()
                            {
                                requests.push(PeopleRequest::Forget(name.clone()));
                            }
                        }
                    });
                });
        }
        requests
    }

    /// The smoothing slider of person `id`'s card: how much steadier than the app's they are.
    fn smoothing_row(
        &mut self,
        ui: &mut egui::Ui,
        id: u32,
        base: &Smoothing,
    ) -> Option<PeopleRequest> {
        let own = self.smoothing(id);
        let mut steadiness = own.map_or(1.0, |s| s.steadiness_against(base));
        let mut request = None;
        ui.horizontal(|ui| {
            let slider = ui
                .add(
                    egui::Slider::new(&mut steadiness, STEADINESS_RANGE)
                        .logarithmic(true)
                        .fixed_decimals(2)
                        .suffix("×")
                        .text("smoothing"),
                )
                .on_hover_text(
                    "this person's smoothing against the app's: higher is steadier at rest \
                     (more lag), lower follows small moves sooner (more jitter)",
                );
            if slider.changed() {
                let smoothing = Some(base.steadier(steadiness));
                self.set_smoothing(id, smoothing);
                request = Some(PeopleRequest::Smoothing { id, smoothing });
            }
            if own.is_some() && ui.button("default").clicked() {
                self.set_smoothing(id, None);
                request = Some(PeopleRequest::Smoothing {
                    id,
                    smoothing: None,
                });
            }
        });
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(id: u32, jaw: f32) -> Person {
        let face = crate::vision::FaceObservation {
            bbox: (glam::Vec2::ZERO, glam::Vec2::ONE),
            score: 1.0,
            landmarks: vec![glam::Vec2::ZERO; 68],
            rotation: glam::Mat3::IDENTITY,
            blendshapes: vec![jaw; 51],
        };
        Person {
            id,
            state: TrackState::Confirmed,
            raw: face.clone(),
            smoothed: face,
            pose: None,
            fit_rms_px: 0.0,
            name: None,
        }
    }

    #[test]
    fn calibrations_are_kept_for_the_most_recent_people_only() {
        let mut panel = PeoplePanel::default();
        for id in 1..=500 {
            panel.calibrate(&person(id, 0.3));
            assert!(panel.calibrated() <= MAX_CALIBRATIONS);
        }
        assert_eq!(panel.calibrated(), MAX_CALIBRATIONS);
        let jaw = |weights: Vec<(String, f32)>| {
            weights
                .into_iter()
                .find(|(n, _)| n == "jawOpen")
                .map(|(_, w)| w)
                .unwrap()
        };
        // the newest calibration holds (0.3 is their neutral), the oldest was forgotten
        assert!(jaw(panel.weights(&person(500, 0.3))) < 0.05);
        assert!((jaw(panel.weights(&person(1, 0.3))) - 0.3).abs() < 1e-6);
    }
}
