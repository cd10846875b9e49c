//! How well named people are recognised, measured on the shared `wild.jsonl` identities the
//! re-ID net never trained on ([`HELDOUT`]): enrol people from `k` images each, show the other
//! images of them and images of strangers one at a time, and count right and wrong names.
//!
//! Identities with at least 5 images are the test; those with 2-4 images are the verification
//! data the app's false-accept table comes from ([`impostor_thresholds`], `FAR_TABLE`), so the
//! figures are not tuned on the faces they report. In each set the identities (sorted) alternate
//! between known (enrolled) and stranger (never enrolled).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use glam::Vec2;
use serde::Deserialize;

use super::{KnownPeople, NameRules};
use crate::vision::ReId;

/// The held-out identities of `training/reid/prepare.py` that have at least 2 images.
pub const HELDOUT: &str = include_str!("heldout_identities.txt");

pub fn heldout_identities() -> HashSet<&'static str> {
    HELDOUT
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[derive(Deserialize)]
struct WildRecord {
    image: String,
    landmarks68: Vec<[f32; 2]>,
    #[serde(default)]
    identity: Option<String>,
}

/// One identity's embedded images, in image-name order.
#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub embeddings: Vec<Vec<f32>>,
}

/// Embeds every image of the held-out identities in `wild.jsonl` (a file, or the shared data
/// folder holding it). Returns the identities by name and the embedding time per face (ms).
pub fn embed_heldout(reid: &ReId, data: &Path) -> Result<(Vec<Identity>, f64)> {
    let file = if data.is_dir() {
        data.join("wild.jsonl")
    } else {
        data.to_path_buf()
    };
    let root = file.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    let wanted = heldout_identities();
    let mut records: Vec<WildRecord> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: WildRecord =
            serde_json::from_str(line).with_context(|| format!("{}:{}", file.display(), n + 1))?;
        if r.identity.as_deref().is_some_and(|i| wanted.contains(i)) {
            records.push(r);
        }
    }
    records.sort_by(|a, b| (&a.identity, &a.image).cmp(&(&b.identity, &b.image)));
    let mut by_name: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
    let mut spent = 0.0;
    let mut faces = 0usize;
    for chunk in records.chunks(32) {
        let mut aligned = Vec::new();
        let mut names = Vec::new();
        for r in chunk {
            let path = root.join(&r.image);
            let image = image::open(&path)
                .with_context(|| format!("{}: cannot read", path.display()))?
                .to_rgb8();
            let landmarks: Vec<Vec2> = r
                .landmarks68
                .iter()
                .map(|&[x, y]| Vec2::new(x, y))
                .collect();
            let start = Instant::now();
            if let Some(face) = reid.align(&image, &landmarks) {
                aligned.push(face);
                names.push(r.identity.clone().unwrap_or_default());
            }
            spent += start.elapsed().as_secs_f64();
        }
        let start = Instant::now();
        let embeddings = reid.embed_aligned(&aligned)?;
        spent += start.elapsed().as_secs_f64();
        faces += embeddings.len();
        for (name, e) in names.into_iter().zip(embeddings) {
            by_name.entry(name).or_default().push(e);
        }
    }
    let identities = by_name
        .into_iter()
        .map(|(name, embeddings)| Identity { name, embeddings })
        .collect();
    Ok((identities, 1000.0 * spent / faces.max(1) as f64))
}

/// Counts of one trial.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Outcome {
    /// People enrolled.
    pub known_people: usize,
    /// Images of enrolled people shown (not used to enrol them).
    pub returning: usize,
    /// ... given their own name.
    pub recognised: usize,
    /// ... given somebody else's name.
    pub misnamed: usize,
    /// Images of people never enrolled.
    pub strangers: usize,
    /// ... given a name.
    pub strangers_named: usize,
}

impl Outcome {
    /// Share of returning faces given their own name.
    pub fn recognition_rate(&self) -> f64 {
        self.recognised as f64 / self.returning.max(1) as f64
    }

    /// Share of all faces shown given a wrong name (somebody else's, or any for a stranger).
    pub fn wrong_name_rate(&self) -> f64 {
        (self.misnamed + self.strangers_named) as f64
            / (self.returning + self.strangers).max(1) as f64
    }
}

/// Enrols every other identity of `identities` from its first `k` images (the rest are
/// strangers), then shows each face not used for enrolment on its own.
/// `rules` none: each store's own ([`KnownPeople::rules`]).
pub fn trial(identities: &[Identity], k: usize, rules: Option<NameRules>) -> Outcome {
    trial_households(identities, k, rules, usize::MAX)
}

