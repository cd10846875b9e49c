//! The SFN in candle: loading, malformed files, parity with PyTorch, batching.

use std::path::{Path, PathBuf};

use candle_core::{Device, Module};
use polyface::vision::sfn::{self, SfnConfig, DEFAULT_CONFIG_JSON};
use polyface::vision::{CropBox, ModelError, Sfn};

fn default_config() -> SfnConfig {
    serde_json::from_str(DEFAULT_CONFIG_JSON).unwrap()
}

fn random_model(dir: &Path) -> PathBuf {
    let path = dir.join("sfn_random.safetensors");
    sfn::write_random_weights(&default_config(), DEFAULT_CONFIG_JSON, &path, 7).unwrap();
    path
}

#[test]
fn malformed_model_files_name_the_file_tensor_and_shape() {
    let dir = tempfile::tempdir().unwrap();
    let good = random_model(dir.path());
    assert!(Sfn::load(&good, &Device::Cpu).is_ok());

    let missing = dir.path().join("nope.safetensors");
    let err = Sfn::load(&missing, &Device::Cpu).err().unwrap();
    assert!(
        matches!(err, ModelError::Missing(_)) && err.to_string().contains("nope.safetensors"),
        "{err}"
    );

    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = Sfn::load(&truncated, &Device::Cpu).err().unwrap();
    assert!(
        matches!(err, ModelError::Corrupt { .. })
            && err.to_string().contains("truncated.safetensors"),
        "{err}"
    );

    // A file made for another architecture: the first block is wider than this metadata says.
    let mut wider = default_config();
    wider.blocks[0] = [16, 16, 1, 2];
    let wider_json = DEFAULT_CONFIG_JSON.replace("[16, 16, 1, 1]", "[16, 16, 1, 2]");
    let mismatched = dir.path().join("mismatched.safetensors");
    sfn::write_random_weights(&wider, &wider_json, &mismatched, 1).unwrap();
    let bytes = std::fs::read(&mismatched).unwrap();
    // Keep the tensors, claim the default architecture: blocks.0 has an expand layer it should not.
    let text = String::from_utf8_lossy(&bytes[..2000]).to_string();
    assert!(text.contains("[16, 16, 1, 2]"));
    let patched: Vec<u8> = {
        let needle = b"[16, 16, 1, 2]";
        let mut out = bytes.clone();
        let at = out.windows(needle.len()).position(|w| w == needle).unwrap();
        out[at..at + needle.len()].copy_from_slice(b"[16, 16, 1, 1]");
        out
    };
    std::fs::write(&mismatched, patched).unwrap();
    let err = Sfn::load(&mismatched, &Device::Cpu).err().unwrap();
    let text = err.to_string();
    assert!(
        text.contains("mismatched.safetensors") && text.contains("blocks.0.dw.weight"),
        "{text}"
    );
    assert!(
        text.contains("[32, 1, 3, 3]") && text.contains("[16, 1, 3, 3]"),
        "{text}"
    );
}

#[test]
fn batched_faces_match_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let model = Sfn::load(&random_model(dir.path()), &Device::Cpu).unwrap();
    let frame = crate::support::quadrants(320, 240, 3);
    let crops: Vec<CropBox> = (0..4)
        .map(|i| CropBox {
            center: glam::Vec2::new(60.0 + 60.0 * i as f32, 120.0),
            side: 90.0 + 10.0 * i as f32,
        })
        .collect();
    let batch = sfn::crop_batch(&frame, &crops, &Device::Cpu).unwrap();
    let together = model.forward(&batch).unwrap();
    for (i, crop) in crops.iter().enumerate() {
        let single = model
            .forward(&sfn::crop_batch(&frame, &[*crop], &Device::Cpu).unwrap())
            .unwrap();
        let row = together.narrow(0, i, 1).unwrap();
        let diff = crate::support::max_abs_diff(&row, &single);
        assert!(diff < 1e-4, "face {i}: {diff}");
    }
    let faces = model.observe(&frame, &crops).unwrap();
    assert_eq!(faces.len(), 4);
    for face in &faces {
        assert_eq!(face.landmarks.len(), 68);
        assert_eq!(face.blendshapes.len(), 51);
        assert!(face.blendshapes.iter().all(|b| (0.0..=1.0).contains(b)));
        assert!((0.0..=1.0).contains(&face.score));
        assert!((face.rotation.determinant() - 1.0).abs() < 1e-4);
    }
    assert!(model.observe(&frame, &[]).unwrap().is_empty());
}

