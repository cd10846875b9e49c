//! Live Link Face CSV: the take format Epic's Live Link Face app exports and Unreal, Blender and
//! Unity importers read. 52 ARKit weights in the app's column order (note JawRight before
//! JawLeft and MouthRight before MouthLeft), then head and eye rotations.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The header row, byte for byte as Live Link Face writes it.
pub const HEADER: &str = "Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,\
EyeLookUpLeft,EyeSquintLeft,EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,EyeLookOutRight,\
EyeLookUpRight,EyeSquintRight,EyeWideRight,JawForward,JawRight,JawLeft,JawOpen,MouthClose,MouthFunnel,\
MouthPucker,MouthRight,MouthLeft,MouthSmileLeft,MouthSmileRight,MouthFrownLeft,MouthFrownRight,\
MouthDimpleLeft,MouthDimpleRight,MouthStretchLeft,MouthStretchRight,MouthRollLower,MouthRollUpper,\
MouthShrugLower,MouthShrugUpper,MouthPressLeft,MouthPressRight,MouthLowerDownLeft,MouthLowerDownRight,\
MouthUpperUpLeft,MouthUpperUpRight,BrowDownLeft,BrowDownRight,BrowInnerUp,BrowOuterUpLeft,BrowOuterUpRight,\
CheekPuff,CheekSquintLeft,CheekSquintRight,NoseSneerLeft,NoseSneerRight,TongueOut,HeadYaw,HeadPitch,HeadRoll,\
LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll";

/// Values per row after the timecode: 52 blendshapes + 9 rotations.
pub const VALUE_COUNT: usize = 61;

/// `HH:MM:SS:FF.fff`: frame number `FF` at `fps` (whole frames per second, as Live Link Face's
/// 30 / 60) and the thousandths of a frame after the dot.
pub fn timecode(seconds: f64, fps: f64) -> String {
    let fps = fps.round().max(1.0) as u64;
    // Count in thousandths of a frame so rounding can carry into frames and seconds.
    let ticks = (seconds.max(0.0) * fps as f64 * 1000.0).round() as u64;
    let per_second = fps * 1000;
    let total = ticks / per_second;
    let within = ticks % per_second;
    format!(
        "{:02}:{:02}:{:02}:{:02}.{:03}",
        total / 3600,
        (total / 60) % 60,
        total % 60,
        within / 1000,
        within % 1000
    )
}

/// The 52 columns' ARKit names in file order (camelCase).
pub fn column_names() -> Vec<String> {
    HEADER
        .split(',')
        .skip(2)
        .take(52)
        .map(|pascal| {
            let mut chars = pascal.chars();
            let first = chars
                .next()
                .map(|c| c.to_ascii_lowercase())
                .unwrap_or_default();
            std::iter::once(first).chain(chars).collect()
        })
        .collect()
}

/// Writes one person's take, flushed after every row so a crash loses at most the row in flight.
pub struct LiveLinkWriter {
    path: PathBuf,
    file: BufWriter<File>,
    /// For each file column, the index into ARKit-52 order.
    order: Vec<usize>,
    pub fps: f64,
}

impl LiveLinkWriter {
    pub fn create(path: &Path, fps: f64) -> Result<LiveLinkWriter> {
        let file =
            File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
        let mut writer = LiveLinkWriter::on(path, file, fps);
        writeln!(writer.file, "{HEADER}")
            .and_then(|_| writer.file.flush())
            .with_context(|| writer.error())?;
        Ok(writer)
    }

