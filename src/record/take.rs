//! A recorded take in a folder: `session.jsonl` (every frame, every person, flushed per frame),
//! `personN.csv` (Live Link Face, flushed per row) and, at stop, `personN.glb`: a default
//! character with one animation (the 52 ARKit morph weights and the head rotation, keyed at
//! capture time). The glb files are built only from what `session.jsonl` holds, so
//! `polyface recover DIR` rebuilds them identically after a crash.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use glam::Quat;
use serde_json::json;

use super::{FrameRecord, LiveLinkWriter, PersonRecord};
use crate::retarget::{arkit_weights, head_rotation, ARKIT_52};
use crate::track::TrackState;

/// One animation key of one person.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    /// Seconds since the take's first frame.
    pub time_s: f64,
    /// ARKit-52 weights.
    pub weights: [f32; 52],
    /// Head rotation (the avatar's, unmirrored).
    pub head: Quat,
    /// Head yaw, pitch, roll in radians (the CSV's columns).
    pub ypr: [f32; 3],
}

impl Key {
    /// A key from one person of a frame record; `None` for people not confirmed (tentative /
    /// lost).
    pub fn from_person(time_s: f64, person: &PersonRecord) -> Option<(u32, Key)> {
        if person.state != TrackState::Confirmed {
            return None;
        }
        let [yaw, pitch, roll] = person.yaw_pitch_roll_deg.map(f32::to_radians);
        Some((
            person.id,
            Key {
                time_s,
                weights: arkit_weights(&person.blendshapes_smoothed.0),
                head: head_rotation(&person.head_rotation(), false),
                ypr: [yaw, pitch, roll],
            },
        ))
    }
}

/// A take being recorded.
pub struct Take {
    dir: PathBuf,
    session: BufWriter<File>,
    csv: BTreeMap<u32, LiveLinkWriter>,
    keys: BTreeMap<u32, Vec<Key>>,
    start: Option<f64>,
    failed: Option<String>,
}

fn write_error(path: &Path) -> String {
    format!(
        "{}: write failed (disk full or folder not writable?)",
        path.display()
    )
}

impl Take {
    pub fn create(dir: &Path) -> Result<Take> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the recording folder", dir.display()))?;
        let path = dir.join("session.jsonl");
        let file =
            File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?;
        Ok(Take {
            dir: dir.to_path_buf(),
            session: BufWriter::new(file),
            csv: BTreeMap::new(),
            keys: BTreeMap::new(),
            start: None,
            failed: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Why recording stopped (a write failed); nothing more is written after that, and what was
    /// written stays valid.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Records one frame. After a failure this does nothing and returns the first error again.
    pub fn write(&mut self, frame: &FrameRecord) -> Result<()> {
        if let Some(problem) = &self.failed {
            anyhow::bail!("{problem}");
        }
        let result = self.write_inner(frame);
        if let Err(e) = &result {
            self.failed = Some(format!("recording stopped: {e:#}"));
        }
        result
    }

    fn write_inner(&mut self, frame: &FrameRecord) -> Result<()> {
        let path = self.dir.join("session.jsonl");
        let line = serde_json::to_string(frame)?;
        writeln!(self.session, "{line}")
            .and_then(|_| self.session.flush())
            .with_context(|| write_error(&path))?;
        let time = frame.time_s;
        let start = *self.start.get_or_insert(time);
        for person in &frame.people {
            let Some((id, key)) = Key::from_person(time - start, person) else {
                continue;
            };
            let writer = match self.csv.entry(id) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let path = self.dir.join(format!("person{id}.csv"));
                    e.insert(LiveLinkWriter::create(&path, 60.0)?)
                }
            };
            writer.write(key.time_s, &key.weights, key.ypr)?;
            self.keys.entry(id).or_default().push(key);
        }
        Ok(())
    }

    /// Ends the take: writes `personN.glb` for everyone recorded. Returns their paths.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        let _ = self.session.flush();
        write_glbs(&self.dir, &self.keys)
    }
}

/// Rebuilds the `personN.glb` files of a take from its `session.jsonl` (after a crash, or to
/// redo them). A torn last line (the crash) is left out; any other bad line is an error.
pub fn recover(dir: &Path) -> Result<Vec<PathBuf>> {
    let path = dir.join("session.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read the take", path.display()))?;
    let frames = FrameRecord::parse_all(&text, &path.display().to_string())?;
    anyhow::ensure!(
        !frames.is_empty(),
        "{}: no frames in the take",
        path.display()
    );
    let mut keys: BTreeMap<u32, Vec<Key>> = BTreeMap::new();
    let start = frames[0].time_s;
    for frame in &frames {
        for person in &frame.people {
            if let Some((id, key)) = Key::from_person(frame.time_s - start, person) {
                keys.entry(id).or_default().push(key);
            }
        }
    }
    write_glbs(dir, &keys)
}

fn write_glbs(dir: &Path, keys: &BTreeMap<u32, Vec<Key>>) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (id, keys) in keys {
        let path = dir.join(format!("person{id}.glb"));
        let bytes = take_glb(*id, keys);
        let temporary = path.with_extension("glb.partial");
        std::fs::write(&temporary, bytes)
            .and_then(|_| std::fs::rename(&temporary, &path))
            .with_context(|| write_error(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// A person's take as a glb: the default character for their ID with one animation.
pub fn take_glb(id: u32, keys: &[Key]) -> Vec<u8> {
    let styles = crate::avatar::generate::styles();
    let style = &styles[(id as usize).saturating_sub(1) % styles.len()];
    let (mut b, head) = crate::avatar::generate::build(style);
    // strictly increasing times, as glTF requires
    let mut kept: Vec<&Key> = Vec::with_capacity(keys.len());
    for k in keys {
        if kept.last().is_none_or(|last| k.time_s > last.time_s) {
            kept.push(k);
        }
    }
    if kept.is_empty() {
        return b.to_glb();
    }
    let times: Vec<f32> = kept.iter().map(|k| k.time_s as f32).collect();
    let weights: Vec<f32> = kept.iter().flat_map(|k| k.weights).collect();
    let rotations: Vec<f32> = kept
        .iter()
        .flat_map(|k| k.head.normalize().to_array())
        .collect();
    let input = b.floats(&times, "SCALAR", true);
    let weights_out = b.floats(&weights, "SCALAR", false);
    let rotation_out = b.floats(&rotations, "VEC4", false);
    b.animations.push(json!({
        "name": format!("person{id}"),
        "samplers": [
            {"input": input, "output": weights_out, "interpolation": "LINEAR"},
            {"input": input, "output": rotation_out, "interpolation": "LINEAR"},
        ],
        "channels": [
            {"sampler": 0, "target": {"node": head, "path": "weights"}},
            {"sampler": 1, "target": {"node": head, "path": "rotation"}},
        ],
    }));
    debug_assert_eq!(ARKIT_52.len(), 52);
    b.to_glb()
}
