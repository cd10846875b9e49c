//! Retarget: ARKit-52 expression weights and head pose → an avatar's morph targets and head node.
//!
//! Targets are matched by name: ARKit names in either style (`eyeBlinkLeft`, `eyeBlink_L`,
//! `EyeBlinkLeft`), VRM 1.0 expression presets (aa, ih, ou, ee, oh, blink, happy, …) and VRM 0.x
//! presets (a, i, u, e, o, joy, sorrow, fun, blink_l, …). A user mapping file (TOML) overrides or
//! adds targets with gain, offset, curve, clamp and combinations of several sources. A per-person
//! neutral calibration makes the current face the zero point.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use glam::{Mat3, Quat};
use serde::Deserialize;

/// The 52 ARKit blendshapes (Apple's order). Our networks estimate all but `tongueOut`.
pub const ARKIT_52: [&str; 52] = [
    "eyeBlinkLeft",
    "eyeLookDownLeft",
    "eyeLookInLeft",
    "eyeLookOutLeft",
    "eyeLookUpLeft",
    "eyeSquintLeft",
    "eyeWideLeft",
    "eyeBlinkRight",
    "eyeLookDownRight",
    "eyeLookInRight",
    "eyeLookOutRight",
    "eyeLookUpRight",
    "eyeSquintRight",
    "eyeWideRight",
    "jawForward",
    "jawLeft",
    "jawRight",
    "jawOpen",
    "mouthClose",
    "mouthFunnel",
    "mouthPucker",
    "mouthLeft",
    "mouthRight",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "noseSneerLeft",
    "noseSneerRight",
    "tongueOut",
];

/// ARKit-52 weights (in [`ARKIT_52`] order) from the networks' 51 (in their output order).
pub fn arkit_weights(network: &[f32]) -> [f32; 52] {
    let mut out = [0f32; 52];
    for (name, value) in crate::vision::BLENDSHAPE_NAMES.iter().zip(network) {
        if let Some(i) = arkit_index(name) {
            out[i] = *value;
        }
    }
    out
}

fn arkit_index(name: &str) -> Option<usize> {
    ARKIT_52.iter().position(|n| *n == name)
}

/// Lower-case with separators dropped and `_L` / `_R` / `.L` suffixes spelled out.
fn normalize(name: &str) -> String {
    let lower = name.trim().to_lowercase();
    let (stem, side) = if let Some(s) = lower.strip_suffix("_l").or(lower.strip_suffix(".l")) {
        (s.to_string(), "left")
    } else if let Some(s) = lower.strip_suffix("_r").or(lower.strip_suffix(".r")) {
        (s.to_string(), "right")
    } else {
        (lower.clone(), "")
    };
    let mut out: String = stem.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    out.push_str(side);
    out
}

/// How a rule shapes its combined input before gain and offset.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Curve {
    Linear,
    /// 3x² − 2x³: soft near 0 and 1.
    Smoothstep,
    #[serde(untagged)]
    Power {
        power: f32,
    },
}

impl Curve {
    fn apply(self, x: f32) -> f32 {
        let x = x.clamp(0.0, 1.0);
        match self {
            Curve::Linear => x,
            Curve::Smoothstep => x * x * (3.0 - 2.0 * x),
            Curve::Power { power } => x.powf(power.max(0.01)),
        }
    }
}

/// One avatar target driven by a weighted sum of ARKit channels.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub target: String,
    pub sources: Vec<(usize, f32)>,
    pub gain: f32,
    pub offset: f32,
    pub curve: Curve,
    pub clamp: (f32, f32),
}

impl Rule {
    fn simple(target: &str, sources: &[(&str, f32)]) -> Rule {
        Rule {
            target: target.to_string(),
            sources: sources
                .iter()
                .map(|(name, w)| (arkit_index(name).expect("known ARKit name"), *w))
                .collect(),
            gain: 1.0,
            offset: 0.0,
            curve: Curve::Linear,
            clamp: (0.0, 1.0),
        }
    }

    fn evaluate(&self, weights: &[f32; 52]) -> f32 {
        let x: f32 = self.sources.iter().map(|(i, w)| weights[*i] * w).sum();
        (self.curve.apply(x) * self.gain + self.offset).clamp(self.clamp.0, self.clamp.1)
    }
}

