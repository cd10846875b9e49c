//! A recorded take in a folder: `session.jsonl` (every frame, every person, flushed per frame),
//! `personN.csv` (Live Link Face, flushed per row) and, at stop, `personN.glb`: a default
//! character with one animation (the 52 ARKit morph weights and the head rotation, keyed at
//! capture time). A person the user named gets `NAME.csv` / `NAME.glb` instead (the name made
//! safe for a file name; a person named during the take has their file renamed), and every
//! frame's record in `session.jsonl` carries the name beside the ID: that is the ID → name
//! mapping. The glb files are built only from what `session.jsonl` holds, so
//! `polyface recover DIR` rebuilds them identically after a crash. While recording, the
//! animation keys wait in `keys.bin` (compact, read back at stop and then removed), so memory
//! stays flat however long the take.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
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

/// Bytes of one key in the take's key file: person ID, time, 52 weights, head quaternion and
/// yaw / pitch / roll, little-endian.
const KEY_BYTES: usize = 4 + 8 + 4 * (52 + 4 + 3);

impl Key {
    fn encode(&self, id: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&self.time_s.to_le_bytes());
        for v in self
            .weights
            .iter()
            .chain(&self.head.to_array())
            .chain(&self.ypr)
        {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn decode(bytes: &[u8; KEY_BYTES]) -> (u32, Key) {
        let word = |i: usize| [bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]];
        let float = |k: usize| f32::from_le_bytes(word(12 + 4 * k));
        let mut time = [0u8; 8];
        time.copy_from_slice(&bytes[4..12]);
        (
            u32::from_le_bytes(word(0)),
            Key {
                time_s: f64::from_le_bytes(time),
                weights: std::array::from_fn(float),
                head: Quat::from_array(std::array::from_fn(|k| float(52 + k))),
                ypr: std::array::from_fn(|k| float(56 + k)),
            },
        )
    }
}

/// CSV files held open at once; a person who comes back after their file was closed gets
/// their rows appended to it.
const MAX_OPEN_CSV: usize = 16;

/// A take being recorded. Memory stays flat however long it runs: rows go straight to the
/// files, and the animation keys to `keys.bin` (read back at stop, then removed).
pub struct Take {
    dir: PathBuf,
    session: BufWriter<File>,
    keys: BufWriter<File>,
    /// Open CSV writers (by file stem) and the frame each last wrote.
    csv: BTreeMap<String, (LiveLinkWriter, u64)>,
    /// CSV files that exist (their stems).
    has_csv: BTreeSet<String>,
    /// Person ID → the last name they had in the take.
    names: BTreeMap<u32, String>,
    frames: u64,
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
        let create = |name: &str| {
            let path = dir.join(name);
            File::create(&path)
                .map(BufWriter::new)
                .with_context(|| format!("{}: cannot create", path.display()))
        };
        Ok(Take {
            dir: dir.to_path_buf(),
            session: create("session.jsonl")?,
            keys: create(KEYS_FILE)?,
            csv: BTreeMap::new(),
            has_csv: BTreeSet::new(),
            names: BTreeMap::new(),
            frames: 0,
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

    /// CSV files open now (at most [`MAX_OPEN_CSV`]).
    pub fn open_csv_files(&self) -> usize {
        self.csv.len()
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
        self.frames += 1;
        let time = frame.time_s;
        let start = *self.start.get_or_insert(time);
        let mut keys = Vec::new();
        for person in &frame.people {
            if let Some(name) = &person.name {
                if self.names.get(&person.id) != Some(name) {
                    self.named(person.id, name)?;
                }
            }
            let Some((id, key)) = Key::from_person(time - start, person) else {
                continue;
            };
            let stem = stem_of(id, &self.names);
            self.csv_writer(&stem)?
                .write(key.time_s, &key.weights, key.ypr)?;
            key.encode(id, &mut keys);
        }
        self.keys
            .write_all(&keys)
            .with_context(|| write_error(&self.dir.join(KEYS_FILE)))
    }

    /// Person `id` got `name`: their `personN.csv` becomes `NAME.csv` (unless that exists: then
    /// their rows go on in it and the earlier ones stay in `personN.csv`).
    fn named(&mut self, id: u32, name: &str) -> Result<()> {
        let old = stem_of(id, &self.names);
        self.names.insert(id, name.to_string());
        let new = stem_of(id, &self.names);
        if old != new && self.has_csv.contains(&old) && !self.has_csv.contains(&new) {
            self.csv.remove(&old);
            let (from, to) = (
                self.dir.join(format!("{old}.csv")),
                self.dir.join(format!("{new}.csv")),
            );
            std::fs::rename(&from, &to).with_context(|| {
                format!("{}: cannot rename to {}", from.display(), to.display())
            })?;
            self.has_csv.remove(&old);
            self.has_csv.insert(new);
        }
        Ok(())
    }

    /// The CSV writer of file `stem`: open, opened again, or created; the least recently
    /// written one is closed when too many are open.
    fn csv_writer(&mut self, stem: &str) -> Result<&mut LiveLinkWriter> {
        if !self.csv.contains_key(stem) {
            if self.csv.len() >= MAX_OPEN_CSV {
                let oldest = self
                    .csv
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(stem, _)| stem.clone());
                self.csv.remove(&oldest.expect("the map is full"));
            }
            let path = self.dir.join(format!("{stem}.csv"));
            let writer = if self.has_csv.insert(stem.to_string()) {
                LiveLinkWriter::create(&path, 60.0)?
            } else {
                LiveLinkWriter::append(&path, 60.0)?
            };
            self.csv.insert(stem.to_string(), (writer, 0));
        }
        let (writer, at) = self.csv.get_mut(stem).expect("inserted above");
        *at = self.frames;
        Ok(writer)
    }

    /// Ends the take: writes `personN.glb` for everyone recorded. Returns their paths.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        let _ = self.session.flush();
        let keys_path = self.dir.join(KEYS_FILE);
        self.keys.flush().with_context(|| write_error(&keys_path))?;
        let written = write_glbs(&self.dir, &read_keys(&keys_path)?, &self.names)?;
        let _ = std::fs::remove_file(&keys_path);
        Ok(written)
    }
}

