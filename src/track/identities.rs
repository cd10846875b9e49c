//! Who is who: face embeddings keep each person's ID across leaving, coming back and swapping
//! places.
//!
//! The tracker follows boxes, so it cannot tell two people apart who trade places between two
//! frames, and it gives anyone who comes back a new ID. Here every confirmed person in view is
//! embedded when they are confirmed and again every `recheck_s` seconds, and the people in view
//! are matched to everyone seen this session in one minimum-cost assignment (cost = 1 − cosine).
//! Keeping one's own ID gets a bonus, so a person changes ID only when somebody else's
//! embeddings fit clearly better; a pair must reach the model's match threshold.

use std::collections::HashMap;

use super::hungarian::assign;
use crate::vision::reid::cosine;

/// Embeddings kept per person: the first one plus the most recent others (poses and light vary).
const EMBEDDINGS_PER_PERSON: usize = 8;
/// People the gallery remembers; past that, whoever was seen longest ago is forgotten (and
/// gets a new ID if they return). A few kilobytes each.
pub const MAX_IDENTITIES: usize = 256;

/// A person seen this session and what they looked like.
#[derive(Clone, Debug)]
pub struct Identity {
    pub id: u32,
    pub embeddings: Vec<Vec<f32>>,
    /// When this person was last embedded, seconds.
    pub last_seen_s: f64,
}

impl Identity {
    /// Best cosine between `embedding` and this person's embeddings.
    pub fn similarity(&self, embedding: &[f32]) -> f32 {
        self.embeddings
            .iter()
            .map(|e| cosine(e, embedding))
            .fold(f32::NEG_INFINITY, f32::max)
    }

    fn remember(&mut self, embedding: Vec<f32>) {
        if self.embeddings.len() >= EMBEDDINGS_PER_PERSON {
            self.embeddings.remove(1);
        }
        self.embeddings.push(embedding);
    }
}

/// Matching rules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatchRules {
    /// Cosine at which two faces are the same person (the model's calibrated threshold).
    pub threshold: f32,
    /// Added to the cosine of a person with their current ID: the margin by which somebody
    /// else must fit better before an ID changes.
    pub keep_bonus: f32,
}

/// One person in view, embedded this frame.
#[derive(Clone, Debug)]
pub struct Sighting {
    /// The person's current (tracker) ID.
    pub id: u32,
    pub embedding: Vec<f32>,
}

/// What one sighting turns out to be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// A known person (maybe under another ID than the tracker's), with the cosine.
    Known { id: u32, similarity: f32 },
    /// Nobody known fits; keeps the tracker's ID, unless another sighting was given that ID.
    Unmatched,
}

/// Matches `sightings` to `gallery` people whose IDs are in `candidates` (the people not held
/// by someone in view who was not embedded this time). One verdict per sighting.
pub fn match_sightings(
    sightings: &[Sighting],
    gallery: &[Identity],
    candidates: &[u32],
    rules: MatchRules,
) -> Vec<Verdict> {
    let columns: Vec<&Identity> = gallery
        .iter()
        .filter(|g| candidates.contains(&g.id))
        .collect();
    let similarity: Vec<Vec<f32>> = sightings
        .iter()
        .map(|s| columns.iter().map(|g| g.similarity(&s.embedding)).collect())
        .collect();
    let costs: Vec<Vec<f32>> = sightings
        .iter()
        .zip(&similarity)
        .map(|(s, row)| {
            columns
                .iter()
                .zip(row)
                .map(|(g, &sim)| {
                    let bonus = if g.id == s.id { rules.keep_bonus } else { 0.0 };
                    // A stranger must reach the threshold; one's own ID may sit a bonus below.
                    if sim + bonus >= rules.threshold {
                        1.0 - sim - bonus
                    } else {
                        f32::INFINITY
                    }
                })
                .collect()
        })
        .collect();
    let mut verdicts = vec![Verdict::Unmatched; sightings.len()];
    for (row, column) in assign(&costs, f32::MAX) {
        verdicts[row] = Verdict::Known {
            id: columns[column].id,
            similarity: similarity[row][column],
        };
    }
    verdicts
}

/// Everyone seen this session, and when each person in view was last embedded.
#[derive(Default)]
pub struct Gallery {
    pub people: Vec<Identity>,
    last_embedded_s: HashMap<u32, f64>,
}

/// The ID change the gallery decided on for one sighting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IdChange {
    pub from: u32,
    pub to: u32,
    pub similarity: f32,
}

