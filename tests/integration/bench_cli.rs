//! `polyface bench`: the JSON report and plot on frames from the shared crops, and frames built
//! from a folder of the user's own photos. Structure and sanity only: speed is measured by
//! running the bench, not asserted by tests.

use std::path::Path;

fn bench_json(args: &[&str], data: &Path) -> serde_json::Value {
    let out = crate::support::polyface()
        .arg("bench")
        .args(args)
        .arg("--data")
        .arg(data)
        .args(["--frames", "3", "--json"])
        .output()
        .unwrap();
    crate::support::assert_success(&out);
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn rows(report: &serde_json::Value) -> Vec<(String, u64, f64)> {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["pipeline"].as_str().unwrap().to_string(),
                r["faces"].as_u64().unwrap(),
                r["median_ms"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn bench_reports_both_pipelines_for_every_face_count_and_plots_them() {
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("bench.png");
    let report = bench_json(&["--faces", "1,3", "--plot", plot.to_str().unwrap()], &data);
    assert!(report["device"].as_str().unwrap().starts_with("cpu"));
    let rows = rows(&report);
    let keys: Vec<(&str, u64)> = rows.iter().map(|(p, f, _)| (p.as_str(), *f)).collect();
    assert_eq!(keys, [("sfn", 1), ("sfn", 3), ("mfn", 1), ("mfn", 3)]);
    assert!(rows.iter().all(|(_, _, ms)| *ms > 0.0 && ms.is_finite()));
    // N faces composed means N faces for both pipelines: the crops are the ones that hold one
    // face for both networks (the MFN found 15 in a frame of the first 10 HELEN crops)
    for r in report["results"].as_array().unwrap() {
        assert_eq!(r["faces_found"], r["faces"], "{r}");
    }
    // per-stage figures of the SFN pipeline: detector, the SFN on all faces, fit + tracking
    let stages = &report["results"][1]["stages"];
    for stage in ["detector", "sfn", "fit_track"] {
        assert!(
            stages[stage]["median_ms"].as_f64().unwrap() > 0.0,
            "{stage}: {stages}"
        );
    }
    let image = image::open(&plot).unwrap();
    assert!(image.width() >= 400 && image.height() >= 300);
}

#[test]
fn bench_composes_frames_from_the_users_own_photos() {
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    // two real group photos and a file that is not an image at all
    for name in ["helen_2229778733_1.jpg", "helen_3187824420_2.jpg"] {
        std::fs::copy(data.join("scenes").join(name), photos.join(name)).unwrap();
    }
    std::fs::write(photos.join("notes.jpg"), b"not a jpeg").unwrap();
    let report = bench_json(
        &[
            "--faces",
            "4",
            "--pipeline",
            "mfn",
            "--input",
            photos.to_str().unwrap(),
        ],
        &data,
    );
    assert_eq!(rows(&report).len(), 1);

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = crate::support::polyface()
        .args(["bench", "--frames", "1", "--input"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no faces found"), "{stderr}");
}

#[test]
fn bench_with_avatars_draws_one_per_face_and_times_it() {
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    // the same adapter the avatar stage will use (lavapipe here); skips like the GPU tests
    let Some(_gpu) = crate::gpu_rig::gpu_or_skip() else {
        return;
    };
    let report = bench_json(&["--faces", "2", "--pipeline", "mfn", "--avatars"], &data);
    assert!(
        !report["avatars_on"].as_str().unwrap().is_empty(),
        "{report}"
    );
    let row = &report["results"][0];
    let avatars = row["stages"]["avatars"]["median_ms"].as_f64().unwrap();
    let total = row["median_ms"].as_f64().unwrap();
    let network = row["stages"]["mfn"]["median_ms"].as_f64().unwrap();
    // the total runs from the frame to the avatars drawn: every frame's total holds its avatar
    // stage, so the medians keep that order (stage medians do not add up exactly)
    assert!(
        avatars > 0.0 && network > 0.0 && total >= avatars,
        "total {total} ms, avatars {avatars} ms, network {network} ms"
    );
}