    /// Adds rows to a file [`LiveLinkWriter::create`] started (its header is there already).
    pub fn append(path: &Path, fps: f64) -> Result<LiveLinkWriter> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open to add rows", path.display()))?;
        Ok(LiveLinkWriter::on(path, file, fps))
    }

    fn on(path: &Path, file: File, fps: f64) -> LiveLinkWriter {
        LiveLinkWriter {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            order: column_names()
                .iter()
                .map(|n| {
                    crate::retarget::ARKIT_52
                        .iter()
                        .position(|a| a == n)
                        .expect("every Live Link column is an ARKit name")
                })
                .collect(),
            fps,
        }
    }

    fn error(&self) -> String {
        format!(
            "{}: write failed (disk full or folder not writable?)",
            self.path.display()
        )
    }

    /// One row: ARKit-52 weights, head yaw / pitch / roll and each eye's yaw / pitch / roll in
    /// radians (the eyes from the eyeLook weights, [`crate::retarget::EyeGaze`]; no roll).
    pub fn write(&mut self, seconds: f64, arkit: &[f32; 52], head_ypr: [f32; 3]) -> Result<()> {
        let mut row = timecode(seconds, self.fps);
        row.push_str(&format!(",{VALUE_COUNT}"));
        for &i in &self.order {
            row.push_str(&format!(",{:.6}", arkit[i]));
        }
        let gaze = crate::retarget::EyeGaze::from_arkit(arkit);
        let [ly, lp] = gaze.left;
        let [ry, rp] = gaze.right;
        for v in head_ypr.iter().chain(&[ly, lp, 0.0, ry, rp, 0.0]) {
            row.push_str(&format!(",{v:.6}"));
        }
        writeln!(self.file, "{row}")
            .and_then(|_| self.file.flush())
            .with_context(|| self.error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_has_61_values_in_live_link_order() {
        let columns: Vec<&str> = HEADER.split(',').collect();
        assert_eq!(columns.len(), 2 + VALUE_COUNT);
        let at = |name: &str| columns.iter().position(|c| *c == name).unwrap();
        assert!(at("JawRight") + 1 == at("JawLeft"));
        assert!(at("MouthRight") + 1 == at("MouthLeft"));
        assert_eq!(columns[53], "TongueOut");
        assert_eq!(columns.last(), Some(&"RightEyeRoll"));
        let names = column_names();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 52, "each ARKit shape once");
    }

    #[test]
    fn timecodes_count_frames_and_fractions() {
        assert_eq!(timecode(0.0, 60.0), "00:00:00:00.000");
        assert_eq!(timecode(3723.5, 60.0), "01:02:03:30.000");
        assert_eq!(timecode(1.0 + 1.5 / 60.0, 60.0), "00:00:01:01.500");
    }

    #[test]
    fn rows_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("person1.csv");
        let mut writer = LiveLinkWriter::create(&path, 60.0).unwrap();
        let mut w = [0f32; 52];
        let jaw_left = crate::retarget::ARKIT_52
            .iter()
            .position(|n| *n == "jawLeft")
            .unwrap();
        w[jaw_left] = 0.25;
        let look_in_right = crate::retarget::ARKIT_52
            .iter()
            .position(|n| *n == "eyeLookInRight")
            .unwrap();
        w[look_in_right] = 0.5;
        writer.write(0.5, &w, [0.1, -0.2, 0.3]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], HEADER);
        let cells: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(cells.len(), 2 + VALUE_COUNT);
        assert_eq!(cells[0], "00:00:00:30.000");
        assert_eq!(cells[1], "61");
        let column = HEADER.split(',').position(|c| c == "JawLeft").unwrap();
        assert_eq!(cells[column], "0.250000");
        let yaw = HEADER.split(',').position(|c| c == "HeadYaw").unwrap();
        assert_eq!(cells[yaw], "0.100000");
        // the right eye looks half-way in (to the subject's left): 15 degrees of yaw
        let eye = HEADER.split(',').position(|c| c == "RightEyeYaw").unwrap();
        let expected = 0.5 * crate::retarget::EYE_YAW_AT_FULL;
        assert_eq!(cells[eye], format!("{expected:.6}"));
        let left = HEADER.split(',').position(|c| c == "LeftEyeYaw").unwrap();
        assert_eq!(cells[left], "0.000000");
    }
}
