//! Recorded takes: animated glb per person (re-imported, validated), `recover` after a crash,
//! a full disk while recording, and playback in the app.

use std::path::{Path, PathBuf};

use crate::support::polyface;

/// Records a short take of real faces (two people per frame) with `track --record`.
fn record_take(dir: &Path) -> Option<PathBuf> {
    let data = crate::support::shared_data()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !root.join("models/detector.safetensors").exists() {
        eprintln!("skipped: no shipped models");
        return None;
    }
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..8 {
        let name = if i < 4 {
            "helen_3187824420_2.jpg"
        } else {
            "helen_2988554491_1.jpg"
        };
        std::fs::copy(
            data.join("scenes").join(name),
            frames.join(format!("{i:03}.jpg")),
        )
        .unwrap();
    }
    let take = dir.join("take");
    let out = polyface()
        .args(["track", "--fps", "10", "--input"])
        .arg(&frames)
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--record")
        .arg(&take)
        .output()
        .unwrap();
    crate::support::assert_success(&out);
    Some(take)
}

fn glb_files(take: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(take)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "glb"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_take_gives_each_person_an_animated_glb_with_the_recorded_weights() {
    let dir = tempfile::tempdir().unwrap();
    let Some(take) = record_take(dir.path()) else {
        return;
    };
    let files = glb_files(&take);
    assert!(!files.is_empty(), "at least one person recorded");
    // what the take should hold, from session.jsonl
    let session = std::fs::read_to_string(take.join("session.jsonl")).unwrap();
    let mut expected: std::collections::BTreeMap<u32, Vec<polyface::record::Key>> =
        Default::default();
    let mut start = None;
    for line in session.lines() {
        let frame = polyface::record::FrameRecord::parse(line).unwrap();
        assert_eq!(frame.version, polyface::record::FORMAT_VERSION);
        let t = frame.time_s;
        let t0 = *start.get_or_insert(t);
        for p in &frame.people {
            if let Some((id, key)) = polyface::record::Key::from_person(t - t0, p) {
                expected.entry(id).or_default().push(key);
            }
        }
    }
    for path in &files {
        let id: u32 = path.file_stem().unwrap().to_str().unwrap()[6..]
            .parse()
            .unwrap();
        let keys = &expected[&id];
        let (doc, buffers, _) = gltf::import(path).unwrap();
        let animation = doc.animations().next().expect("one animation");
        let mut saw_weights = false;
        for channel in animation.channels() {
            let reader = channel.reader(|b| Some(&buffers[b.index()]));
            let times: Vec<f32> = reader.read_inputs().unwrap().collect();
            assert_eq!(times.len(), keys.len());
            for (t, k) in times.iter().zip(keys) {
                assert!(
                    (*t as f64 - k.time_s).abs() < 1e-4,
                    "time {t} vs {}",
                    k.time_s
                );
            }
            match reader.read_outputs().unwrap() {
                gltf::animation::util::ReadOutputs::MorphTargetWeights(w) => {
                    let w: Vec<f32> = w.into_f32().collect();
                    assert_eq!(w.len(), keys.len() * 52);
                    for (chunk, k) in w.chunks(52).zip(keys) {
                        for (a, b) in chunk.iter().zip(&k.weights) {
                            assert!((a - b).abs() < 1e-4);
                        }
                    }
                    saw_weights = true;
                }
                gltf::animation::util::ReadOutputs::Rotations(r) => {
                    let r: Vec<[f32; 4]> = r.into_f32().collect();
                    for (q, k) in r.iter().zip(keys) {
                        let want = k.head.normalize().to_array();
                        let dot: f32 = q.iter().zip(&want).map(|(a, b)| a * b).sum();
                        assert!(dot.abs() > 0.9999, "{q:?} vs {want:?}");
                    }
                }
                _ => panic!("unexpected channel"),
            }
        }
        assert!(saw_weights);
        // the morph targets animated are the ARKit ones, by name
        let head = doc.meshes().find(|m| m.name() == Some("Head")).unwrap();
        let extras = head.extras().as_ref().unwrap().get();
        assert!(extras.contains("jawOpen") && extras.contains("eyeBlinkLeft"));
        let validated = crate::avatars::khronos_validator(path);
        if let Some(issues) = validated {
            assert_eq!(issues["numErrors"], 0, "{}: {issues}", path.display());
        }
    }
}

#[test]
fn recover_rebuilds_exactly_what_stopping_writes() {
    let dir = tempfile::tempdir().unwrap();
    let Some(take) = record_take(dir.path()) else {
        return;
    };
    let files = glb_files(&take);
    assert!(!files.is_empty());
    let stopped: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    for f in &files {
        std::fs::remove_file(f).unwrap();
    }
    // a crash mid-line leaves a torn last line: recover skips it
    let session = take.join("session.jsonl");
    let mut text = std::fs::read_to_string(&session).unwrap();
    text.push_str("{\"frame\": 99, \"time_s\": 12.");
    std::fs::write(&session, text).unwrap();
    let out = polyface().arg("recover").arg(&take).output().unwrap();
    crate::support::assert_success(&out);
    for (path, want) in files.iter().zip(&stopped) {
        assert!(
            std::fs::read(path).unwrap() == *want,
            "{} differs",
            path.display()
        );
    }
    let out = polyface()
        .arg("recover")
        .arg(dir.path().join("nothing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the take"));
}

#[test]
fn a_full_disk_stops_the_recording_not_the_tracking() {
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..6 {
        std::fs::copy(
            data.join("scenes/helen_3187824420_2.jpg"),
            frames.join(format!("{i}.jpg")),
        )
        .unwrap();
    }
    // every person's CSV lands on a full disk
    let take = dir.path().join("take");
    std::fs::create_dir_all(&take).unwrap();
    for id in 1..=8 {
        std::os::unix::fs::symlink("/dev/full", take.join(format!("person{id}.csv"))).unwrap();
    }
    let out = polyface()
        .args(["track", "--input"])
        .arg(&frames)
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg("--record")
        .arg(&take)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tracking goes on: {stderr}");
    assert!(
        stderr.contains("recording stopped") && stderr.contains("disk full"),
        "{stderr}"
    );
    // tracking wrote every frame; the take's session log holds whole lines only
    let faces = std::fs::read_to_string(dir.path().join("out/faces.jsonl")).unwrap();
    assert_eq!(faces.lines().count(), 6);
    let session = std::fs::read_to_string(take.join("session.jsonl")).unwrap();
    assert!(session.lines().count() >= 1);
    for line in session.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("whole JSON lines");
    }
}

#[test]
fn the_app_plays_a_take_with_one_avatar_per_recorded_person() {
    if !crate::support::have_tool("Xvfb") || !crate::support::have_tool("import") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(take) = record_take(dir.path()) else {
        return;
    };
    let xvfb = crate::window_smoke::Xvfb::start();
    let mut app = polyface()
        .args(["run", "--exit-after", "40", "--play"])
        .arg(&take)
        .env("DISPLAY", &xvfb.display)
        .env_remove("WAYLAND_DISPLAY")
        .env("POLYFACE_CONFIG", dir.path().join("settings.json"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let shot = crate::window_smoke::screenshots_dir().join("app_playback.png");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(700));
        if let Some(status) = app.try_wait().unwrap() {
            panic!("the app exited early with {status}");
        }
        let image = xvfb.screenshot(&shot);
        if crate::window_smoke::distinct_colours(&image, (475, 0, 925, 720)) > 300 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no avatars while playing; see {}",
            shot.display()
        );
    }
    let _ = app.kill();
    let _ = app.wait();
}
