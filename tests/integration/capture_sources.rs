//! Frame sources through the `FrameSource` trait, as the app and `track` use them.

use std::time::{Duration, Instant};

use polyface::capture::{
    self, CaptureError, CaptureStatus, LatestFrame, SourceOptions, SourceSpec,
};

use crate::support::{colour_distance, frame_folder, have_tool, make_video};

fn open_path(path: &std::path::Path) -> Result<Box<dyn capture::FrameSource>, CaptureError> {
    capture::open(
        &SourceSpec::Path(path.to_path_buf()),
        &SourceOptions::default(),
    )
}

#[test]
fn image_folder_plays_in_name_order_and_skips_bad_files_with_warnings() {
    let dir = tempfile::tempdir().unwrap();
    frame_folder(dir.path(), 3, 64, 48);
    std::fs::write(dir.path().join("readme.txt"), "not an image").unwrap();
    std::fs::write(
        dir.path().join("frame_001b.jpg"),
        b"\xff\xd8 truncated jpeg",
    )
    .unwrap();
    let mut source = open_path(dir.path()).unwrap();
    let mut seqs = Vec::new();
    let mut greens = Vec::new();
    while let Some(frame) = source.next_frame().unwrap() {
        assert_eq!(frame.image.dimensions(), (64, 48));
        seqs.push(frame.seq);
        greens.push(frame.image.get_pixel(0, 0)[1]);
    }
    assert_eq!(
        seqs,
        vec![0, 1, 2],
        "three good frames, numbered without gaps"
    );
    // Seeds 0, 1, 2 raise the green channel: name order is kept.
    assert_eq!(greens, vec![30, 31, 32]);
    let warnings = source.take_warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("readme.txt")));
    assert!(warnings
        .iter()
        .any(|w| w.contains("frame_001b.jpg") && w.contains("corrupt")));
}

#[test]
fn bad_paths_get_errors_that_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let err = open_path(&missing).err().expect("missing path must fail");
    assert!(matches!(err, CaptureError::NotFound(_)));
    assert!(err.to_string().contains("missing"));

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "x").unwrap();
    assert!(matches!(
        open_path(&empty).err(),
        Some(CaptureError::EmptyFolder(_))
    ));

    let only_corrupt = dir.path().join("corrupt");
    std::fs::create_dir(&only_corrupt).unwrap();
    std::fs::write(only_corrupt.join("a.png"), b"garbage").unwrap();
    let mut source = open_path(&only_corrupt).unwrap();
    assert!(matches!(
        source.next_frame(),
        Err(CaptureError::EmptyFolder(_))
    ));

    let odd = dir.path().join("model.obj");
    std::fs::write(&odd, "v 0 0 0").unwrap();
    let err = open_path(&odd).err().unwrap();
    assert!(matches!(err, CaptureError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains(".obj"));
}

#[test]
fn video_file_yields_every_frame_with_its_size_rate_and_colours() {
    if !have_tool("ffmpeg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let frames = frame_folder(&dir.path().join("frames"), 12, 320, 240);
    let video = dir.path().join("clip.mkv");
    make_video(&frames, &video, 10);
    let mut source = open_path(&video).unwrap();
    assert_eq!(source.resolution(), Some((320, 240)));
    assert_eq!(source.fps(), Some(10.0));
    let mut count = 0;
    while let Some(frame) = source.next_frame().unwrap() {
        assert_eq!(frame.seq, count);
        assert!((frame.timestamp.as_secs_f64() - count as f64 / 10.0).abs() < 1e-6);
        let p = frame.image.get_pixel(40, 40).0;
        assert!(
            colour_distance(p, [220, 30 + count as u8, 30]) < 12.0,
            "frame {count}: {p:?}"
        );
        let p = frame.image.get_pixel(280, 200).0;
        assert!(
            colour_distance(p, [240, 240, 240]) < 12.0,
            "frame {count}: {p:?}"
        );
        count += 1;
    }
    assert_eq!(count, 12);
}

#[test]
fn corrupt_and_truncated_videos_fail_with_a_clear_error() {
    if !have_tool("ffmpeg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.mp4");
    std::fs::write(
        &garbage,
        (0..20_000u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let err = open_path(&garbage).err().expect("garbage must not open");
    assert!(matches!(err, CaptureError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("garbage.mp4"));

    let frames = frame_folder(&dir.path().join("frames"), 10, 320, 240);
    let good = dir.path().join("good.mp4");
    make_video(&frames, &good, 10);
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let result = open_path(&cut).and_then(|mut s| {
        while s.next_frame()?.is_some() {}
        Ok(())
    });
    assert!(
        matches!(result, Err(CaptureError::Corrupt { .. })),
        "{result:?}"
    );
}

#[test]
fn latest_frame_hands_over_the_newest_and_counts_the_dropped() {
    let dir = tempfile::tempdir().unwrap();
    frame_folder(dir.path(), 20, 32, 32);
    let opener = capture::opener(
        SourceSpec::Path(dir.path().to_path_buf()),
        SourceOptions::default(),
    );
    let latest = LatestFrame::spawn(opener, false, false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !latest.is_finished() {
        assert!(Instant::now() < deadline, "capture never finished");
        std::thread::sleep(Duration::from_millis(10));
    }
    let frame = latest.take().expect("the newest frame is kept");
    assert_eq!(frame.seq, 19);
    assert!(latest.take().is_none(), "a frame is handed over once");
    assert_eq!(latest.counts(), (20, 19));
    assert_eq!(latest.status(), CaptureStatus::Ended);
}

#[test]
fn unplugged_source_is_reported_and_reconnected() {
    let dir = tempfile::tempdir().unwrap();
    let folder = frame_folder(&dir.path().join("live"), 4, 32, 32);
    let away = dir.path().join("away");
    let options = SourceOptions {
        fps: Some(50.0),
        looped: true,
        ..Default::default()
    };
    let latest = LatestFrame::spawn(
        capture::opener(SourceSpec::Path(folder.clone()), options),
        true,
        true,
    );
    assert!(
        latest.wait(Duration::from_secs(10)).is_some(),
        "frames flow at first"
    );

    std::fs::rename(&folder, &away).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        if let CaptureStatus::Reconnecting { error } = latest.status() {
            break error;
        }
        assert!(Instant::now() < deadline, "unplugging was never reported");
        latest.take();
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        error.contains("live"),
        "the message names the source: {error}"
    );

    std::fs::rename(&away, &folder).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if matches!(latest.status(), CaptureStatus::Running { .. })
            && latest.wait(Duration::from_millis(200)).is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reconnected: {:?}",
            latest.status()
        );
    }
}

#[test]
fn no_camera_is_a_clear_error() {
    let cameras = capture::list_cameras().unwrap_or_default();
    if !cameras.is_empty() {
        eprintln!("skipped: this machine has cameras");
        return;
    }
    let err = capture::open(&SourceSpec::Camera(None), &SourceOptions::default())
        .err()
        .expect("no camera to open");
    assert!(matches!(err, CaptureError::NoCamera), "{err}");
    assert!(
        err.to_string().contains("--input"),
        "the message says what to do: {err}"
    );
}
