//! The app's state behind the window: the live SFN/MFN switch of the inference worker.

use std::path::Path;
use std::time::{Duration, Instant};

use polyface::capture::{self, LatestFrame, SourceOptions, SourceSpec};
use polyface::inference::InferenceWorker;

#[test]
fn the_pipeline_switches_live_without_restarting_capture() {
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    if !models.join("mfn.safetensors").exists() {
        eprintln!("skipped: no shipped MFN");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in ["helen_3187824420_2.jpg", "helen_2988554491_1.jpg"]
        .iter()
        .enumerate()
    {
        std::fs::copy(
            data.join("scenes").join(name),
            dir.path().join(format!("{i}.jpg")),
        )
        .unwrap();
    }
    let options = SourceOptions {
        fps: Some(20.0),
        looped: true,
        ..Default::default()
    };
    let capture = LatestFrame::spawn(
        capture::opener(SourceSpec::Path(dir.path().into()), options),
        true,
        true,
    );
    let cpu = candle_core::Device::Cpu;
    let sfn = polyface::vision::load_pipeline("sfn", &models, &cpu).unwrap();
    let worker = InferenceWorker::spawn(capture, Some(sfn), Default::default());
    let wait_for = |name: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "no {name} frame with faces in 30 s"
            );
            if let Some(p) = worker.take() {
                if p.pipeline == Some(name) && !p.people.is_empty() {
                    return p.frame.seq;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let before = wait_for("sfn");
    assert_eq!(worker.pipeline_name(), Some("sfn"));
    worker.switch_pipeline(polyface::vision::load_pipeline("mfn", &models, &cpu).unwrap());
    let after = wait_for("mfn");
    assert_eq!(worker.pipeline_name(), Some("mfn"));
    assert!(after > before, "frames kept flowing from the same capture");
    // both pipelines' recent medians are there for the side-by-side readout
    let medians: Vec<&str> = worker.pipeline_medians().iter().map(|m| m.0).collect();
    assert_eq!(medians, ["sfn", "mfn"]);
    assert!(worker.pipeline_medians().iter().all(|m| m.1 > 0.0));
}
