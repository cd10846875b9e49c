//! One card per person: ID, head angles, live expression bars, neutral calibration.

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

#[derive(Default)]
pub struct PeoplePanel {
    /// Per person: the retargeter holding their neutral calibration.
    calibration: HashMap<u32, Retargeter>,
}

impl PeoplePanel {
    /// The calibrated ARKit weights of a person (identity mapping onto ARKit names).
    pub fn weights(&self, person: &Person) -> Vec<(String, f32)> {
        let raw = arkit_weights(&person.smoothed.blendshapes);
        match self.calibration.get(&person.id) {
            Some(r) => r.apply(&raw),
            None => ARKIT_52.iter().map(|n| n.to_string()).zip(raw).collect(),
        }
    }

    /// Makes `person`'s current face their neutral.
    pub fn calibrate(&mut self, person: &Person) {
        let names: Vec<String> = ARKIT_52.iter().map(|n| n.to_string()).collect();
        let (mut retargeter, _) = Retargeter::by_name(&names);
        retargeter.calibrate_neutral(&arkit_weights(&person.smoothed.blendshapes));
        self.calibration.insert(person.id, retargeter);
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, people: &[Person]) {
        let confirmed: Vec<&Person> = people
            .iter()
            .filter(|p| p.state == TrackState::Confirmed)
            .collect();
        if confirmed.is_empty() {
            ui.label("no people yet");
            return;
        }
        for person in confirmed {
            let (yaw, pitch, roll) = person.smoothed.yaw_pitch_roll();
            egui::CollapsingHeader::new(format!("person #{}", person.id))
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
                });
        }
    }
}
