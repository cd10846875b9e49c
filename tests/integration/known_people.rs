//! People you know: enrolment from the shared identities (held out from the re-ID net's
//! training), recognition of returning people and strangers, one name per person in view, the
//! store's command line, a corrupt store, and names in `track`'s outputs and takes.

use std::path::{Path, PathBuf};

use candle_core::Device;
use polyface::known::eval::{embed_heldout, split, trial, trial_households, Identity};
use polyface::known::{KnownPeople, Recogniser, FAR_TABLE};
use polyface::vision::ReId;

fn reid() -> Option<ReId> {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/reid.safetensors");
    if !model.exists() {
        eprintln!("skipped: no shipped re-ID model");
        return None;
    }
    Some(ReId::load(&model, &Device::Cpu).unwrap())
}

/// The held-out test identities (>= 5 images) and the calibration ones (2-4), embedded.
fn identities(reid: &ReId, data: &Path) -> (Vec<Identity>, Vec<Identity>) {
    let (all, _) = embed_heldout(reid, data).unwrap();
    split(all)
}

#[test]
fn enrolled_people_get_their_names_and_strangers_none() {
    let Some(reid) = reid() else { return };
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    let (test, calibration) = identities(&reid, &data);
    assert_eq!(test.len(), 50, "held-out identities with >= 5 images");
    assert_eq!(calibration.len(), 184);
    // The app's false-accept table is what the calibration identities give (never the test ones).
    let fars: Vec<f64> = FAR_TABLE.iter().map(|r| r.0).collect();
    let (table, _) = polyface::known::eval::impostor_thresholds(&calibration, &fars);
    for (measured, shipped) in table.iter().zip(FAR_TABLE) {
        assert!(
            (measured.1 - shipped.1).abs() < 0.002,
            "{measured:?} vs {shipped:?}"
        );
    }
    // k = 3 images per enrolled person; every other identity is a stranger; each store's own
    // threshold. Measured with the shipped net: 25 people enrolled together 40.9 % recognised,
    // 0 wrong names; households of 5, 55.2 % at 0.61 % (the 95 % is out of this net's
    // reach); the floors catch a regression, the 1 % ceiling is the promise.
    let o = trial(&test, 3, None);
    assert_eq!(o.known_people, 25);
    assert!(o.returning > 100 && o.strangers > 200, "{o:?}");
    assert!(o.wrong_name_rate() <= 0.01, "{o:?}");
    assert!(o.recognition_rate() >= 0.35, "{o:?}");
    let o = trial_households(&test, 3, None, 5);
    assert!(o.wrong_name_rate() <= 0.01, "{o:?}");
    assert!(o.recognition_rate() >= 0.5, "{o:?}");

    // Person A from k images: no stranger's image is named A; the same face twice in one frame
    // gets the name once.
    let a = &test[0];
    let mut store = KnownPeople::default();
    store.enrol(&a.name, &a.embeddings[..3]).unwrap();
    for stranger in test.iter().skip(1).step_by(2) {
        for face in &stranger.embeddings {
            assert_eq!(store.recognise(&[face], &[], store.rules()), vec![None]);
        }
    }
    // an enrolled look, shown twice in one frame (two people who look alike): one gets the name
    let twin = &a.embeddings[0];
    let shared = std::sync::Arc::new(std::sync::Mutex::new(store));
    let mut recogniser = Recogniser::new(shared, None);
    let given = recogniser.recognise(&[(1, twin), (2, twin)], &[1, 2]);
    assert_eq!(given.len(), 1, "one name, one person: {given:?}");
    assert_eq!(given[0].1, a.name);
}

