//! People you know: people the user named, kept between sessions (opt-in, local).
//!
//! Naming a person in the app stores their face *embeddings* (the re-ID network's 128-d vectors,
//! never images) with the settings they chose ([`Choices`]: avatar file, neutral calibration,
//! smoothing) in one JSON file
//! in the user's data folder ([`KnownPeople::default_path`]). Nothing is stored for anybody never
//! named. When a new ID appears in a later session, its first embeddings are compared with the
//! named people ([`KnownPeople::recognise`]): the best name must reach the store's threshold
//! ([`KnownPeople::rules`]: at most [`WRONG_NAME_RATE`] wrong names, read off the net's
//! verification data) and beat the second-best name by [`NAME_MARGIN`], and one name goes to at
//! most one person in view.
//! People who are already tracked are not compared again, so recognition costs nothing per frame.

pub mod command;
pub mod eval;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::vision::reid::cosine;

/// Embeddings kept per named person.
pub const MAX_EMBEDDINGS: usize = 8;
/// A new embedding joins a person's set only when its cosine with every stored one is below this
/// (it shows a pose or light the set does not have yet).
pub const SAME_LOOK: f32 = 0.9;
/// The store's file layout.
pub const STORE_VERSION: u32 = 1;

/// When a face gets a name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NameRules {
    /// The best cosine between the face and a person's stored embeddings must reach this.
    pub threshold: f32,
    /// ... and exceed the best cosine of any other named person by this much (a stranger who
    /// resembles two known people gets neither name).
    pub margin: f32,
}

/// Wrong names allowed per face shown: the rate the threshold is chosen for. A stranger's face
/// meets one chance per stored embedding to pass, so each pair may pass with at most this rate
/// divided by the embeddings stored ([`threshold_for`]).
pub const WRONG_NAME_RATE: f64 = 0.01;
/// The best name must beat the second-best by this much (a stranger who resembles two known
/// people gets neither name).
pub const NAME_MARGIN: f32 = 0.05;

/// Per-pair false-accept rates of the shipped re-ID net and the cosine each needs, over the
/// 108,402 different-person pairs of its 184 held-out identities with 2-4 images (never the
/// test identities; `polyface people eval`, "verification data" line). The net's own
/// `match_threshold` (0.398) is the 1e-2 point.
pub const FAR_TABLE: [(f64, f32); 7] = [
    (1e-2, 0.401),
    (3e-3, 0.468),
    (1e-3, 0.524),
    (3e-4, 0.576),
    (1e-4, 0.610),
    (3e-5, 0.660),
    (1e-5, 0.700),
];

/// The threshold for a store of `embeddings` embeddings in all: a stranger's face meets that
/// many chances to pass, so each pair may pass with at most `wrong_rate / embeddings` (read off
/// [`FAR_TABLE`], log-linear between its rows, its ends beyond them).
pub fn threshold_for(embeddings: usize, wrong_rate: f64) -> f32 {
    let far = wrong_rate / embeddings.max(1) as f64;
    let (first, last) = (FAR_TABLE[0], FAR_TABLE[FAR_TABLE.len() - 1]);
    if far >= first.0 {
        return first.1;
    }
    if far <= last.0 {
        return last.1;
    }
    for w in FAR_TABLE.windows(2) {
        let ((f0, t0), (f1, t1)) = (w[0], w[1]);
        if far <= f0 && far >= f1 {
            let x = (f0.ln() - far.ln()) / (f0.ln() - f1.ln());
            return t0 + (t1 - t0) * x as f32;
        }
    }
    last.1
}

/// What a person chose in the app, given back when they are recognised.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Choices {
    /// The avatar file they wear (none: a default character).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<PathBuf>,
    /// Their neutral face, ARKit-52 weights (none: not calibrated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neutral: Option<Vec<f32>>,
    /// Their own smoothing (none: the app's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoothing: Option<crate::track::Smoothing>,
}