/// VRM 1.0 preset → ARKit sources (VRM 0.x names are aliases of these).
fn vrm_preset(normalized: &str) -> Option<Vec<(&'static str, f32)>> {
    let preset = match normalized {
        "a" => "aa",
        "i" => "ih",
        "u" => "ou",
        "e" => "ee",
        "o" => "oh",
        "joy" => "happy",
        "sorrow" => "sad",
        "fun" => "relaxed",
        "blinkl" | "blinkleft" => "blinkleft",
        "blinkr" | "blinkright" => "blinkright",
        other => other,
    };
    Some(match preset {
        "aa" => vec![("jawOpen", 1.0)],
        "ih" => vec![("mouthStretchLeft", 0.5), ("mouthStretchRight", 0.5)],
        "ou" => vec![("mouthPucker", 1.0)],
        "ee" => vec![
            ("mouthSmileLeft", 0.35),
            ("mouthSmileRight", 0.35),
            ("mouthStretchLeft", 0.15),
            ("mouthStretchRight", 0.15),
        ],
        "oh" => vec![("mouthFunnel", 1.0)],
        "blink" => vec![("eyeBlinkLeft", 0.5), ("eyeBlinkRight", 0.5)],
        "blinkleft" => vec![("eyeBlinkLeft", 1.0)],
        "blinkright" => vec![("eyeBlinkRight", 1.0)],
        "happy" => vec![("mouthSmileLeft", 0.5), ("mouthSmileRight", 0.5)],
        "angry" => vec![("browDownLeft", 0.5), ("browDownRight", 0.5)],
        "sad" => vec![
            ("mouthFrownLeft", 0.35),
            ("mouthFrownRight", 0.35),
            ("browInnerUp", 0.3),
        ],
        "relaxed" => vec![
            ("eyeSquintLeft", 0.25),
            ("eyeSquintRight", 0.25),
            ("mouthSmileLeft", 0.25),
            ("mouthSmileRight", 0.25),
        ],
        "surprised" => vec![
            ("browInnerUp", 0.4),
            ("eyeWideLeft", 0.3),
            ("eyeWideRight", 0.3),
        ],
        "lookup" => vec![("eyeLookUpLeft", 0.5), ("eyeLookUpRight", 0.5)],
        "lookdown" => vec![("eyeLookDownLeft", 0.5), ("eyeLookDownRight", 0.5)],
        // Looking to the avatar's left: the left eye looks out, the right eye looks in.
        "lookleft" => vec![("eyeLookOutLeft", 0.5), ("eyeLookInRight", 0.5)],
        "lookright" => vec![("eyeLookInLeft", 0.5), ("eyeLookOutRight", 0.5)],
        _ => return None,
    })
}

/// A rule as a user mapping file writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    /// ARKit name → weight.
    sources: HashMap<String, f32>,
    #[serde(default = "unit")]
    gain: f32,
    #[serde(default)]
    offset: f32,
    #[serde(default = "linear")]
    curve: Curve,
    #[serde(default = "unit_range")]
    clamp: (f32, f32),
}

fn unit() -> f32 {
    1.0
}
fn linear() -> Curve {
    Curve::Linear
}
fn unit_range() -> (f32, f32) {
    (0.0, 1.0)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    #[serde(default)]
    targets: HashMap<String, RuleFile>,
}

/// Maps one person's expression onto one avatar's morph targets.
#[derive(Clone, Debug, Default)]
pub struct Retargeter {
    pub rules: Vec<Rule>,
    /// The calibrated neutral face (ARKit-52 order), if any.
    neutral: Option<[f32; 52]>,
}

impl Retargeter {
    /// Rules for every target name that matches an ARKit name or a VRM preset; others are left
    /// alone (returned as unmapped).
    pub fn by_name(targets: &[String]) -> (Retargeter, Vec<String>) {
        let arkit: HashMap<String, &str> = ARKIT_52.iter().map(|n| (normalize(n), *n)).collect();
        let mut rules = Vec::new();
        let mut unmapped = Vec::new();
        for target in targets {
            let key = normalize(target);
            if let Some(name) = arkit.get(&key) {
                rules.push(Rule::simple(target, &[(name, 1.0)]));
            } else if let Some(sources) = vrm_preset(&key) {
                rules.push(Rule::simple(target, &sources));
            } else {
                unmapped.push(target.clone());
            }
        }
        (
            Retargeter {
                rules,
                neutral: None,
            },
            unmapped,
        )
    }

