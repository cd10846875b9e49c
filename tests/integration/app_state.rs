//! The app's state behind the window: the live SFN/MFN switch of the inference worker.

use std::path::Path;
use std::time::{Duration, Instant};

use polyface::capture::{self, LatestFrame, SourceOptions, SourceSpec};
use polyface::inference::InferenceWorker;
use polyface::processor::FrameProcessor;
use polyface::record::FrameRecord;
use polyface::track::People;

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
    let sfn = polyface::vision::load_pipeline(polyface::vision::PipelineKind::Sfn, &models, &cpu)
        .unwrap();
    let processor = FrameProcessor::new(Some(sfn), People::default());
    let worker = InferenceWorker::spawn(capture, processor);
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
    worker.switch_pipeline(
        polyface::vision::load_pipeline(polyface::vision::PipelineKind::Mfn, &models, &cpu)
            .unwrap(),
    );
    let after = wait_for("mfn");
    assert_eq!(worker.pipeline_name(), Some("mfn"));
    assert!(after > before, "frames kept flowing from the same capture");
    // both pipelines' recent medians are there for the side-by-side readout
    let medians: Vec<&str> = worker.pipeline_medians().iter().map(|m| m.0).collect();
    assert_eq!(medians, ["sfn", "mfn"]);
    assert!(worker.pipeline_medians().iter().all(|m| m.1 > 0.0));
}

/// `track` and the app's inference thread run one frame path: on the same frames they give the
/// same people (IDs, states, landmarks, the weights an avatar gets), frame by frame.
#[test]
fn track_and_the_app_worker_give_the_same_people() {
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    // two people, then a face that replaces them, each held for a few frames
    let names = [
        "helen_3187824420_2.jpg",
        "helen_2988554491_1.jpg",
        "ddfa_emma.jpg",
    ];
    for i in 0..9 {
        std::fs::copy(
            data.join("scenes").join(names[i / 3]),
            frames.join(format!("{i:02}.jpg")),
        )
        .unwrap();
    }
    let options = SourceOptions {
        fps: Some(4.0),
        looped: false,
        ..Default::default()
    };
    let cpu = candle_core::Device::Cpu;
    let processor = || {
        let pipeline =
            polyface::vision::load_pipeline(polyface::vision::PipelineKind::Sfn, &models, &cpu)
                .unwrap();
        FrameProcessor::new(Some(pipeline), People::default())
    };
    let out = dir.path().join("out");
    let job = polyface::headless::TrackJob {
        max_frames: None,
        processor: processor(),
    };
    let spec = SourceSpec::Path(frames.clone());
    polyface::headless::track(&spec, &options, &out, job).unwrap();
    let tracked: Vec<FrameRecord> = FrameRecord::parse_all(
        &std::fs::read_to_string(out.join("faces.jsonl")).unwrap(),
        "faces.jsonl",
    )
    .unwrap();
    assert_eq!(tracked.len(), 9);

    // The worker on the same folder, paced at 4 frames a second: it keeps up with every frame.
    let capture = LatestFrame::spawn(capture::opener(spec, options), true, false);
    let worker = InferenceWorker::spawn(capture, processor());
    let mut seen: Vec<FrameRecord> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 9 && Instant::now() < deadline {
        if let Some(p) = worker.take() {
            seen.push(p.record);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (_, dropped) = worker.capture().counts();
    assert_eq!(dropped, 0, "the test needs every frame processed");
    assert_eq!(seen.len(), 9, "frames the worker processed");
    let mut people = 0;
    for (a, b) in tracked.iter().zip(&seen) {
        assert_eq!(a.frame, b.frame);
        assert_eq!(a.people.len(), b.people.len(), "frame {}", a.frame);
        for (p, q) in a.people.iter().zip(&b.people) {
            assert_eq!((p.id, p.state), (q.id, q.state), "frame {}", a.frame);
            let diff = |x: &[f32], y: &[f32]| {
                x.iter()
                    .zip(y)
                    .map(|(u, v)| (u - v).abs())
                    .fold(0.0, f32::max)
            };
            let flat = |l: &polyface::record::Landmarks| -> Vec<f32> {
                l.0.iter().flatten().copied().collect()
            };
            assert!(diff(&flat(&p.landmarks_smoothed), &flat(&q.landmarks_smoothed)) < 1e-3);
            assert!(diff(&p.arkit.0, &q.arkit.0) < 1e-4);
            people += 1;
        }
    }
    assert!(people >= 9, "people were tracked ({people})");
}

/// The app records and streams from its inference thread: a take started and stopped through
/// the worker holds every frame processed while it ran and ends with its animation files.
#[test]
fn the_worker_records_a_take_on_command() {
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        data.join("scenes/helen_3187824420_2.jpg"),
        dir.path().join("a.jpg"),
    )
    .unwrap();
    let options = SourceOptions {
        fps: Some(20.0),
        looped: true,
        ..Default::default()
    };
    let capture = LatestFrame::spawn(
        capture::opener(SourceSpec::Path(dir.path().join("a.jpg")), options),
        true,
        true,
    );
    let cpu = candle_core::Device::Cpu;
    let pipeline =
        polyface::vision::load_pipeline(polyface::vision::PipelineKind::Mfn, &models, &cpu)
            .unwrap();
    let worker = InferenceWorker::spawn(
        capture,
        FrameProcessor::new(Some(pipeline), People::default()),
    );
    let take = dir.path().join("take");
    worker.start_recording(take.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.recording().is_none() || take_lines(&take) < 10 {
        assert!(Instant::now() < deadline, "no 10 recorded frames in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(worker.recording(), Some(take.clone()));
    worker.stop_recording();
    let mut notices = Vec::new();
    while !notices.iter().any(|n: &String| n.starts_with("saved")) {
        assert!(Instant::now() < deadline, "no saved notice: {notices:?}");
        notices.extend(worker.take_notices());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(worker.recording().is_none());
    assert!(take.join("person1.glb").is_file(), "{notices:?}");
    let records = FrameRecord::parse_all(
        &std::fs::read_to_string(take.join("session.jsonl")).unwrap(),
        "session.jsonl",
    )
    .unwrap();
    assert!(records.len() >= 10);
    // whole records, in capture order
    assert!(records.windows(2).all(|w| w[1].frame > w[0].frame));
}

fn take_lines(take: &Path) -> usize {
    std::fs::read_to_string(take.join("session.jsonl")).map_or(0, |t| t.lines().count())
}