/// A named person: how they look and what they chose.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnownPerson {
    pub name: String,
    /// L2-normalised re-ID embeddings (at most [`MAX_EMBEDDINGS`], mutually different).
    pub embeddings: Vec<Vec<f32>>,
    #[serde(flatten)]
    pub choices: Choices,
}

impl KnownPerson {
    /// Best cosine between `embedding` and this person's embeddings (−1 with none that fit).
    pub fn similarity(&self, embedding: &[f32]) -> f32 {
        self.embeddings
            .iter()
            .filter(|e| e.len() == embedding.len())
            .map(|e| cosine(e, embedding))
            .fold(-1.0, f32::max)
    }

    /// Adds `embedding` when it differs from every stored one (cosine below [`SAME_LOOK`]). A
    /// full set swaps out its most redundant member (the one closest to another) when the new
    /// one is less redundant. Returns whether the set changed.
    pub fn remember(&mut self, embedding: &[f32]) -> bool {
        if self.embeddings.iter().any(|e| e.len() != embedding.len()) {
            // another network's embeddings: start again with this one's
            self.embeddings.clear();
        }
        let nearest = self.similarity(embedding);
        if nearest >= SAME_LOOK {
            return false;
        }
        if self.embeddings.len() < MAX_EMBEDDINGS {
            self.embeddings.push(embedding.to_vec());
            return true;
        }
        let redundancy = |i: usize| {
            (0..self.embeddings.len())
                .filter(|&j| j != i)
                .map(|j| cosine(&self.embeddings[i], &self.embeddings[j]))
                .fold(-1.0, f32::max)
        };
        let (worst, worst_redundancy) = (0..self.embeddings.len())
            .map(|i| (i, redundancy(i)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("a full set");
        if nearest < worst_redundancy {
            self.embeddings[worst] = embedding.to_vec();
            return true;
        }
        false
    }
}

#[derive(Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    people: Vec<KnownPerson>,
}

/// Everybody the user named.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KnownPeople {
    pub people: Vec<KnownPerson>,
}

/// A shared handle: the inference thread recognises and enrols, the app applies settings and
/// forgets. Locked only when a new ID appears or the user acts, never per frame.
pub type SharedKnownPeople = std::sync::Arc<std::sync::Mutex<KnownPeople>>;

