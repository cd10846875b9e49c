//! `polyface track` and friends, run as a user would run them.

use crate::support::{frame_folder, have_tool, polyface};

fn stderr_lines(output: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn track_writes_one_timing_row_per_frame() {
    let dir = tempfile::tempdir().unwrap();
    let frames = frame_folder(&dir.path().join("in"), 7, 96, 64);
    let out = dir.path().join("out");
    let output = polyface()
        .args(["track", "--pipeline", "none", "--input"])
        .arg(&frames)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    crate::support::assert_success(&output);
    let csv = std::fs::read_to_string(out.join("timings.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 7);
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(header[0], "frame");
    for stage in [
        "capture_ms",
        "convert_ms",
        "network_ms",
        "fit_ms",
        "track_ms",
        "render_ms",
        "present_ms",
    ] {
        assert!(
            header.contains(&stage),
            "missing column {stage}: {header:?}"
        );
    }
    for (i, row) in lines[1..].iter().enumerate() {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells.len(), header.len());
        assert_eq!(cells[0], i.to_string());
        let capture: f64 = cells[1]
            .parse()
            .expect("capture is measured for every frame");
        assert!((0.0..10_000.0).contains(&capture));
    }
    let jsonl = std::fs::read_to_string(out.join("faces.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 7);
    assert_eq!(records[6]["frame"], 6);
    assert_eq!(records[6]["width"], 96);
    assert_eq!(
        records[0]["people"],
        serde_json::json!([]),
        "no pipeline, no people"
    );
}

#[test]
fn track_on_a_corrupt_video_exits_non_zero_with_one_line() {
    if !have_tool("ffmpeg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("broken.mp4");
    std::fs::write(&video, vec![0x42u8; 4096]).unwrap();
    let output = polyface()
        .args(["track", "--pipeline", "none", "--input"])
        .arg(&video)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("broken.mp4"),
        "{lines:?}"
    );
}

#[test]
fn missing_input_and_empty_folder_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    for input in [dir.path().join("nowhere"), dir.path().to_path_buf()] {
        let output = polyface()
            .args(["track", "--pipeline", "none", "--input"])
            .arg(&input)
            .arg("--out")
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let lines = stderr_lines(&output);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(&*input.to_string_lossy()), "{lines:?}");
    }
}

#[test]
fn help_explains_the_commands() {
    let output = polyface().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for word in ["run", "track", "cameras", "--verbose"] {
        assert!(help.contains(word), "help lacks {word}:\n{help}");
    }
    let output = polyface().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for word in ["--camera", "--input", "--resolution", "--fps"] {
        assert!(help.contains(word), "run --help lacks {word}:\n{help}");
    }
}

#[test]
fn track_reads_real_photos_from_the_shared_data() {
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let output = polyface()
        .args([
            "track",
            "--pipeline",
            "none",
            "--max-frames",
            "40",
            "--input",
        ])
        .arg(data.join("helen/test"))
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    crate::support::assert_success(&output);
    let jsonl = std::fs::read_to_string(dir.path().join("faces.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 40);
    assert!(records
        .iter()
        .all(|r| r["width"] == 256 && r["height"] == 256));
}

/// The whole path on real faces: detector → SFN → tracking → Live Link Face takes.
#[test]
fn track_records_real_faces_as_people_with_live_link_takes() {
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if !root.join("models/detector.safetensors").exists() {
        eprintln!("skipped: no shipped detector");
        return;
    }
    let images = polyface::eval::read_jsonl(&data.join("helen/test.jsonl")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    // Ten people, each still for three frames, all at the same spot (without re-identification a
    // face that replaces another in place continues its track, so IDs are not counted here).
    for (i, image) in images.iter().take(10).enumerate() {
        for k in 0..3 {
            std::fs::copy(&image.path, frames.join(format!("{:03}.jpg", i * 3 + k))).unwrap();
        }
    }
    let take = dir.path().join("take");
    let output = polyface()
        .args(["track", "--pipeline", "sfn", "--input"])
        .arg(&frames)
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg("--record")
        .arg(&take)
        .output()
        .unwrap();
    crate::support::assert_success(&output);
    let jsonl = std::fs::read_to_string(dir.path().join("out/faces.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 30);
    let mut people = std::collections::BTreeSet::new();
    let mut errors = Vec::new();
    let mut tracked_frames = 0;
    for (f, record) in records.iter().enumerate() {
        let truth = images[f / 3].faces[0].landmarks.as_deref().unwrap();
        for person in record["people"].as_array().unwrap() {
            if person["state"] != "confirmed" {
                continue;
            }
            people.insert(person["id"].as_u64().unwrap());
            tracked_frames += 1;
            let points: Vec<glam::Vec2> = person["landmarks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    glam::Vec2::new(p[0].as_f64().unwrap() as f32, p[1].as_f64().unwrap() as f32)
                })
                .collect();
            errors.push(polyface::eval::nme(&points, truth));
        }
    }
    assert!(
        tracked_frames >= 15,
        "a confirmed person in at least half the frames: {tracked_frames}"
    );
    errors.sort_by(|a, b| a.total_cmp(b));
    let median = errors[errors.len() / 2];
    assert!(median < 0.15, "median NME of tracked faces {median}");
    // One Live Link Face take per person, one row per confirmed frame, and the session log.
    let mut rows = 0;
    for id in &people {
        let csv = std::fs::read_to_string(take.join(format!("person{id}.csv"))).unwrap();
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some(polyface::record::LIVE_LINK_HEADER));
        rows += lines.count();
    }
    assert_eq!(rows, tracked_frames);
    let session = std::fs::read_to_string(take.join("session.jsonl")).unwrap();
    assert_eq!(session.lines().count(), 30);
}