    /// Applies a user mapping file (TOML): its targets replace or add to the rules.
    ///
    /// ```toml
    /// [targets.MouthOpen]
    /// sources = { jawOpen = 0.8, mouthFunnel = 0.2 }
    /// gain = 1.2
    /// curve = "smoothstep"      # or "linear", or { power = 1.5 }
    /// clamp = [0.0, 1.0]
    /// ```
    pub fn apply_mapping_text(&mut self, text: &str, origin: &str) -> Result<()> {
        let file: MappingFile =
            toml::from_str(text).with_context(|| format!("{origin}: not a valid mapping file"))?;
        for (target, rule) in file.targets {
            let mut sources = Vec::new();
            for (name, weight) in &rule.sources {
                let index = ARKIT_52
                    .iter()
                    .position(|n| normalize(n) == normalize(name))
                    .with_context(|| {
                        format!("{origin}: target {target:?}: {name:?} is not an ARKit blendshape")
                    })?;
                sources.push((index, *weight));
            }
            sources.sort_by_key(|s| s.0);
            if rule.clamp.0 > rule.clamp.1 {
                anyhow::bail!(
                    "{origin}: target {target:?}: clamp {:?} is empty",
                    rule.clamp
                );
            }
            let new = Rule {
                target: target.clone(),
                sources,
                gain: rule.gain,
                offset: rule.offset,
                curve: rule.curve,
                clamp: rule.clamp,
            };
            match self.rules.iter_mut().find(|r| r.target == target) {
                Some(existing) => *existing = new,
                None => self.rules.push(new),
            }
        }
        Ok(())
    }

    pub fn apply_mapping_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        self.apply_mapping_text(&text, &path.display().to_string())
    }

    /// The current face becomes neutral: from now on weights are measured from it.
    pub fn calibrate_neutral(&mut self, current: &[f32; 52]) {
        self.neutral = Some(*current);
    }

    /// The calibrated neutral face, if any.
    pub fn neutral(&self) -> Option<[f32; 52]> {
        self.neutral
    }

    pub fn clear_calibration(&mut self) {
        self.neutral = None;
    }

    /// Target weights (in rule order) for ARKit-52 input.
    pub fn apply(&self, weights: &[f32; 52]) -> Vec<(String, f32)> {
        let mut adjusted = *weights;
        if let Some(neutral) = &self.neutral {
            for (w, n) in adjusted.iter_mut().zip(neutral) {
                // Rescale so the neutral value maps to 0 and full activation still reaches 1.
                *w = ((*w - n) / (1.0 - n).max(1e-3)).clamp(0.0, 1.0);
            }
        }
        self.rules
            .iter()
            .map(|r| (r.target.clone(), r.evaluate(&adjusted)))
            .collect()
    }
}

/// The avatar's head rotation for a camera-space head rotation. Avatars face +z (glTF), the
/// camera looks down −z at the person: turning the canonical face (which faces +z) by `rotation`
/// already reads as the avatar turning the same way. With `mirror`, left and right swap, as a
/// mirror image (what people expect when they watch themselves).
/// Eye gaze from the eyeLook weights: per eye (yaw, pitch) in radians, in the head's convention
/// (yaw > 0 towards the image right — the subject's left — pitch > 0 down), not mirrored.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EyeGaze {
    pub left: [f32; 2],
    pub right: [f32; 2],
}

/// How far an eye turns at eyeLook weight 1: ARKit's eye blendshapes reach 1 near 30° to the
/// side and 25° up or down, the factors ARKit-to-bone converters use.
pub const EYE_YAW_AT_FULL: f32 = 30.0 * std::f32::consts::PI / 180.0;
pub const EYE_PITCH_AT_FULL: f32 = 25.0 * std::f32::consts::PI / 180.0;

impl EyeGaze {
    /// The gaze the 52 ARKit weights describe (calibrated weights give calibrated gaze).
    pub fn from_arkit(w: &[f32; 52]) -> EyeGaze {
        let at = |name: &str| arkit_index(name).map_or(0.0, |i| w[i]);
        // The left eye looks to the subject's left when it looks out; the right eye when it
        // looks in.
        let left_yaw = at("eyeLookOutLeft") - at("eyeLookInLeft");
        let right_yaw = at("eyeLookInRight") - at("eyeLookOutRight");
        let pitch =
            |side: &str| at(&format!("eyeLookDown{side}")) - at(&format!("eyeLookUp{side}"));
        EyeGaze {
            left: [
                left_yaw * EYE_YAW_AT_FULL,
                pitch("Left") * EYE_PITCH_AT_FULL,
            ],
            right: [
                right_yaw * EYE_YAW_AT_FULL,
                pitch("Right") * EYE_PITCH_AT_FULL,
            ],
        }
    }

