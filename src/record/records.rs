//! The per-frame records of `faces.jsonl` (`track`) and `session.jsonl` (takes): one
//! [`FrameRecord`] per line, one [`PersonRecord`] per tracked person. Written and read through
//! these types only, so a renamed or mistyped field is an error naming the line and the field,
//! never a silent zero.

use std::fmt;

use anyhow::{Context, Result};
use glam::{Mat3, Vec2};
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::retarget::{arkit_weights, ARKIT_52};
use crate::track::{Person, TrackState};
use crate::vision::{FaceObservation, BLENDSHAPE_NAMES};

/// The layout version this build writes. Files written before records had a version carry none
/// and read as version 0, which has the same fields.
pub const FORMAT_VERSION: u32 = 1;

/// One frame: where and when, and everyone tracked in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameRecord {
    #[serde(default)]
    pub version: u32,
    /// The capture's frame number.
    pub frame: u64,
    /// Seconds since capture started.
    pub time_s: f64,
    pub width: u32,
    pub height: u32,
    pub people: Vec<PersonRecord>,
}

/// One person in one frame: the network's raw output and the smoothed, fitted state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersonRecord {
    pub id: u32,
    /// The name the user gave this person, if any (absent in files from before names, and for
    /// people never named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub state: TrackState,
    /// Tight box of the raw landmarks: x0, y0, x1, y1, frame pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub score: f32,
    /// The 68 raw landmarks, frame pixels.
    pub landmarks: Landmarks,
    pub landmarks_smoothed: Landmarks,
    pub yaw_pitch_roll_deg: [f32; 3],
    /// Row-major 3×3, camera space (x right, y up, looking down −z), like MediaPipe's matrix;
    /// absent when no pose was fitted.
    pub rotation: Option<[f32; 9]>,
    pub translation_cm: Option<[f32; 3]>,
    pub fit_rms_px: f32,
    /// The network's 51 blendshapes, by name.
    pub blendshapes: Blendshapes,
    pub blendshapes_smoothed: Blendshapes,
    /// What an avatar receives: the 52 ARKit weights after the expression refinements
    /// (tongueOut is not estimated and stays 0), by ARKit name.
    pub arkit: Arkit,
}

impl FrameRecord {
    pub fn new(frame: &crate::capture::Frame, people: &[Person]) -> FrameRecord {
        FrameRecord {
            version: FORMAT_VERSION,
            frame: frame.seq,
            time_s: frame.timestamp.as_secs_f64(),
            width: frame.width(),
            height: frame.height(),
            people: people.iter().map(PersonRecord::new).collect(),
        }
    }

    /// One line of a records file; errors name the field (`people[2].arkit.jawOpen`).
    pub fn parse(line: &str) -> Result<FrameRecord> {
        let record: FrameRecord =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(line))?;
        anyhow::ensure!(
            record.version <= FORMAT_VERSION,
            "version {} records come from a newer polyface (this one reads up to {FORMAT_VERSION})",
            record.version
        );
        Ok(record)
    }

    /// Every record of a file's text. A malformed line is an error naming it, except a torn
    /// last line (a crash while writing), which is left out with a warning.
    pub fn parse_all(text: &str, name: &str) -> Result<Vec<FrameRecord>> {
        let lines: Vec<(usize, &str)> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .collect();
        let mut records = Vec::with_capacity(lines.len());
        for (k, (number, line)) in lines.iter().enumerate() {
            match FrameRecord::parse(line) {
                Ok(record) => records.push(record),
                Err(e) if k + 1 == lines.len() && !text.ends_with('\n') => {
                    log::warn!(
                        "{name}:{}: a torn last line is left out ({e:#})",
                        number + 1
                    );
                }
                Err(e) => return Err(e).with_context(|| format!("{name}:{}", number + 1)),
            }
        }
        Ok(records)
    }
}