impl Gallery {
    /// Whether the person with tracker ID `id` should be embedded at `now_s`.
    pub fn due(&self, id: u32, now_s: f64, recheck_s: f64) -> bool {
        self.last_embedded_s
            .get(&id)
            .is_none_or(|&t| now_s - t >= recheck_s)
    }

    /// Matches this frame's sightings, remembers what they looked like and returns the ID
    /// changes (apply them all at once: they may be swaps). `held` are IDs of people in view who
    /// were not embedded now; `fresh_id` hands out a new ID for a sighting whose ID went to
    /// somebody else.
    pub fn settle(
        &mut self,
        sightings: Vec<Sighting>,
        held: &[u32],
        now_s: f64,
        rules: MatchRules,
        mut fresh_id: impl FnMut() -> u32,
    ) -> Vec<IdChange> {
        let candidates: Vec<u32> = self
            .people
            .iter()
            .map(|p| p.id)
            .filter(|id| !held.contains(id))
            .collect();
        let verdicts = match_sightings(&sightings, &self.people, &candidates, rules);
        let claimed: Vec<u32> = verdicts
            .iter()
            .filter_map(|v| match v {
                Verdict::Known { id, .. } => Some(*id),
                Verdict::Unmatched => None,
            })
            .collect();
        let mut changes = Vec::new();
        for (sighting, verdict) in sightings.into_iter().zip(verdicts) {
            let (id, similarity) = match verdict {
                Verdict::Known { id, similarity } => (id, similarity),
                // Own ID taken by the person it really belongs to: this is somebody new.
                Verdict::Unmatched if claimed.contains(&sighting.id) => (fresh_id(), f32::NAN),
                Verdict::Unmatched => (sighting.id, f32::NAN),
            };
            if id != sighting.id {
                changes.push(IdChange {
                    from: sighting.id,
                    to: id,
                    similarity,
                });
            }
            self.last_embedded_s.insert(id, now_s);
            match self.people.iter_mut().find(|p| p.id == id) {
                Some(person) => {
                    person.last_seen_s = now_s;
                    // Only confident sightings teach the gallery what a person looks like.
                    if similarity >= rules.threshold {
                        person.remember(sighting.embedding);
                    }
                }
                None => self.people.push(Identity {
                    id,
                    embeddings: vec![sighting.embedding],
                    last_seen_s: now_s,
                }),
            }
        }
        self.forget_the_longest_gone(held);
        changes
    }

    /// Keeps the gallery at [`MAX_IDENTITIES`]: forgets whoever was seen longest ago, never
    /// somebody in view (just embedded, or `held`).
    fn forget_the_longest_gone(&mut self, held: &[u32]) {
        while self.people.len() > MAX_IDENTITIES {
            let oldest = self
                .people
                .iter()
                .enumerate()
                .filter(|(_, p)| !held.contains(&p.id) && !self.last_embedded_s.contains_key(&p.id))
                .min_by(|a, b| a.1.last_seen_s.total_cmp(&b.1.last_seen_s))
                .map(|(i, _)| i);
            match oldest {
                Some(i) => {
                    self.people.swap_remove(i);
                }
                None => break,
            }
        }
    }

    /// Forgets when people out of view were last embedded (they are embedded again on return).
    pub fn retain_in_view(&mut self, in_view: &[u32]) {
        self.last_embedded_s.retain(|id, _| in_view.contains(id));
    }

