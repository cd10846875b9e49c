//! One card per person: ID or name, head angles, live expression bars, neutral calibration,
//! and naming (remember this person between sessions) or forgetting them.

use std::collections::HashMap;

use crate::retarget::{arkit_weights, Retargeter, ARKIT_52};
use crate::track::{Person, TrackState};

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

/// Neutral calibrations kept; the oldest is forgotten past this.
pub const MAX_CALIBRATIONS: usize = 64;

/// What a card asks for besides calibration.
#[derive(Clone, Debug, PartialEq)]
pub enum PeopleRequest {
    /// Remember person `id` as `name` (their embeddings and settings are stored).
    Name { id: u32, name: String },
    /// Delete what is stored about `name`.
    Forget(String),
}

#[derive(Default)]
pub struct PeoplePanel {
    /// The name typed on each card in view.
    pub typed_names: HashMap<u32, String>,
    /// Per person: the retargeter holding their neutral calibration, and when it was made
    /// (a count of calibrations).
    calibration: HashMap<u32, (Retargeter, u64)>,
    calibrations_made: u64,
}

impl PeoplePanel {
    /// The calibrated ARKit weights of a person (identity mapping onto ARKit names).
    pub fn weights(&self, person: &Person) -> Vec<(String, f32)> {
        let raw = arkit_weights(&person.smoothed.blendshapes);
        match self.calibration.get(&person.id) {
            Some((r, _)) => r.apply(&raw),
            None => ARKIT_52.iter().map(|n| n.to_string()).zip(raw).collect(),
        }
    }

    /// Makes `person`'s current face their neutral.
    pub fn calibrate(&mut self, person: &Person) {
        self.set_neutral(person.id, &arkit_weights(&person.smoothed.blendshapes));
    }

    /// Person `id`'s neutral face (ARKit-52 weights), if calibrated.
    pub fn neutral(&self, id: u32) -> Option<[f32; 52]> {
        self.calibration.get(&id).and_then(|(r, _)| r.neutral())
    }

    /// Gives person `id` a stored neutral face.
    pub fn set_neutral(&mut self, id: u32, neutral: &[f32; 52]) {
        let names: Vec<String> = ARKIT_52.iter().map(|n| n.to_string()).collect();
        let (mut retargeter, _) = Retargeter::by_name(&names);
        retargeter.calibrate_neutral(neutral);
        let person_id = id;
        self.calibrations_made += 1;
        self.calibration
            .insert(person_id, (retargeter, self.calibrations_made));
        if self.calibration.len() > MAX_CALIBRATIONS {
            let oldest = self
                .calibration
                .iter()
                .min_by_key(|(_, (_, made))| *made)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.calibration.remove(&id);
            }
        }
    }

    /// People with a neutral calibration.
    pub fn calibrated(&self) -> usize {
        self.calibration.len()
    }

    /// The cards; returns what the user asked for (naming, forgetting).
    pub fn ui(&mut self, ui: &mut egui::Ui, people: &[Person]) -> Vec<PeopleRequest> {
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
                    let calibrated = self.calibration.contains_key(&person.id);
                    ui.horizontal(|ui| {
                        if ui.button("calibrate neutral").clicked() {
                            self.calibrate(person);
                        }
                        if calibrated && ui.button("reset").clicked() {
                            self.calibration.remove(&person.id);
                        }
                    });
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
                                "keeps this person's face embeddings (not images), avatar and \
                                 neutral face on this computer, to recognise them next time",
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