impl KnownPeople {
    /// `$POLYFACE_PEOPLE`, else `$XDG_DATA_HOME/polyface/people.json`, else
    /// `~/.local/share/polyface/people.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("POLYFACE_PEOPLE") {
            return Some(path.into());
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
        Some(base.join("polyface/people.json"))
    }

    /// The people stored at `path`: none when the file does not exist; an error naming the file
    /// when it cannot be read or parsed (the caller goes on without names).
    pub fn load(path: &Path) -> Result<KnownPeople> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(KnownPeople::default()),
            Err(e) => {
                return Err(e).with_context(|| format!("{}: cannot read", path.display()));
            }
        };
        let file: StoreFile =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text))
                .with_context(|| {
                    format!(
                        "{}: not a people file (`polyface people forget --all` deletes it)",
                        path.display()
                    )
                })?;
        anyhow::ensure!(
            file.version <= STORE_VERSION,
            "{}: version {} comes from a newer polyface (this one reads up to {STORE_VERSION})",
            path.display(),
            file.version
        );
        Ok(KnownPeople {
            people: file.people,
        })
    }

    /// Writes atomically (temporary file, then rename), readable by the user only. An empty
    /// store removes the file: nothing is kept for nobody.
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.people.is_empty() {
            return match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).with_context(|| format!("{}: cannot delete", path.display())),
            };
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create", dir.display()))?;
        }
        let file = StoreFile {
            version: STORE_VERSION,
            people: self.people.clone(),
        };
        let temporary = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&temporary)?;
            std::io::Write::write_all(&mut f, serde_json::to_string(&file)?.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&temporary, path)
        };
        write().with_context(|| format!("{}: cannot write", path.display()))
    }

    /// Applies `change` to what the file holds now (`polyface people forget` may have changed
    /// it while the app ran) and saves it; this store becomes the result. A file that cannot be
    /// read is an error and stays as it is.
    pub fn update_file(
        &mut self,
        path: &Path,
        change: impl FnOnce(&mut KnownPeople) -> Result<()>,
    ) -> Result<()> {
        let mut fresh = KnownPeople::load(path)?;
        change(&mut fresh)?;
        fresh.save(path)?;
        *self = fresh;
        Ok(())
    }

    /// The rules for this store: the threshold for [`WRONG_NAME_RATE`] with all its embeddings
    /// (a household of 5 with 3 each: 0.54; 25 people with 8 each: 0.64), [`NAME_MARGIN`].
    pub fn rules(&self) -> NameRules {
        let embeddings = self.people.iter().map(|p| p.embeddings.len()).sum();
        NameRules {
            threshold: threshold_for(embeddings, WRONG_NAME_RATE),
            margin: NAME_MARGIN,
        }
    }

    pub fn get(&self, name: &str) -> Option<&KnownPerson> {
        self.people.iter().find(|p| p.name == name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut KnownPerson> {
        self.people.iter_mut().find(|p| p.name == name)
    }

    /// Names `name` with `embeddings` (added to theirs if the name is known; each only when it
    /// differs from the ones kept). Returns the person.
    pub fn enrol(&mut self, name: &str, embeddings: &[Vec<f32>]) -> Result<&mut KnownPerson> {
        let name = name.trim();
        anyhow::ensure!(!name.is_empty(), "a name cannot be empty");
        anyhow::ensure!(
            !embeddings.is_empty(),
            "no face embedding of this person yet (the re-ID model is needed; wait until their \
             face was seen clearly)"
        );
        let index = match self.people.iter().position(|p| p.name == name) {
            Some(i) => i,
            None => {
                self.people.push(KnownPerson {
                    name: name.to_string(),
                    embeddings: Vec::new(),
                    choices: Choices::default(),
                });
                self.people.len() - 1
            }
        };
        let person = &mut self.people[index];
        for e in embeddings {
            person.remember(e);
        }
        Ok(person)
    }

    /// Deletes `name`; false when nobody has it.
    pub fn forget(&mut self, name: &str) -> bool {
        let before = self.people.len();
        self.people.retain(|p| p.name != name);
        self.people.len() != before
    }

    /// Names for faces shown together (one embedding each): a name only where its best cosine
    /// reaches the threshold and beats every other name by the margin; names in `taken` (held by
    /// people in view) are not handed out, and no name goes to two faces: pairs are settled from
    /// the most similar down. One entry per face: the person's index and the cosine.
    pub fn recognise(
        &self,
        faces: &[&[f32]],
        taken: &[&str],
        rules: NameRules,
    ) -> Vec<Option<(usize, f32)>> {
        let free: Vec<usize> = (0..self.people.len())
            .filter(|&j| !taken.contains(&self.people[j].name.as_str()))
            .collect();
        let mut pairs: Vec<(usize, usize, f32)> = Vec::new();
        for (i, face) in faces.iter().enumerate() {
            let scores: Vec<f32> = self.people.iter().map(|p| p.similarity(face)).collect();
            for &j in &free {
                let second = scores
                    .iter()
                    .enumerate()
                    .filter(|&(k, _)| k != j)
                    .map(|(_, &s)| s)
                    .fold(-1.0, f32::max);
                if scores[j] >= rules.threshold && scores[j] - second >= rules.margin {
                    pairs.push((i, j, scores[j]));
                }
            }
        }
        pairs.sort_by(|a, b| b.2.total_cmp(&a.2));
        let mut out = vec![None; faces.len()];
        let mut used = vec![false; self.people.len()];
        for (i, j, s) in pairs {
            if out[i].is_none() && !used[j] {
                out[i] = Some((j, s));
                used[j] = true;
            }
        }
        out
    }
}

/// Recognition of new IDs during a session: which session ID carries which name, and how many
/// embeddings of each new ID in view were compared so far.
pub struct Recogniser {
    pub store: SharedKnownPeople,
    /// Where the store is saved when somebody is named (none: kept in memory only).
    pub path: Option<PathBuf>,
    /// Fixed rules (none: the store's own, [`KnownPeople::rules`]).
    pub rules: Option<NameRules>,
    /// Why the store cannot be written (it could not be read): naming fails with this.
    blocked: Option<String>,
    /// Session ID → name; a name is on one ID at most.
    names: std::collections::HashMap<u32, String>,
    /// IDs in view without a name → embeddings compared so far.
    tries: std::collections::HashMap<u32, u8>,
}

/// Embeddings of a new ID compared with the named people before it stays a stranger (its first
/// one when confirmed, then the session's re-ID checks every 0.5 s: about a second).
pub const RECOGNITION_TRIES: u8 = 3;

impl Recogniser {
    pub fn new(store: SharedKnownPeople, path: Option<PathBuf>) -> Recogniser {
        Recogniser {
            store,
            path,
            rules: None,
            blocked: None,
            names: Default::default(),
            tries: Default::default(),
        }
    }

    /// The store at `path` (empty when there is none). A file that cannot be read is reported
    /// and left alone: the session goes on with nobody known and never overwrites it.
    pub fn open(path: Option<PathBuf>) -> (Recogniser, Option<String>) {
        let (store, problem, path) = match path.as_deref().map(KnownPeople::load) {
            None => (KnownPeople::default(), None, None),
            Some(Ok(store)) => (store, None, path),
            Some(Err(e)) => (
                KnownPeople::default(),
                Some(format!("people you named are not recognised: {e:#}")),
                None,
            ),
        };
        let shared = std::sync::Arc::new(std::sync::Mutex::new(store));
        let mut recogniser = Recogniser::new(shared, path);
        recogniser.blocked = problem.clone();
        (recogniser, problem)
    }

    /// The same, but naming fails with `problem` (the store could not be read).
    pub fn blocked(mut self, problem: String) -> Recogniser {
        self.blocked = Some(problem);
        self
    }

    pub fn name_of(&self, id: u32) -> Option<&str> {
        self.names.get(&id).map(String::as_str)
    }

    /// Follows the session's ID changes `(from, to)`: a person who gets an older ID without a
    /// name keeps the name they had.
    pub fn relabel(&mut self, pairs: &[(u32, u32)]) {
        for &(from, to) in pairs {
            let from_is_target = pairs.iter().any(|&(_, t)| t == from);
            if !self.names.contains_key(&to) && !from_is_target {
                if let Some(name) = self.names.remove(&from) {
                    self.names.insert(to, name);
                }
            }
        }
    }

    /// Compares the embeddings of IDs in view that have no name yet (at most
    /// [`RECOGNITION_TRIES`] each) with the named people; `in_view` are all IDs tracked now.
    /// Returns the names given now.
    pub fn recognise(&mut self, faces: &[(u32, &[f32])], in_view: &[u32]) -> Vec<(u32, String)> {
        self.tries.retain(|id, _| in_view.contains(id));
        let asking: Vec<(u32, &[f32])> = faces
            .iter()
            .copied()
            .filter(|(id, _)| {
                !self.names.contains_key(id)
                    && self.tries.get(id).is_none_or(|&t| t < RECOGNITION_TRIES)
            })
            .collect();
        if asking.is_empty() {
            return Vec::new();
        }
        for (id, _) in &asking {
            *self.tries.entry(*id).or_default() += 1;
        }
        let store = match self.store.lock() {
            Ok(store) => store,
            Err(poisoned) => poisoned.into_inner(),
        };
        if store.people.is_empty() {
            return Vec::new();
        }
        let taken: Vec<&str> = in_view
            .iter()
            .filter_map(|id| self.names.get(id).map(String::as_str))
            .collect();
        let embeddings: Vec<&[f32]> = asking.iter().map(|(_, e)| *e).collect();
        let rules = self.rules.unwrap_or_else(|| store.rules());
        let verdicts = store.recognise(&embeddings, &taken, rules);
        let mut given = Vec::new();
        for ((id, _), verdict) in asking.iter().zip(verdicts) {
            if let Some((j, similarity)) = verdict {
                let name = store.people[j].name.clone();
                log::info!("person #{id} is {name} (similarity {similarity:.2})");
                given.push((*id, name));
            }
        }
        drop(store);
        for (id, name) in &given {
            // the name leaves the (out-of-view) ID it was on
            self.names.retain(|_, n| n != name);
            self.names.insert(*id, name.clone());
        }
        given
    }

    /// Names session ID `id` `name` from its `embeddings` and the chosen settings, and saves
    /// the store. Somebody else holding the name loses it.
    pub fn name(
        &mut self,
        id: u32,
        name: &str,
        embeddings: &[Vec<f32>],
        choices: Choices,
    ) -> Result<()> {
        let name = name.trim().to_string();
        if let Some(problem) = &self.blocked {
            anyhow::bail!("{problem}");
        }
        {
            let mut store = match self.store.lock() {
                Ok(store) => store,
                Err(poisoned) => poisoned.into_inner(),
            };
            let previous = self.names.get(&id).cloned();
            let change = |store: &mut KnownPeople| -> Result<()> {
                let person = store.enrol(&name, embeddings)?;
                person.choices = choices;
                // a renamed person: the old name goes (one person, one entry)
                if let Some(previous) = previous.filter(|p| *p != name) {
                    store.forget(&previous);
                }
                Ok(())
            };
            match &self.path {
                Some(path) => store.update_file(path, change)?,
                None => change(&mut store)?,
            }
        }
        self.names.retain(|_, n| *n != name);
        self.names.insert(id, name);
        Ok(())
    }

    /// Drops `name` from this session's IDs (the store was changed by whoever forgot it).
    pub fn forgotten(&mut self, name: Option<&str>) {
        match name {
            Some(name) => self.names.retain(|_, n| n != name),
            None => self.names.clear(),
        }
    }

    pub fn reset(&mut self) {
        self.names.clear();
        self.tries.clear();
    }
}

/// A name as part of a file name: letters, digits, `-`, `_` and `.` kept, anything else `_`.
pub fn file_stem(name: &str) -> String {
    let stem: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stem = stem.trim_start_matches('.').to_string();
    if stem.is_empty() {
        "_".into()
    } else {
        stem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit vector along axis `k` of 16, tilted by `t` towards axis 15.
    fn face(k: usize, t: f32) -> Vec<f32> {
        let mut v = [0.0f32; 16];
        v[k] = 1.0;
        v[15] += t;
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    fn store(names: &[(&str, usize)]) -> KnownPeople {
        let mut s = KnownPeople::default();
        for &(name, k) in names {
            s.enrol(name, &[face(k, 0.0)]).unwrap();
        }
        s
    }

    const RULES: NameRules = NameRules {
        threshold: 0.7,
        margin: 0.05,
    };

    #[test]
    fn the_threshold_grows_with_the_embeddings_stored() {
        assert_eq!(threshold_for(1, 0.01), 0.401);
        assert!((threshold_for(15, 0.01) - 0.5415).abs() < 1e-3);
        assert!((threshold_for(200, 0.01) - 0.6388).abs() < 1e-3);
        assert_eq!(threshold_for(100_000, 0.01), 0.700);
        let mut s = store(&[("Ana", 0)]);
        let one = s.rules().threshold;
        s.enrol("Ben", &[face(1, 0.0), face(2, 0.0)]).unwrap();
        assert!(s.rules().threshold > one);
        assert_eq!(s.rules().margin, NAME_MARGIN);
    }

    #[test]
    fn known_faces_get_their_names_strangers_none() {
        let s = store(&[("Ana", 0), ("Ben", 1)]);
        let (ana, ben, stranger) = (face(0, 0.3), face(1, 0.3), face(5, 0.3));
        let out = s.recognise(&[&ben, &stranger, &ana], &[], RULES);
        assert_eq!(out[0].map(|o| o.0), Some(1));
        assert_eq!(out[1], None);
        assert_eq!(out[2].map(|o| o.0), Some(0));
    }

    #[test]
    fn two_faces_never_share_a_name_and_taken_names_are_not_given() {
        let s = store(&[("Ana", 0)]);
        let (close, closer) = (face(0, 0.4), face(0, 0.1));
        let out = s.recognise(&[&close, &closer], &[], RULES);
        assert_eq!(out[0], None, "the more similar face gets the name");
        assert_eq!(out[1].map(|o| o.0), Some(0));
        assert_eq!(s.recognise(&[&closer], &["Ana"], RULES), vec![None]);
    }

    #[test]
    fn a_face_between_two_known_people_gets_neither_name() {
        let s = store(&[("Ana", 0), ("Ben", 1)]);
        let both: Vec<f32> = face(0, 0.0)
            .iter()
            .zip(face(1, 0.0))
            .map(|(a, b)| (a + b) / 2f32.sqrt())
            .collect();
        // cosine 0.707 with both: above the threshold, but no margin
        assert_eq!(s.recognise(&[&both], &[], RULES), vec![None]);
    }

    #[test]
    fn a_set_keeps_at_most_eight_different_looks() {
        let mut p = KnownPerson {
            name: "Ana".into(),
            embeddings: vec![face(0, 0.0)],
            choices: Choices::default(),
        };
        assert!(!p.remember(&face(0, 0.01)), "the same look is not added");
        for k in 1..15 {
            p.remember(&face(k, 0.0));
            assert!(p.embeddings.len() <= MAX_EMBEDDINGS);
        }
        assert_eq!(p.embeddings.len(), MAX_EMBEDDINGS);
        for (i, a) in p.embeddings.iter().enumerate() {
            for b in &p.embeddings[i + 1..] {
                assert!(cosine(a, b) < SAME_LOOK);
            }
        }
    }

    #[test]
    fn the_store_round_trips_forgets_and_names_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/people.json");
        assert_eq!(KnownPeople::load(&path).unwrap(), KnownPeople::default());
        let mut s = store(&[("Ana", 0), ("Ben", 1)]);
        s.get_mut("Ana").unwrap().choices.avatar = Some("mika.glb".into());
        s.get_mut("Ben").unwrap().choices.neutral = Some(vec![0.1; 52]);
        s.get_mut("Ben").unwrap().choices.smoothing =
            Some(crate::track::Smoothing::default().steadier(2.0));
        s.save(&path).unwrap();
        assert_eq!(KnownPeople::load(&path).unwrap(), s);
        // the choices sit beside the name, as before they had their own type: older files
        // (without smoothing) read as they are
        let text = std::fs::read_to_string(&path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["people"][0]["avatar"], "mika.glb");
        assert!(value["people"][1]["smoothing"]["landmarks"]["min_cutoff"].is_number());
        let mut without = value.clone();
        without["people"][1]
            .as_object_mut()
            .unwrap()
            .remove("smoothing");
        std::fs::write(&path, without.to_string()).unwrap();
        let older = KnownPeople::load(&path).unwrap();
        assert_eq!(older.people[1].choices.smoothing, None);
        assert_eq!(older.people[1].choices.neutral, Some(vec![0.1; 52]));
        s.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "only the user reads it");
        }
        assert!(s.forget("Ana") && !s.forget("Ana"));
        s.save(&path).unwrap();
        assert_eq!(KnownPeople::load(&path).unwrap().people.len(), 1);
        // another process forgot Ben meanwhile: a change here starts from the file
        let mut other = KnownPeople::load(&path).unwrap();
        assert!(other.forget("Ben"));
        other.save(&path).unwrap();
        s.update_file(&path, |s| s.enrol("Cy", &[face(3, 0.0)]).map(|_| ()))
            .unwrap();
        let names: Vec<String> = s.people.iter().map(|p| p.name.clone()).collect();
        assert_eq!(names, vec!["Cy".to_string()], "Ben stays forgotten");
        assert_eq!(KnownPeople::load(&path).unwrap(), s);
        assert!(s.forget("Cy"));
        s.save(&path).unwrap();
        assert!(!path.exists(), "nobody named: no file");
        std::fs::write(&path, "{ torn").unwrap();
        let e = format!("{:#}", KnownPeople::load(&path).unwrap_err());
        assert!(
            e.contains("people.json") && e.contains("forget --all"),
            "{e}"
        );
    }

    #[test]
    fn names_become_safe_file_stems() {
        assert_eq!(file_stem("Ana"), "Ana");
        assert_eq!(file_stem("../x y"), "_x_y");
        assert_eq!(file_stem("José"), "José");
        assert_eq!(file_stem(" "), "_");
    }

    fn recogniser(names: &[(&str, usize)]) -> Recogniser {
        let shared = std::sync::Arc::new(std::sync::Mutex::new(store(names)));
        let mut r = Recogniser::new(shared, None);
        r.rules = Some(RULES);
        r
    }

    #[test]
    fn a_new_id_is_compared_a_few_times_then_stays_a_stranger() {
        let mut r = recogniser(&[("Ana", 0)]);
        let stranger = face(4, 0.2);
        for _ in 0..10 {
            r.recognise(&[(7, &stranger)], &[7]);
        }
        assert_eq!(r.tries.get(&7), Some(&RECOGNITION_TRIES));
        // Ana's face under ID 7 now: 7 was given up on, so only a new ID is asked again
        assert!(r.recognise(&[(7, &face(0, 0.1))], &[7]).is_empty());
        let given = r.recognise(&[(9, &face(0, 0.1))], &[9]);
        assert_eq!(given, vec![(9, "Ana".to_string())]);
        // named: never compared again
        assert!(r.recognise(&[(9, &face(0, 0.1))], &[9]).is_empty());
        assert_eq!(r.name_of(9), Some("Ana"));
        // Ana back under another ID while 9 is gone: the name moves
        assert_eq!(r.recognise(&[(12, &face(0, 0.1))], &[12]).len(), 1);
        assert_eq!((r.name_of(9), r.name_of(12)), (None, Some("Ana")));
    }

    #[test]
    fn two_ids_in_view_never_carry_one_name() {
        let mut r = recogniser(&[("Ana", 0)]);
        let given = r.recognise(&[(1, &face(0, 0.3)), (2, &face(0, 0.1))], &[1, 2]);
        assert_eq!(given, vec![(2, "Ana".to_string())]);
        // ID 1 shows Ana's look again, but Ana is in view as 2
        assert!(r.recognise(&[(1, &face(0, 0.0))], &[1, 2]).is_empty());
        assert_eq!(r.name_of(1), None);
    }

    #[test]
    fn naming_stores_the_person_and_a_session_id_change_keeps_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("people.json");
        let shared = std::sync::Arc::new(std::sync::Mutex::new(KnownPeople::default()));
        let mut r = Recogniser::new(shared, Some(path.clone()));
        let choices = Choices {
            avatar: Some("a.vrm".into()),
            ..Default::default()
        };
        r.name(4, " Ana ", &[face(0, 0.0)], choices).unwrap();
        let stored = KnownPeople::load(&path).unwrap();
        assert_eq!(stored.people[0].name, "Ana");
        assert_eq!(
            stored.people[0].choices.avatar,
            Some(PathBuf::from("a.vrm"))
        );
        r.relabel(&[(4, 2)]);
        assert_eq!((r.name_of(4), r.name_of(2)), (None, Some("Ana")));
        // renamed: the old name is gone from the store
        r.name(2, "Anna", &[face(0, 0.0)], Choices::default())
            .unwrap();
        let names: Vec<String> = KnownPeople::load(&path)
            .unwrap()
            .people
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, vec!["Anna".to_string()]);
        assert!(
            r.name(3, "Ben", &[], Choices::default()).is_err(),
            "no embeddings"
        );
        let blocked = Recogniser::new(r.store.clone(), None).blocked("unreadable".into());
        let mut blocked = blocked;
        assert!(blocked
            .name(5, "Cy", &[face(1, 0.0)], Choices::default())
            .is_err());
    }
}