/// candle reproduces the PyTorch outputs stored with the shipped weights.
#[test]
fn shipped_sfn_matches_pytorch_within_1e_3() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model_path = root.join("models/sfn.safetensors");
    let fixture_path = root.join("tests/fixtures/sfn_parity.safetensors");
    if !model_path.exists() || !fixture_path.exists() {
        assert!(
            !crate::support::in_ci() || !model_path.exists(),
            "fixture missing for shipped model"
        );
        eprintln!("skipped: no shipped SFN yet");
        return;
    }
    let model = Sfn::load(&model_path, &Device::Cpu).unwrap();
    let fixture = candle_core::safetensors::load(&fixture_path, &Device::Cpu).unwrap();
    let input_u8 = &fixture["input_u8"];
    let input = crate::support::normalised(input_u8);
    let expected = &fixture["output"];
    let got = model.forward(&input).unwrap();
    let diff = crate::support::max_abs_diff(&got, expected);
    assert!(diff < 1e-3, "max |candle - pytorch| = {diff}");
}

/// `polyface eval` (Rust crops + candle) reproduces the validation metrics the training code
/// measured for the shipped weights on HELEN test (PyTorch crops + PyTorch).
#[test]
fn eval_reproduces_the_training_side_validation_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model_path = root.join("models/sfn.safetensors");
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    if !model_path.exists() {
        eprintln!("skipped: no shipped SFN yet");
        return;
    }
    let file = polyface::vision::ModelFile::open(&model_path, &Device::Cpu).unwrap();
    let trained: serde_json::Value = file.meta_json("validation_metrics").unwrap();
    let output = crate::support::polyface()
        .args([
            "eval",
            "--pipeline",
            "sfn",
            "--given-boxes",
            "--json",
            "--data",
        ])
        .arg(data.join("helen/test.jsonl"))
        .arg("--models")
        .arg(root.join("models"))
        .output()
        .unwrap();
    crate::support::assert_success(&output);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["faces"], 330);
    let close = |key: &str, trained_key: &str, tolerance: f64| {
        let ours = report[key].as_f64().unwrap();
        let theirs = trained[trained_key].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() <= tolerance,
            "{key}: eval {ours} vs training {theirs}"
        );
    };
    // Training validates on its compact cache (the crops re-encoded at 128 px); eval reads the
    // original JPEGs. A wrong crop convention costs several % NME; re-encoding costs ~0.1 %.
    close("nme", "nme", 0.3);
    close("fr10", "fail10", 2.0);
    close("pose_deg", "pose_deg", 0.5);
    close("blend_mae", "blend_mae", 0.005);
}

#[test]
fn eval_explains_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, "").unwrap();
    let output = crate::support::polyface()
        .args(["eval", "--given-boxes", "--data"])
        .arg(&data)
        .arg("--models")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("sfn.safetensors") && stderr.contains("not found"),
        "{stderr}"
    );
}

/// `eval --candidates`: every candidate of the SFN pipeline (the face confidence not cut) with
/// its crop and outcome, the training data of that confidence; hits score high, and the
/// SFN's confidence tells them from the false alarms.
#[test]
fn eval_writes_every_candidate_with_its_outcome() {
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("candidates.jsonl");
    let run = |extra: &[&str]| {
        crate::support::polyface()
            .args(["eval", "--split", "test", "--limit", "30"])
            .args(extra)
            .arg("--data")
            .arg(data.join("groups.jsonl"))
            .arg("--models")
            .arg(root.join("models"))
            .arg("--candidates")
            .arg(&out)
            .output()
            .unwrap()
    };
    crate::support::assert_success(&run(&[]));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scores = |outcome: &str| -> Vec<f64> {
        lines
            .iter()
            .filter(|c| c["outcome"] == outcome)
            .map(|c| c["score"].as_f64().unwrap())
            .collect()
    };
    let (hits, alarms) = (scores("hit"), scores("false_positive"));
    assert!(
        hits.len() > 30 && !alarms.is_empty(),
        "{} / {}",
        hits.len(),
        alarms.len()
    );
    assert!(
        alarms.iter().any(|&s| s < 0.5),
        "the confidence is not cut: low-scoring candidates are written"
    );
    for c in &lines {
        let crop: Vec<f64> = serde_json::from_value(c["crop"].clone()).unwrap();
        assert!(crop.len() == 3 && crop[2] > 4.0, "{c}");
        assert_eq!(c["split"], "test");
        assert!(Path::new(c["image"].as_str().unwrap()).is_file());
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&hits) > 0.8 && mean(&alarms) < 0.5,
        "hits {:.2}, false alarms {:.2}",
        mean(&hits),
        mean(&alarms)
    );
    let mfn = run(&["--pipeline", "mfn"]);
    assert!(!mfn.status.success());
    assert!(String::from_utf8_lossy(&mfn.stderr).contains("--candidates is for the SFN pipeline"));
}