#[test]
fn people_list_forget_and_a_corrupt_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("people.json");
    let unit = |k: usize| {
        let mut v = vec![0.0f32; 128];
        v[k] = 1.0;
        v
    };
    let mut store = KnownPeople::default();
    let ana = store.enrol("Ana", &[unit(0), unit(1)]).unwrap();
    ana.choices.avatar = Some("ana.vrm".into());
    ana.choices.smoothing = Some(polyface::track::Smoothing::default().steadier(2.0));
    store.enrol("Ben Ott", &[unit(2)]).unwrap();
    store.save(&path).unwrap();
    let people = |args: &[&str]| {
        crate::support::polyface()
            .arg("people")
            .args(args)
            .arg("--store")
            .arg(&path)
            .output()
            .unwrap()
    };
    let list = people(&["list"]);
    crate::support::assert_success(&list);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("Ana\t2 embeddings\tana.vrm\tnot calibrated\tsmoothing 2.00x the default")
            && text.contains(
                "Ben Ott\t1 embeddings\tdefault avatar\tnot calibrated\tthe app's smoothing"
            ),
        "{text}"
    );
    crate::support::assert_success(&people(&["forget", "Ana"]));
    let left = KnownPeople::load(&path).unwrap();
    assert_eq!(left.people.len(), 1);
    assert_eq!(left.people[0].name, "Ben Ott");
    let missing = people(&["forget", "Ana"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nobody is named \"Ana\""));

    // a corrupt file: a clear error naming it; forget --all still clears it
    std::fs::write(&path, "{\"version\": 1, \"people\": [{\"name\": 3}]}").unwrap();
    let bad = people(&["list"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("people.json") && err.contains("forget --all"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    // ... and the app's headless twin goes on without names
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..3u8 {
        crate::support::quadrants(64, 48, i)
            .save(frames.join(format!("{i}.png")))
            .unwrap();
    }
    let track = crate::support::polyface()
        .args(["track", "--pipeline", "none", "--input"])
        .arg(&frames)
        .arg("--out")
        .arg(dir.path().join("out"))
        .env("POLYFACE_PEOPLE", &path)
        .output()
        .unwrap();
    crate::support::assert_success(&track);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"version\": 1, \"people\": [{\"name\": 3}]}",
        "an unreadable store is never overwritten"
    );
    crate::support::assert_success(&people(&["forget", "--all"]));
    assert!(!path.exists());
    let empty = people(&["list"]);
    crate::support::assert_success(&empty);
    assert!(String::from_utf8_lossy(&empty.stdout).contains("nobody is named"));
}

/// The named person's records in `faces.jsonl` carry the name, a stranger's none, and the take
/// has `NAME.csv` / `NAME.glb`. A is enrolled from one image of theirs and shown in that image
/// (this checks the path from the store to the files; recognition rates are measured above).
#[test]
fn track_writes_the_name_in_faces_jsonl_and_names_the_take_files() {
    let Some(reid) = reid() else { return };
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    let wild = std::fs::read_to_string(data.join("wild.jsonl")).unwrap();
    let heldout = polyface::known::eval::heldout_identities();
    let records: Vec<serde_json::Value> = wild
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["identity"].as_str().is_some_and(|i| heldout.contains(i)))
        .collect();
    let (a, b) = (&records[0], &records[records.len() - 1]);
    assert_ne!(a["identity"], b["identity"]);
    let load = |r: &serde_json::Value| -> (image::RgbImage, Vec<glam::Vec2>) {
        let image = image::open(data.join(r["image"].as_str().unwrap()))
            .unwrap()
            .into_rgb8();
        let points = r["landmarks68"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| glam::Vec2::new(p[0].as_f64().unwrap() as f32, p[1].as_f64().unwrap() as f32))
            .collect();
        (image, points)
    };
    let ((face_a, points_a), (face_b, _)) = (load(a), load(b));
    let embedding = reid
        .embed_aligned(&[reid.align(&face_a, &points_a).unwrap()])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("people.json");
    let mut store = KnownPeople::default();
    store.enrol("Ana", &embedding).unwrap();
    store.save(&store_path).unwrap();

    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    // 10 fps: A (1 s), nobody (2 s), B (1 s)
    let mut plan: Vec<image::RgbImage> = Vec::new();
    plan.extend((0..10).map(|_| crate::support::frame_with(Some(&face_a), 200, 240)));
    plan.extend((0..20).map(|_| crate::support::frame_with(None, 0, 0)));
    plan.extend((0..10).map(|_| crate::support::frame_with(Some(&face_b), 200, 240)));
    for (i, f) in plan.iter().enumerate() {
        f.save(frames.join(format!("{i:03}.png"))).unwrap();
    }
    let out = dir.path().join("out");
    let take = dir.path().join("take");
    let run = crate::support::polyface()
        .args(["track", "--fps", "10", "--input"])
        .arg(&frames)
        .arg("--out")
        .arg(&out)
        .arg("--record")
        .arg(&take)
        .env("POLYFACE_PEOPLE", &store_path)
        .output()
        .unwrap();
    crate::support::assert_success(&run);
    let names = |range: std::ops::Range<usize>| -> Vec<Option<String>> {
        std::fs::read_to_string(out.join("faces.jsonl"))
            .unwrap()
            .lines()
            .skip(range.start)
            .take(range.len())
            .flat_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["people"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["state"] == "confirmed")
                    .map(|p| p["name"].as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let a_names = names(0..10);
    assert!(
        a_names.iter().any(|n| n.as_deref() == Some("Ana")),
        "A is named: {a_names:?}"
    );
    assert!(a_names
        .iter()
        .all(|n| n.is_none() || n.as_deref() == Some("Ana")));
    let b_names = names(30..40);
    assert!(
        !b_names.is_empty() && b_names.iter().all(Option::is_none),
        "{b_names:?}"
    );
    let files: Vec<PathBuf> = std::fs::read_dir(&take)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let has = |name: &str| files.iter().any(|p| p.file_name().unwrap() == name);
    assert!(has("Ana.csv") && has("Ana.glb"), "{files:?}");
    assert!(
        files.iter().any(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("person") && n.ends_with(".glb")
        }),
        "the stranger keeps a personN file: {files:?}"
    );
}

/// The app's path, without the window: a person is named through the inference worker (as the
/// card's "remember" button does), the store holds their embeddings and settings; in a new
/// session they get their name back soon after appearing; forgetting removes the name.
#[test]
fn a_person_named_in_one_session_is_recognised_in_the_next() {
    use polyface::capture::{self, LatestFrame, SourceOptions, SourceSpec};
    use polyface::inference::InferenceWorker;
    use polyface::processor::{FrameProcessor, Processed};
    use std::time::{Duration, Instant};

    let Some(_) = reid() else { return };
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let wild = std::fs::read_to_string(data.join("wild.jsonl")).unwrap();
    let heldout = polyface::known::eval::heldout_identities();
    let first = wild
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["identity"].as_str().is_some_and(|i| heldout.contains(i)))
        .unwrap();
    let face = image::open(data.join(first["image"].as_str().unwrap()))
        .unwrap()
        .into_rgb8();
    let dir = tempfile::tempdir().unwrap();
    let frame = dir.path().join("a.png");
    crate::support::frame_with(Some(&face), 200, 240)
        .save(&frame)
        .unwrap();
    let store_path = dir.path().join("people.json");
    let cpu = candle_core::Device::Cpu;
    let session = |store: polyface::known::SharedKnownPeople| {
        let options = SourceOptions {
            fps: Some(10.0),
            looped: true,
            ..Default::default()
        };
        let capture = LatestFrame::spawn(
            capture::opener(SourceSpec::Path(frame.clone()), options),
            true,
            true,
        );
        let pipeline =
            polyface::vision::load_pipeline(polyface::vision::PipelineKind::Sfn, &models, &cpu)
                .unwrap();
        let people = polyface::track::People::default()
            .with_reid_from(&models, &cpu)
            .with_known(Recogniser::new(store, Some(store_path.clone())));
        InferenceWorker::spawn(capture, FrameProcessor::new(Some(pipeline), people))
    };
    let wait = |worker: &InferenceWorker, what: &str, done: &dyn Fn(&Processed) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "{what}: not within 60 s");
            if let Some(p) = worker.take() {
                if done(&p) {
                    return p;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let confirmed = |p: &Processed| {
        p.people
            .iter()
            .find(|q| q.state == polyface::track::TrackState::Confirmed)
            .cloned()
    };

    // session 1: nobody is known; the person is named with an avatar, a neutral face and their
    // own smoothing
    let store = std::sync::Arc::new(std::sync::Mutex::new(KnownPeople::default()));
    let worker = session(store.clone());
    let seen = wait(&worker, "a confirmed person", &|p| confirmed(p).is_some());
    let person = confirmed(&seen).unwrap();
    assert_eq!(person.name, None, "a stranger at first");
    let steady = polyface::track::Smoothing::default().steadier(2.5);
    let choices = polyface::known::Choices {
        avatar: Some("ana.vrm".into()),
        neutral: Some(vec![0.1; 52]),
        smoothing: Some(steady),
    };
    worker.name_person(person.id, "Ana".into(), choices.clone());
    wait(&worker, "the name on the person", &|p| {
        confirmed(p).is_some_and(|q| q.name.as_deref() == Some("Ana"))
    });
    drop(worker);
    let stored = KnownPeople::load(&store_path).unwrap();
    assert_eq!(stored.people.len(), 1);
    let ana = &stored.people[0];
    assert_eq!(ana.name, "Ana");
    assert!((1..=polyface::known::MAX_EMBEDDINGS).contains(&ana.embeddings.len()));
    assert_eq!(ana.choices, choices);
    let text = std::fs::read_to_string(&store_path).unwrap();
    assert!(!text.contains("png") && !text.contains("jpg"), "no images");
    app_gives_back_what_ana_chose(&frame, &store_path, dir.path());
    let stored = KnownPeople::load(&store_path).unwrap();

    // session 2: the store read from disk; the name comes back within a second of frame time
    let store = std::sync::Arc::new(std::sync::Mutex::new(stored));
    let worker = session(store.clone());
    let first_seen = wait(&worker, "a confirmed person", &|p| confirmed(p).is_some());
    let named = wait(&worker, "Ana recognised", &|p| {
        confirmed(p).is_some_and(|q| q.name.as_deref() == Some("Ana"))
    });
    let delay = named
        .frame
        .timestamp
        .saturating_sub(first_seen.frame.timestamp);
    assert!(delay <= Duration::from_secs(1), "named after {delay:?}");
    // forgetting: the UI deletes the stored person and tells the worker
    {
        let mut s = store.lock().unwrap();
        assert!(s.forget("Ana"));
        s.save(&store_path).unwrap();
    }
    worker.forgotten(Some("Ana".into()));
    wait(&worker, "the name gone", &|p| {
        confirmed(p).is_some_and(|q| q.name.is_none())
    });
    assert!(!store_path.exists(), "nobody named: no file");
}

/// The app (in a window under Xvfb) recognises Ana and gives her what she chose: her own
/// smoothing and neutral face, checked through what it writes back when it closes (a person
/// whose choices were not given back would be stored with none).
fn app_gives_back_what_ana_chose(frame: &Path, store_path: &Path, dir: &Path) {
    if !crate::support::have_tool("Xvfb") {
        return;
    }
    let before = KnownPeople::load(store_path).unwrap();
    let xvfb = crate::window_smoke::Xvfb::start();
    let out = crate::support::polyface()
        .args(["-v", "run", "--fps", "5", "--exit-after", "12", "--input"])
        .arg(frame)
        .env("DISPLAY", &xvfb.display)
        .env_remove("WAYLAND_DISPLAY")
        .env("POLYFACE_CONFIG", dir.join("settings.json"))
        .env("POLYFACE_PEOPLE", store_path)
        .output()
        .unwrap();
    crate::support::assert_success(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("is Ana (similarity"),
        "Ana was not recognised: {log}"
    );
    let after = KnownPeople::load(store_path).unwrap();
    let (was, now) = (&before.people[0].choices, &after.people[0].choices);
    assert!(was.smoothing.is_some() && was.neutral.is_some());
    assert_eq!(now.smoothing, was.smoothing, "her smoothing came back");
    assert_eq!(now.neutral, was.neutral, "her neutral face came back");
}