/// The key file a take writes while recording (removed at stop; `recover` does not need it).
const KEYS_FILE: &str = "keys.bin";

fn read_keys(path: &Path) -> Result<BTreeMap<u32, Vec<Key>>> {
    let file = File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut keys: BTreeMap<u32, Vec<Key>> = BTreeMap::new();
    let mut record = [0u8; KEY_BYTES];
    loop {
        match reader.read_exact(&mut record) {
            Ok(()) => {
                let (id, key) = Key::decode(&record);
                keys.entry(id).or_default().push(key);
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(keys),
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
        }
    }
}

/// Rebuilds the `personN.glb` files of a take from its `session.jsonl` (after a crash, or to
/// redo them), reading it line by line. A torn last line (the crash) is left out; any other bad
/// line is an error.
pub fn recover(dir: &Path) -> Result<Vec<PathBuf>> {
    let path = dir.join("session.jsonl");
    let name = path.display().to_string();
    let file = File::open(&path).with_context(|| format!("{name}: cannot read the take"))?;
    let mut reader = BufReader::new(file);
    let mut keys: BTreeMap<u32, Vec<Key>> = BTreeMap::new();
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut start = None;
    let (mut line, mut number) = (String::new(), 0);
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .with_context(|| format!("{name}: cannot read"))?;
        if read == 0 {
            break;
        }
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        match FrameRecord::parse(line.trim_end()) {
            Ok(frame) => {
                let start = *start.get_or_insert(frame.time_s);
                for person in &frame.people {
                    if let Some(name) = &person.name {
                        names.insert(person.id, name.clone());
                    }
                    if let Some((id, key)) = Key::from_person(frame.time_s - start, person) {
                        keys.entry(id).or_default().push(key);
                    }
                }
            }
            // only the last line can lack its newline: the crash tore it
            Err(e) if !line.ends_with('\n') => {
                log::warn!("{name}:{number}: a torn last line is left out ({e:#})");
            }
            Err(e) => return Err(e).with_context(|| format!("{name}:{number}")),
        }
    }
    anyhow::ensure!(start.is_some(), "{name}: no frames in the take");
    write_glbs(dir, &keys, &names)
}

/// A person's file name without extension: their name made safe, else `personN`.
fn stem_of(id: u32, names: &BTreeMap<u32, String>) -> String {
    match names.get(&id) {
        Some(name) => crate::known::file_stem(name),
        None => format!("person{id}"),
    }
}