    /// An eye's rotation (yaw about the up axis, then pitch about the sideways axis), in the
    /// camera-facing frame of the head rotations (x subject's left, y up, z out of the face).
    pub fn rotation([yaw, pitch]: [f32; 2]) -> Quat {
        // Looking down turns the eye's forward axis (+z) towards −y: a positive turn about +x.
        Quat::from_rotation_y(yaw) * Quat::from_rotation_x(pitch)
    }

    /// The unit direction an eye looks in (+z straight ahead).
    pub fn direction(angles: [f32; 2]) -> glam::Vec3 {
        Self::rotation(angles) * glam::Vec3::Z
    }

    /// Angle between two gazes, degrees: the mean over both eyes of the angle between their
    /// directions.
    pub fn error_degrees(&self, other: &EyeGaze) -> f32 {
        let angle = |a: [f32; 2], b: [f32; 2]| {
            Self::direction(a)
                .angle_between(Self::direction(b))
                .to_degrees()
        };
        (angle(self.left, other.left) + angle(self.right, other.right)) / 2.0
    }
}

pub fn head_rotation(rotation: &Mat3, mirror: bool) -> Quat {
    let q = Quat::from_mat3(rotation).normalize();
    if mirror {
        // Reflect through the x = 0 plane: yaw and roll change sign, pitch stays.
        Quat::from_xyzw(q.x, -q.y, -q.z, q.w)
    } else {
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arkit_names_match_in_every_common_style() {
        let (retargeter, unmapped) = Retargeter::by_name(&names(&[
            "eyeBlinkLeft",
            "eyeBlink_L",
            "EyeBlinkLeft",
            "JawOpen",
            "hat",
        ]));
        assert_eq!(unmapped, vec!["hat"]);
        let mut w = [0f32; 52];
        w[arkit_index("eyeBlinkLeft").unwrap()] = 0.8;
        w[arkit_index("jawOpen").unwrap()] = 0.4;
        let out = retargeter.apply(&w);
        assert_eq!(out[0], ("eyeBlinkLeft".into(), 0.8));
        assert_eq!(out[1], ("eyeBlink_L".into(), 0.8));
        assert_eq!(out[2], ("EyeBlinkLeft".into(), 0.8));
        assert_eq!(out[3], ("JawOpen".into(), 0.4));
    }

    #[test]
    fn vrm_presets_of_both_versions_are_driven() {
        let targets = names(&[
            "aa",
            "A",
            "blink",
            "Blink_L",
            "blinkRight",
            "happy",
            "Joy",
            "sorrow",
            "lookLeft",
        ]);
        let (retargeter, unmapped) = Retargeter::by_name(&targets);
        assert!(unmapped.is_empty(), "{unmapped:?}");
        let mut w = [0f32; 52];
        w[arkit_index("jawOpen").unwrap()] = 0.6;
        w[arkit_index("eyeBlinkLeft").unwrap()] = 1.0;
        w[arkit_index("mouthSmileLeft").unwrap()] = 0.8;
        w[arkit_index("mouthSmileRight").unwrap()] = 0.6;
        let out: HashMap<String, f32> = retargeter.apply(&w).into_iter().collect();
        assert_eq!(out["aa"], 0.6);
        assert_eq!(out["A"], 0.6);
        assert_eq!(out["blink"], 0.5);
        assert_eq!(out["Blink_L"], 1.0);
        assert_eq!(out["blinkRight"], 0.0);
        assert!((out["happy"] - 0.7).abs() < 1e-6 && (out["Joy"] - 0.7).abs() < 1e-6);
    }

    #[test]
    fn mapping_file_sets_gain_curve_clamp_and_combinations() {
        let (mut retargeter, _) = Retargeter::by_name(&names(&["jawOpen"]));
        retargeter
            .apply_mapping_text(
                r#"
                [targets.jawOpen]
                sources = { jawOpen = 1.0 }
                gain = 2.0
                clamp = [0.0, 0.9]
                [targets.MouthO]
                sources = { mouthFunnel = 0.5, mouthPucker = 0.5 }
                curve = { power = 2.0 }
                "#,
                "test.toml",
            )
            .unwrap();
        let mut w = [0f32; 52];
        w[arkit_index("jawOpen").unwrap()] = 0.3;
        w[arkit_index("mouthFunnel").unwrap()] = 0.4;
        w[arkit_index("mouthPucker").unwrap()] = 0.8;
        let out: HashMap<String, f32> = retargeter.apply(&w).into_iter().collect();
        assert!((out["jawOpen"] - 0.6).abs() < 1e-6);
        assert!((out["MouthO"] - 0.36).abs() < 1e-6);
        w[arkit_index("jawOpen").unwrap()] = 0.8;
        assert_eq!(retargeter.apply(&w)[0].1, 0.9, "clamped");

        let err = retargeter
            .apply_mapping_text("[targets.x]\nsources = { smile = 1.0 }\n", "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml") && err.contains("smile"), "{err}");
        let err = retargeter
            .apply_mapping_text("[targets.x]\nsourcez = 1\n", "typo.toml")
            .unwrap_err();
        assert!(format!("{err:#}").contains("typo.toml"));
    }

    #[test]
    fn neutral_calibration_zeroes_the_resting_face() {
        let (mut retargeter, _) = Retargeter::by_name(&names(&["mouthSmileLeft"]));
        let mut rest = [0f32; 52];
        let smile = arkit_index("mouthSmileLeft").unwrap();
        rest[smile] = 0.3;
        retargeter.calibrate_neutral(&rest);
        assert_eq!(retargeter.apply(&rest)[0].1, 0.0);
        let mut full = rest;
        full[smile] = 1.0;
        assert!((retargeter.apply(&full)[0].1 - 1.0).abs() < 1e-6);
        full[smile] = 0.65;
        assert!((retargeter.apply(&full)[0].1 - 0.5).abs() < 1e-6);
    }

    #[test]
    fn network_weights_land_on_their_arkit_names_and_tongue_stays_zero() {
        let network: Vec<f32> = (0..51).map(|i| i as f32 / 100.0).collect();
        let w = arkit_weights(&network);
        let jaw = crate::vision::BLENDSHAPE_NAMES
            .iter()
            .position(|n| *n == "jawOpen")
            .unwrap();
        assert_eq!(w[arkit_index("jawOpen").unwrap()], network[jaw]);
        assert_eq!(w[arkit_index("tongueOut").unwrap()], 0.0);
    }

    #[test]
    fn mirrored_head_turns_the_other_way() {
        let yaw = Mat3::from_rotation_y(0.5);
        let q = head_rotation(&yaw, false);
        assert!(q.angle_between(Quat::from_rotation_y(0.5)) < 1e-5);
        let m = head_rotation(&yaw, true);
        assert!(m.angle_between(Quat::from_rotation_y(-0.5)) < 1e-5);
        let pitch = Mat3::from_rotation_x(0.3);
        assert!(head_rotation(&pitch, true).angle_between(Quat::from_rotation_x(0.3)) < 1e-5);
    }

    #[test]
    fn gaze_follows_the_eye_look_weights() {
        let mut w = [0f32; 52];
        let set = |w: &mut [f32; 52], name: &str, v: f32| {
            w[ARKIT_52.iter().position(|n| *n == name).unwrap()] = v;
        };
        assert_eq!(EyeGaze::from_arkit(&w), EyeGaze::default());
        // both eyes to the subject's left: the left looks out, the right looks in
        set(&mut w, "eyeLookOutLeft", 1.0);
        set(&mut w, "eyeLookInRight", 0.5);
        set(&mut w, "eyeLookDownLeft", 1.0);
        let gaze = EyeGaze::from_arkit(&w);
        assert!((gaze.left[0] - EYE_YAW_AT_FULL).abs() < 1e-6);
        assert!((gaze.right[0] - 0.5 * EYE_YAW_AT_FULL).abs() < 1e-6);
        assert!((gaze.left[1] - EYE_PITCH_AT_FULL).abs() < 1e-6 && gaze.right[1] == 0.0);
        // looking left turns +z towards +x, looking down towards −y
        let d = EyeGaze::direction(gaze.left);
        assert!(d.x > 0.4 && d.y < -0.3 && d.z > 0.0, "{d}");
        // the error is the angle between the directions
        let straight = EyeGaze::default();
        let err = straight.error_degrees(&EyeGaze {
            left: [10f32.to_radians(), 0.0],
            right: [0.0, 0.0],
        });
        assert!((err - 5.0).abs() < 1e-3, "{err}");
    }
}