impl PersonRecord {
    pub fn new(person: &Person) -> PersonRecord {
        let face = &person.raw;
        let smoothed = &person.smoothed;
        let (yaw, pitch, roll) = smoothed.yaw_pitch_roll();
        PersonRecord {
            id: person.id,
            name: person.name.clone(),
            state: person.state,
            bbox: [face.bbox.0.x, face.bbox.0.y, face.bbox.1.x, face.bbox.1.y],
            score: face.score,
            landmarks: Landmarks::new(&face.landmarks),
            landmarks_smoothed: Landmarks::new(&smoothed.landmarks),
            yaw_pitch_roll_deg: [yaw, pitch, roll],
            rotation: person.pose.map(|p| p.rotation.transpose().to_cols_array()),
            translation_cm: person.pose.map(|p| p.translation.to_array()),
            fit_rms_px: person.fit_rms_px,
            blendshapes: Blendshapes(face.blendshapes.clone()),
            blendshapes_smoothed: Blendshapes(smoothed.blendshapes.clone()),
            arkit: Arkit(arkit_weights(&smoothed.blendshapes).to_vec()),
        }
    }

    /// The head rotation the yaw / pitch / roll stand for (R = Rz(roll) · Ry(yaw) · Rx(pitch),
    /// the convention of [`FaceObservation::yaw_pitch_roll`]).
    pub fn head_rotation(&self) -> Mat3 {
        let [yaw, pitch, roll] = self.yaw_pitch_roll_deg.map(f32::to_radians);
        Mat3::from_rotation_z(roll) * Mat3::from_rotation_y(yaw) * Mat3::from_rotation_x(pitch)
    }

    /// The smoothed face as an observation (what playback hands the tracker again).
    pub fn smoothed_observation(&self) -> FaceObservation {
        let landmarks = self.landmarks_smoothed.points();
        let bbox = crate::vision::tight_box(&landmarks).unwrap_or((Vec2::ZERO, Vec2::ZERO));
        FaceObservation {
            bbox,
            score: self.score,
            landmarks,
            rotation: self.head_rotation(),
            blendshapes: self.blendshapes_smoothed.0.clone(),
        }
    }
}

/// 68 points as `[x, y]` pairs; any other count is an error.
#[derive(Clone, Debug, PartialEq)]
pub struct Landmarks(pub Vec<[f32; 2]>);

impl Landmarks {
    fn new(points: &[Vec2]) -> Landmarks {
        Landmarks(points.iter().map(|p| [p.x, p.y]).collect())
    }

    pub fn points(&self) -> Vec<Vec2> {
        self.0.iter().map(|&[x, y]| Vec2::new(x, y)).collect()
    }
}

impl Serialize for Landmarks {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Landmarks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let points = Vec::<[f32; 2]>::deserialize(deserializer)?;
        if points.len() != 68 {
            return Err(de::Error::invalid_length(points.len(), &"68 points"));
        }
        Ok(Landmarks(points))
    }
}

/// Weights stored as a map from name to value, in `names` order; reading wants every name.
fn serialize_named<S: Serializer>(
    names: &[&str],
    values: &[f32],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(names.len()))?;
    for (name, value) in names.iter().zip(values) {
        map.serialize_entry(name, value)?;
    }
    map.end()
}

struct NamedVisitor(&'static [&'static str]);

impl<'de> Visitor<'de> for NamedVisitor {
    type Value = Vec<f32>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a map of the {} weights by name", self.0.len())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<f32>, A::Error> {
        let mut values = vec![None; self.0.len()];
        while let Some((name, value)) = map.next_entry::<String, f32>()? {
            let Some(i) = self.0.iter().position(|n| *n == name) else {
                return Err(de::Error::unknown_field(&name, self.0));
            };
            values[i] = Some(value);
        }
        values
            .into_iter()
            .zip(self.0)
            .map(|(v, name)| v.ok_or_else(|| de::Error::missing_field(name)))
            .collect()
    }
}

macro_rules! named_weights {
    ($(#[$doc:meta])* $name:ident, $names:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name(pub Vec<f32>);

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serialize_named(&$names, &self.0, serializer)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_map(NamedVisitor(&$names)).map($name)
            }
        }
    };
}

named_weights!(
    /// The network's 51 blendshapes ([`BLENDSHAPE_NAMES`]).
    Blendshapes,
    BLENDSHAPE_NAMES
);
named_weights!(
    /// The 52 ARKit weights ([`ARKIT_52`]).
    Arkit,
    ARKIT_52
);

#[cfg(test)]
mod tests {
    use super::*;