/// One glb per file stem: a named person's keys from every ID they had, in time order.
fn write_glbs(
    dir: &Path,
    keys: &BTreeMap<u32, Vec<Key>>,
    names: &BTreeMap<u32, String>,
) -> Result<Vec<PathBuf>> {
    let mut by_stem: BTreeMap<String, (u32, Vec<Key>)> = BTreeMap::new();
    for (id, keys) in keys {
        let (_, all) = by_stem
            .entry(stem_of(*id, names))
            .or_insert_with(|| (*id, Vec::new()));
        all.extend(keys.iter().cloned());
    }
    let mut written = Vec::new();
    for (stem, (id, mut keys)) in by_stem {
        keys.sort_by(|a, b| a.time_s.total_cmp(&b.time_s));
        let path = dir.join(format!("{stem}.glb"));
        let bytes = take_glb_named(id, &stem, &keys);
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
    take_glb_named(id, &format!("person{id}"), keys)
}

/// The same with the animation named `name`.
pub fn take_glb_named(id: u32, name: &str, keys: &[Key]) -> Vec<u8> {
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
        "name": name,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame at `time_s` with the confirmed people `ids`, each with their own expression.
    fn frame(time_s: f64, ids: &[u32]) -> FrameRecord {
        let people = ids
            .iter()
            .map(|&id| {
                let landmarks: Vec<glam::Vec2> = (0..68)
                    .map(|i| glam::Vec2::new(i as f32, 2.0 * i as f32))
                    .collect();
                let face = crate::vision::FaceObservation {
                    bbox: (glam::Vec2::ZERO, glam::Vec2::new(67.0, 134.0)),
                    score: 0.9,
                    landmarks,
                    rotation: glam::Mat3::from_rotation_y(0.01 * id as f32),
                    blendshapes: (0..51)
                        .map(|k| ((id as usize + k) % 10) as f32 / 10.0)
                        .collect(),
                };
                let person = crate::track::Person {
                    id,
                    state: TrackState::Confirmed,
                    raw: face.clone(),
                    smoothed: face,
                    pose: None,
                    fit_rms_px: 1.0,
                    name: None,
                };
                PersonRecord::new(&person)
            })
            .collect();
        FrameRecord {
            version: super::super::FORMAT_VERSION,
            frame: (time_s * 30.0) as u64,
            time_s,
            width: 640,
            height: 480,
            people,
        }
    }

    #[test]
    fn keys_read_back_bit_for_bit() {
        let key = Key {
            time_s: 1.0 / 3.0,
            weights: std::array::from_fn(|k| k as f32 / 7.0),
            head: Quat::from_rotation_y(0.3),
            ypr: [0.1, -0.2, f32::MIN_POSITIVE],
        };
        let mut bytes = Vec::new();
        key.encode(4_000_000_007, &mut bytes);
        assert_eq!(bytes.len(), KEY_BYTES);
        let (id, back) = Key::decode(bytes.as_slice().try_into().unwrap());
        assert_eq!((id, back), (4_000_000_007, key));
    }

    /// An hour-long take of people coming and going: the keys wait on disk, at most
    /// `MAX_OPEN_CSV` files are open, and every person's rows and animation are complete.
    #[test]
    fn a_take_of_many_people_keeps_few_files_open_and_loses_no_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut take = Take::create(dir.path()).unwrap();
        // 24 people, three in view at a time, each returning several times
        let frames = 600;
        let mut rows: BTreeMap<u32, usize> = BTreeMap::new();
        for f in 0..frames {
            let ids: Vec<u32> = (0..3).map(|k| 1 + ((f / 5 + 8 * k) % 24) as u32).collect();
            for id in &ids {
                *rows.entry(*id).or_default() += 1;
            }
            take.write(&frame(f as f64 / 30.0, &ids)).unwrap();
            assert!(take.open_csv_files() <= MAX_OPEN_CSV, "frame {f}");
        }
        let keys_file = dir.path().join(KEYS_FILE);
        let on_disk = std::fs::metadata(&keys_file).unwrap().len() as usize;
        let all = frames * 3 * KEY_BYTES;
        assert!(
            on_disk <= all && on_disk + 8192 >= all,
            "keys on disk: {on_disk} of {all} bytes (the rest in the write buffer)"
        );
        let written = take.finish().unwrap();
        assert_eq!(written.len(), 24);
        assert!(!keys_file.exists(), "the key file is removed at stop");
        for (id, count) in rows {
            let csv = std::fs::read_to_string(dir.path().join(format!("person{id}.csv"))).unwrap();
            let lines: Vec<&str> = csv.lines().collect();
            assert_eq!(lines[0], super::super::LIVE_LINK_HEADER, "person {id}");
            assert_eq!(
                lines.len(),
                1 + count,
                "person {id}: header once, every row"
            );
            assert_eq!(
                lines.iter().filter(|l| l.starts_with("Timecode")).count(),
                1
            );
        }
    }

    /// A person named during the take: `person2.csv` becomes `Ana.csv` with every row, the glb
    /// is `Ana.glb`, the records carry the name, and `recover` rebuilds the same files.
    #[test]
    fn a_named_person_gets_files_by_name_and_recover_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let mut take = Take::create(dir.path()).unwrap();
        for f in 0..20 {
            let mut record = frame(f as f64 / 30.0, &[1, 2]);
            if f >= 10 {
                record.people[1].name = Some("Ana".into());
            }
            take.write(&record).unwrap();
        }
        let written = take.finish().unwrap();
        let names: BTreeSet<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            BTreeSet::from(["Ana.glb".to_string(), "person1.glb".to_string()])
        );
        assert!(!dir.path().join("person2.csv").exists());
        let csv = std::fs::read_to_string(dir.path().join("Ana.csv")).unwrap();
        assert_eq!(csv.lines().count(), 21, "header and all 20 rows");
        let session = std::fs::read_to_string(dir.path().join("session.jsonl")).unwrap();
        let last = FrameRecord::parse(session.lines().last().unwrap()).unwrap();
        assert_eq!(last.people[1].name.as_deref(), Some("Ana"));
        assert_eq!(last.people[0].name, None);
        let glb = std::fs::read(dir.path().join("Ana.glb")).unwrap();
        std::fs::remove_file(dir.path().join("Ana.glb")).unwrap();
        recover(dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("Ana.glb")).unwrap(), glb);
    }
}