    pub fn clear(&mut self) {
        self.people.clear();
        self.last_embedded_s.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: MatchRules = MatchRules {
        threshold: 0.4,
        keep_bonus: 0.1,
    };

    /// Unit vector along axis `k` of 8, tilted by `noise` towards axis 7.
    fn face(k: usize, noise: f32) -> Vec<f32> {
        let mut v = [0.0f32; 8];
        v[k] = 1.0;
        v[7] += noise;
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    fn sighting(id: u32, k: usize) -> Sighting {
        Sighting {
            id,
            embedding: face(k, 0.2),
        }
    }

    fn gallery(ids: &[(u32, usize)]) -> Gallery {
        Gallery {
            people: ids
                .iter()
                .map(|&(id, k)| Identity {
                    id,
                    embeddings: vec![face(k, 0.0)],
                    last_seen_s: 0.0,
                })
                .collect(),
            last_embedded_s: HashMap::new(),
        }
    }

    #[test]
    fn two_people_who_traded_places_get_their_ids_back() {
        let mut g = gallery(&[(1, 0), (2, 1)]);
        // the tracker followed the boxes: track 1 now shows person 2's face and vice versa
        let changes = g.settle(vec![sighting(1, 1), sighting(2, 0)], &[], 1.0, RULES, || 99);
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().any(|c| c.from == 1 && c.to == 2));
        assert!(changes.iter().any(|c| c.from == 2 && c.to == 1));
    }

    #[test]
    fn a_returning_person_gets_the_old_id_and_a_stranger_a_new_one() {
        let mut g = gallery(&[(1, 0), (2, 1)]);
        let changes = g.settle(
            vec![sighting(7, 1), sighting(8, 3)],
            &[1],
            2.0,
            RULES,
            || 99,
        );
        assert_eq!(
            changes.iter().map(|c| (c.from, c.to)).collect::<Vec<_>>(),
            vec![(7, 2)]
        );
        assert!(
            g.people.iter().any(|p| p.id == 8),
            "the stranger is remembered"
        );
        assert!(!g.due(2, 2.2, 0.5) && g.due(2, 2.6, 0.5));
    }

    #[test]
    fn ids_held_by_people_in_view_are_not_handed_out() {
        let g = gallery(&[(1, 0)]);
        let verdicts = match_sightings(&[sighting(5, 0)], &g.people, &[], RULES);
        assert_eq!(verdicts, vec![Verdict::Unmatched]);
    }

    #[test]
    fn a_person_keeps_their_id_unless_somebody_else_fits_clearly_better() {
        // own gallery entry a little less similar than a stranger's: the bonus keeps the ID
        let mut g = gallery(&[(1, 0), (2, 1)]);
        g.people[0].embeddings = vec![face(0, 0.0)];
        let mixed: Vec<f32> = {
            let v: Vec<f32> = face(0, 0.0)
                .iter()
                .zip(face(1, 0.0))
                .map(|(a, b)| 0.48 * a + 0.52 * b)
                .collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / n).collect()
        };
        let changes = g.settle(
            vec![Sighting {
                id: 1,
                embedding: mixed,
            }],
            &[],
            0.0,
            RULES,
            || 99,
        );
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn a_sighting_whose_id_went_to_its_owner_becomes_somebody_new() {
        // track 1 shows a stranger now; person 1 is back as track 4
        let mut g = gallery(&[(1, 0)]);
        let changes = g.settle(vec![sighting(1, 5), sighting(4, 0)], &[], 0.0, RULES, || 42);
        let pairs: Vec<(u32, u32)> = changes.iter().map(|c| (c.from, c.to)).collect();
        assert!(
            pairs.contains(&(4, 1)) && pairs.contains(&(1, 42)),
            "{pairs:?}"
        );
    }

    #[test]
    fn the_gallery_keeps_the_first_and_the_latest_looks() {
        let mut p = Identity {
            id: 1,
            embeddings: vec![face(0, 0.0)],
            last_seen_s: 0.0,
        };
        for i in 0..20 {
            p.remember(face(0, i as f32 * 0.01));
        }
        assert_eq!(p.embeddings.len(), EMBEDDINGS_PER_PERSON);
        assert_eq!(p.embeddings[0], face(0, 0.0));
        assert_eq!(p.embeddings.last().unwrap(), &face(0, 0.19));
    }

    #[test]
    fn the_gallery_forgets_whoever_was_seen_longest_ago_past_its_size() {
        let mut g = Gallery::default();
        // a stream of strangers, one new face a second, two of them (IDs 1 and 2) in view the
        // whole time and the first stranger coming back now and then
        let stranger = |n: u32| {
            // distinct directions in a space wide enough for every stranger to be new
            let mut v = vec![0.0f32; 3 * MAX_IDENTITIES + 8];
            v[n as usize] = 1.0;
            v
        };
        for n in 3..(MAX_IDENTITIES as u32 * 3) {
            let t = n as f64;
            let mut sightings = vec![Sighting {
                id: n,
                embedding: stranger(n),
            }];
            if n % 50 == 0 {
                sightings.push(Sighting {
                    id: 3,
                    embedding: stranger(3),
                });
            }
            g.retain_in_view(&[1, 2, n, 3]);
            if n == 3 {
                for id in [1, 2] {
                    sightings.push(Sighting {
                        id,
                        embedding: stranger(id),
                    });
                }
            }
            g.settle(sightings, &[1, 2], t, RULES, || 9999);
            assert!(
                g.people.len() <= MAX_IDENTITIES,
                "{} people",
                g.people.len()
            );
        }
        let ids: Vec<u32> = g.people.iter().map(|p| p.id).collect();
        assert!(ids.contains(&1) && ids.contains(&2), "people in view stay");
        assert!(ids.contains(&3), "a regular is remembered");
        assert!(!ids.contains(&4), "the longest gone is forgotten");
        let newest = MAX_IDENTITIES as u32 * 3 - 1;
        assert!(ids.contains(&newest));
    }
}
