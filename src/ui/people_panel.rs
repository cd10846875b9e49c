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

/// Neutral calibrations kept; the oldest is forgotten past this.
pub const MAX_CALIBRATIONS: usize = 64;

#[derive(Default)]
pub struct PeoplePanel {
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
        let names: Vec<String> = ARKIT_52.iter().map(|n| n.to_string()).collect();
        let (mut retargeter, _) = Retargeter::by_name(&names);
        retargeter.calibrate_neutral(&arkit_weights(&person.smoothed.blendshapes));
        self.calibrations_made += 1;
        self.calibration
            .insert(person.id, (retargeter, self.calibrations_made));
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