    fn person_line(id: u32) -> serde_json::Value {
        let points: Vec<[f32; 2]> = (0..68).map(|i| [i as f32, 2.0 * i as f32]).collect();
        let named = |names: &[&str]| -> serde_json::Map<String, serde_json::Value> {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), serde_json::json!(i as f32 / 100.0)))
                .collect()
        };
        serde_json::json!({"id": id, "state": "confirmed", "box": [0.0, 0.0, 67.0, 134.0],
            "score": 0.9, "landmarks": points, "landmarks_smoothed": points,
            "yaw_pitch_roll_deg": [10.0, -5.0, 2.0], "rotation": null, "translation_cm": null,
            "fit_rms_px": 1.5, "blendshapes": named(&BLENDSHAPE_NAMES),
            "blendshapes_smoothed": named(&BLENDSHAPE_NAMES), "arkit": named(&ARKIT_52)})
    }

    #[test]
    fn records_round_trip_and_old_unversioned_lines_read() {
        // A line as takes were written before records had a version.
        let old = serde_json::json!({"frame": 3, "time_s": 0.1, "width": 640, "height": 480,
            "people": [person_line(1), person_line(2)]});
        let record = FrameRecord::parse(&old.to_string()).unwrap();
        assert_eq!((record.version, record.people.len()), (0, 2));
        assert_eq!(record.people[1].blendshapes_smoothed.0[24], 0.24);
        let again = FrameRecord::parse(&serde_json::to_string(&record).unwrap()).unwrap();
        assert_eq!(again, record);
        // lines from before names read as nobody named; a name is written only when there is one
        assert_eq!(record.people[0].name, None);
        assert!(!serde_json::to_string(&record).unwrap().contains("\"name\""));
        let mut named = record.clone();
        named.people[1].name = Some("Ana".into());
        let line = serde_json::to_string(&named).unwrap();
        assert!(line.contains("\"name\":\"Ana\""), "{line}");
        assert_eq!(FrameRecord::parse(&line).unwrap(), named);
        let face = record.people[0].smoothed_observation();
        assert_eq!(face.landmarks.len(), 68);
        let (yaw, pitch, roll) = face.yaw_pitch_roll();
        assert!(
            (yaw - 10.0).abs() < 1e-3 && (pitch + 5.0).abs() < 1e-3 && (roll - 2.0).abs() < 1e-3
        );
    }

    #[test]
    fn a_missing_or_mistyped_field_names_the_line_and_field() {
        let mut person = person_line(1);
        person["blendshapes_smoothed"]
            .as_object_mut()
            .unwrap()
            .remove("jawOpen");
        let frame = |p: serde_json::Value| {
            serde_json::json!({"version": 1, "frame": 0, "time_s": 0.0, "width": 640,
                "height": 480, "people": [p]})
            .to_string()
        };
        let text = format!("{}\n{}\n", frame(person_line(1)), frame(person));
        let err = format!(
            "{:#}",
            FrameRecord::parse_all(&text, "s.jsonl").unwrap_err()
        );
        assert!(
            err.contains("s.jsonl:2")
                && err.contains("people[0].blendshapes_smoothed")
                && err.contains("jawOpen"),
            "{err}"
        );
        let mut person = person_line(1);
        person["score"] = serde_json::json!("high");
        let err = format!("{:#}", FrameRecord::parse(&frame(person)).unwrap_err());
        assert!(err.contains("people[0].score"), "{err}");
        let mut person = person_line(1);
        person["landmarks"] = serde_json::json!([[1.0, 2.0]]);
        let err = format!("{:#}", FrameRecord::parse(&frame(person)).unwrap_err());
        assert!(
            err.contains("people[0].landmarks") && err.contains("68"),
            "{err}"
        );
        let newer = frame(person_line(1)).replace("\"version\":1", "\"version\":9");
        assert!(FrameRecord::parse(&newer)
            .unwrap_err()
            .to_string()
            .contains("newer"));
        // A torn last line (no newline after it) is left out; the same line inside is an error.
        let torn = format!("{}\n{{\"frame\": 1, \"ti", frame(person_line(1)));
        assert_eq!(FrameRecord::parse_all(&torn, "t").unwrap().len(), 1);
        assert!(FrameRecord::parse_all(&format!("{torn}\n"), "t").is_err());
    }
}
