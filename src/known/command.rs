//! `polyface people list | forget NAME | forget --all | eval`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::eval::{
    calibrate, embed_heldout, impostor_thresholds, matching_cost_us, split, trial_households,
};
use super::{KnownPeople, NameRules, NAME_MARGIN, WRONG_NAME_RATE};
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
                    .choices
                    .avatar
                    .as_ref()
                    .map_or("default avatar".to_string(), |a| a.display().to_string());
                let neutral = if p.choices.neutral.is_some() {
                    "calibrated"
                } else {
                    "not calibrated"
                };
                let smoothing = match &p.choices.smoothing {
                    Some(s) => format!(
                        "smoothing {:.2}x the default",
                        s.steadiness_against(&crate::track::Smoothing::default())
                    ),
                    None => "the app's smoothing".to_string(),
                };
                println!(
                    "{}\t{} embeddings\t{avatar}\t{neutral}\t{smoothing}",
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
            household,
            model,
        } => {
            let models = crate::vision::models_dir(model.models.as_deref());
            let (device, _) = crate::vision::open_device(model.device)?;
            let reid = crate::vision::ReId::load(&models.join("reid.safetensors"), &device)?;
            let (identities, embed_ms) = embed_heldout(&reid, &data)?;
            let (test, calibration) = split(identities);
            let fixed = threshold.map(|threshold| NameRules {
                threshold,
                margin: margin.unwrap_or(NAME_MARGIN),
            });
            let fars = [1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5];
            let (table, pairs) = impostor_thresholds(&calibration, &fars);
            println!(
                "verification data: {} held-out identities with 2-4 images, {pairs} \
                 different-person pairs; threshold at a false-accept rate of {}",
                calibration.len(),
                table
                    .iter()
                    .map(|(f, t)| format!("{f:.0e}: {t:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let single = calibrate(&calibration, 1, NAME_MARGIN, WRONG_NAME_RATE);
            println!(
                "(one threshold for every store, for comparison: {single:.2} gives <= 1 % wrong \
                 names on them, every other one enrolled from 1 image)"
            );
            let rule = match fixed {
                Some(r) => format!("threshold {:.2}, margin {:.2}", r.threshold, r.margin),
                None => format!(
                    "each store's threshold (1 % / its embeddings per pair), margin {NAME_MARGIN:.2}"
                ),
            };
            let table_of = |size: usize| -> Result<()> {
                println!("k\tknown\treturning\trecognised\twrong names\tstrangers named");
                for &k in &k {
                    anyhow::ensure!(k >= 1, "k must be at least 1");
                    let o = trial_households(&test, k, fixed, size);
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
                Ok(())
            };
            println!(
                "test: {} held-out identities with >= 5 images, every other one enrolled from its \
                 first k images, the others strangers; {rule}",
                test.len()
            );
            table_of(usize::MAX)?;
            if let Some(size) = household {
                println!(
                    "the same in households of {size} (each enrolled alone, every stranger shown)"
                );
                table_of(size)?;
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
                matching_cost_us(&store, &faces, fixed.unwrap_or_else(|| store.rules()))
            );
            Ok(())
        }
    }
}