/// The same with the enrolled identities in households of `size` (the last one may be
/// smaller): each household is enrolled alone and shown its own other faces and every stranger's.
/// The counts add up over the households.
pub fn trial_households(
    identities: &[Identity],
    k: usize,
    rules: Option<NameRules>,
    size: usize,
) -> Outcome {
    let known: Vec<&Identity> = identities
        .iter()
        .step_by(2)
        .filter(|i| i.embeddings.len() > k)
        .collect();
    let mut total = Outcome::default();
    for household in known.chunks(size.max(1)) {
        let o = trial_one(identities, household, k, rules);
        total.known_people += o.known_people;
        total.returning += o.returning;
        total.recognised += o.recognised;
        total.misnamed += o.misnamed;
        total.strangers += o.strangers;
        total.strangers_named += o.strangers_named;
    }
    total
}

/// `household` enrolled from `k` images each; the other even-index identities are left out,
/// the odd-index ones are the strangers.
fn trial_one(
    identities: &[Identity],
    household: &[&Identity],
    k: usize,
    rules: Option<NameRules>,
) -> Outcome {
    let mut store = KnownPeople::default();
    let mut outcome = Outcome::default();
    for identity in household {
        store
            .enrol(&identity.name, &identity.embeddings[..k])
            .expect("k > 0 embeddings");
    }
    outcome.known_people = store.people.len();
    let rules = rules.unwrap_or_else(|| store.rules());
    let shown_identities: Vec<&Identity> = identities
        .iter()
        .enumerate()
        .filter(|(n, i)| n % 2 == 1 || store.get(&i.name).is_some())
        .map(|(_, i)| i)
        .collect();
    for identity in shown_identities {
        let known = store.get(&identity.name).is_some();
        let shown = if known {
            &identity.embeddings[k..]
        } else {
            &identity.embeddings[..]
        };
        for face in shown {
            let named = store.recognise(&[face], &[], rules)[0].map(|(j, _)| &store.people[j].name);
            match (known, named) {
                (true, Some(name)) if *name == identity.name => outcome.recognised += 1,
                (true, Some(_)) => outcome.misnamed += 1,
                (false, Some(_)) => outcome.strangers_named += 1,
                (_, None) => {}
            }
            if known {
                outcome.returning += 1;
            } else {
                outcome.strangers += 1;
            }
        }
    }
    outcome
}

/// The lowest threshold (in steps of 0.01) at which a `k`-image trial on `identities` gives at
/// most `wrong_rate` wrong names, with the rules' margin.
pub fn calibrate(identities: &[Identity], k: usize, margin: f32, wrong_rate: f64) -> f32 {
    calibrate_households(identities, k, margin, wrong_rate, usize::MAX)
}

/// The same with households of `size` known people.
pub fn calibrate_households(
    identities: &[Identity],
    k: usize,
    margin: f32,
    wrong_rate: f64,
    size: usize,
) -> f32 {
    (30..=99)
        .map(|t| t as f32 / 100.0)
        .find(|&threshold| {
            trial_households(identities, k, Some(NameRules { threshold, margin }), size)
                .wrong_name_rate()
                <= wrong_rate
        })
        .unwrap_or(1.0)
}

/// The test identities (at least 5 images) and the calibration identities (2-4 images).
pub fn split(identities: Vec<Identity>) -> (Vec<Identity>, Vec<Identity>) {
    identities
        .into_iter()
        .partition(|i| i.embeddings.len() >= 5)
}

/// Microseconds to name one new face against `store` (the matching alone; the embedding is
/// computed anyway for the session's re-identification), averaged over `faces`.
pub fn matching_cost_us(store: &KnownPeople, faces: &[Vec<f32>], rules: NameRules) -> f64 {
    let start = Instant::now();
    let mut named = 0usize;
    let rounds = 20;
    for _ in 0..rounds {
        for f in faces {
            named += store.recognise(&[f], &[], rules)[0].is_some() as usize;
        }
    }
    std::hint::black_box(named);
    1e6 * start.elapsed().as_secs_f64() / (rounds * faces.len().max(1)) as f64
}

/// Cosine thresholds at false-accept rates `fars` over every pair of faces of different
/// identities in `identities` (the verification data): for each rate, the lowest threshold that
/// at most that share of different-person pairs reaches.
/// Also returns the number of pairs.
pub fn impostor_thresholds(identities: &[Identity], fars: &[f64]) -> (Vec<(f64, f32)>, usize) {
    let faces: Vec<(usize, &Vec<f32>)> = identities
        .iter()
        .enumerate()
        .flat_map(|(n, i)| i.embeddings.iter().map(move |e| (n, e)))
        .collect();
    let mut cosines: Vec<f32> = Vec::new();
    for (a, (ia, ea)) in faces.iter().enumerate() {
        for (ib, eb) in &faces[a + 1..] {
            if ia != ib {
                cosines.push(crate::vision::reid::cosine(ea, eb));
            }
        }
    }
    cosines.sort_by(|a, b| b.total_cmp(a));
    let table = fars
        .iter()
        .map(|&far| {
            let allowed = (far * cosines.len() as f64).floor() as usize;
            // the threshold just above the (allowed + 1)-th highest cosine
            let t = cosines.get(allowed).map_or(-1.0, |c| c + 1e-4);
            (far, t)
        })
        .collect();
    (table, cosines.len())
}
