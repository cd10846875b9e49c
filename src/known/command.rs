//! `polyface people list | forget NAME | forget --all | eval`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::eval::{calibrate, embed_heldout, matching_cost_us, split, trial};
use super::{KnownPeople, NameRules, NAME_RULES};
use crate::cli::{PeopleAction, PeopleArgs};

fn store_path(explicit: Option<PathBuf>) -> Result<PathBuf> {
    explicit
        .or_else(KnownPeople::default_path)
        .context("no people file: set $POLYFACE_PEOPLE or $HOME, or pass --store FILE")
}

pub fn run(args: PeopleArgs) -> Result<()> {
    match args.action {
        PeopleAction::List => {
            let path = store_path(args.store)?;
            let store = KnownPeople::load(&path)?;
            if store.people.is_empty() {
                println!("nobody is named ({} holds no one)", path.display());
            }
            for p in &store.people {
                let avatar = p
                    .avatar
                    .as_ref()
                    .map_or("default avatar".to_string(), |a| a.display().to_string());
                let neutral = if p.neutral.is_some() {
                    "calibrated"
                } else {
                    "not calibrated"
                };
                println!(
                    "{}\t{} embeddings\t{avatar}\t{neutral}",
                    p.name,
                    p.embeddings.len()
                );
            }
            Ok(())
        }
        PeopleAction::Forget { name, all } => {
            let path = store_path(args.store)?;
            if all {
                // everything goes, even a file that no longer parses
                match std::fs::remove_file(&path) {
                    Ok(()) => println!("forgot everyone ({} deleted)", path.display()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        println!("nobody is named")
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("{}: cannot delete", path.display()))
                    }
                }
                return Ok(());
            }
            let name = name.context("forget needs a NAME or --all")?;
            let mut store = KnownPeople::load(&path)?;
            anyhow::ensure!(
                store.forget(&name),
                "nobody is named {name:?} (`polyface people list` shows who is)"
            );
            store.save(&path)?;
            println!("forgot {name}");
            Ok(())
        }
        PeopleAction::Eval {
            data,
            k,
            threshold,
            margin,
            model,
        } => {
            let models = crate::vision::models_dir(model.models.as_deref());
            let (device, _) = crate::vision::open_device(model.device)?;
            let reid = crate::vision::ReId::load(&models.join("reid.safetensors"), &device)?;
            let (identities, embed_ms) = embed_heldout(&reid, &data)?;
            let (test, calibration) = split(identities);
            let rules = NameRules {
                threshold: threshold.unwrap_or(NAME_RULES.threshold),
                margin: margin.unwrap_or(NAME_RULES.margin),
            };
            let calibrated = calibrate(&calibration, 1, rules.margin, 0.01);
            println!(
                "calibrated: {} identities with 2-4 images, k = 1: threshold {calibrated:.2} gives \
                 <= 1 % wrong names (margin {:.2})",
                calibration.len(),
                rules.margin
            );
            println!(
                "test: {} identities with >= 5 images (every other one enrolled), threshold {:.2}, \
                 margin {:.2}",
                test.len(),
                rules.threshold,
                rules.margin
            );
            println!("k\tknown\treturning\trecognised\twrong names\tstrangers named");
            for &k in &k {
                anyhow::ensure!(k >= 1, "k must be at least 1");
                let o = trial(&test, k, rules);
                println!(
                    "{k}\t{}\t{}\t{:.1} %\t{:.2} % ({} + {})\t{}/{}",
                    o.known_people,
                    o.returning,
                    100.0 * o.recognition_rate(),
                    100.0 * o.wrong_name_rate(),
                    o.misnamed,
                    o.strangers_named,
                    o.strangers_named,
                    o.strangers
                );
            }
            // the cost per new face: aligning and embedding it, and matching it against a store
            // of the test's known people with full sets
            let mut store = KnownPeople::default();
            for identity in test.iter().step_by(2) {
                store.enrol(&identity.name, &identity.embeddings)?;
            }
            let faces: Vec<Vec<f32>> = test
                .iter()
                .flat_map(|i| i.embeddings.iter().cloned())
                .collect();
            println!(
                "cost per new face: align + embed {embed_ms:.2} ms (the session's re-ID pays it \
                 anyway); matching against {} people ({} embeddings) {:.1} us",
                store.people.len(),
                store
                    .people
                    .iter()
                    .map(|p| p.embeddings.len())
                    .sum::<usize>(),
                matching_cost_us(&store, &faces, rules)
            );
            Ok(())
        }
    }
}
