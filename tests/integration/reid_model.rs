//! Re-identification: parity with PyTorch (alignment and embeddings) and a person who leaves and
//! comes back getting their old ID in `polyface track`.

use std::path::Path;

use candle_core::Device;
use polyface::vision::ReId;

fn shipped() -> Option<(ReId, std::collections::HashMap<String, candle_core::Tensor>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("models/reid.safetensors");
    if !model.exists() {
        eprintln!("skipped: no shipped re-ID model");
        return None;
    }
    let fixture = root.join("tests/fixtures/reid_parity.safetensors");
    assert!(
        fixture.exists(),
        "the re-ID model ships with its parity fixture"
    );
    Some((
        ReId::load(&model, &Device::Cpu).unwrap(),
        candle_core::safetensors::load(&fixture, &Device::Cpu).unwrap(),
    ))
}

#[test]
fn shipped_reid_matches_pytorch_alignment_and_embeddings() {
    let Some((reid, fixture)) = shipped() else {
        return;
    };
    // embeddings
    let input = &fixture["input_u8"];
    let output = reid
        .forward_raw(&crate::support::normalised(input))
        .unwrap();
    let diff = crate::support::max_abs_diff(&output, &fixture["output"]);
    assert!(diff < 1e-3, "raw outputs: max |candle - pytorch| = {diff}");
    let faces: Vec<Vec<u8>> = (0..input.dim(0).unwrap())
        .map(|i| {
            input
                .get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect();
    let ours = reid.embed_aligned(&faces).unwrap();
    let theirs: Vec<Vec<f32>> = fixture["embedding"].to_vec2().unwrap();
    for (a, b) in ours.iter().zip(&theirs) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-3, "embedding {x} vs {y}");
        }
    }
    // alignment: the training code's warp of a synthetic frame from 68 landmarks
    let src: Vec<Vec<u8>> = fixture["align_src_u8"].to_vec2().unwrap();
    let (h, w) = (src.len() as u32, src[0].len() as u32);
    let frame = image::RgbImage::from_fn(w, h, |x, y| {
        let v = src[y as usize][x as usize];
        image::Rgb([v, v, v])
    });
    let landmarks: Vec<glam::Vec2> = fixture["align_landmarks68"]
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .map(|p| glam::Vec2::new(p[0], p[1]))
        .collect();
    let aligned = polyface::vision::reid::align(&frame, &landmarks).unwrap();
    let want: Vec<u8> = fixture["align_out_u8"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let worst = aligned
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max()
        .unwrap();
    assert!(
        worst <= 2,
        "aligned crop differs from OpenCV's by up to {worst} grey levels"
    );
}

/// A 640×480 frame with `face` (a shared-data crop) pasted at `x`, `size` pixels wide.
fn frame_with(face: Option<&image::RgbImage>, x: u32, size: u32) -> image::RgbImage {
    let mut frame = image::RgbImage::from_pixel(640, 480, image::Rgb([96, 100, 104]));
    if let Some(face) = face {
        let scaled =
            image::imageops::resize(face, size, size, image::imageops::FilterType::Triangle);
        image::imageops::replace(&mut frame, &scaled, x as i64, 120);
    }
    frame
}

#[test]
fn a_person_who_leaves_and_comes_back_gets_their_old_id() {
    let Some(_) = shipped() else {
        return;
    };
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    // two different people from the shared identity-labelled crops
    let wild = std::fs::read_to_string(data.join("wild.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = wild
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let named: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["identity"].is_string())
        .collect();
    let a = named[0];
    let b = named
        .iter()
        .find(|r| r["identity"] != a["identity"])
        .unwrap();
    let load = |r: &serde_json::Value| {
        image::open(data.join(r["image"].as_str().unwrap()))
            .unwrap()
            .into_rgb8()
    };
    let (face_a, face_b) = (load(a), load(b));
    let mirrored_a = image::imageops::flip_horizontal(&face_a);

    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    // 10 fps: A on the left (0.5 s), nobody (2 s: A's track is dropped), A again on the right,
    // mirrored and smaller (0.5 s), nobody (2 s), B on the right (0.5 s)
    let mut plan: Vec<image::RgbImage> = Vec::new();
    plan.extend((0..5).map(|_| frame_with(Some(&face_a), 40, 240)));
    plan.extend((0..20).map(|_| frame_with(None, 0, 0)));
    plan.extend((0..5).map(|_| frame_with(Some(&mirrored_a), 380, 200)));
    plan.extend((0..20).map(|_| frame_with(None, 0, 0)));
    plan.extend((0..5).map(|_| frame_with(Some(&face_b), 380, 220)));
    for (i, f) in plan.iter().enumerate() {
        f.save(frames.join(format!("{i:03}.png"))).unwrap();
    }
    let out = crate::support::polyface()
        .args(["track", "--fps", "10", "--input"])
        .arg(&frames)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jsonl = std::fs::read_to_string(dir.path().join("out/faces.jsonl")).unwrap();
    let ids_in = |range: std::ops::Range<usize>| -> Vec<u64> {
        let mut ids: Vec<u64> = jsonl
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
                    .map(|p| p["id"].as_u64().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let first = ids_in(0..5);
    let again = ids_in(25..30);
    let other = ids_in(50..55);
    assert_eq!(first.len(), 1, "A tracked: {first:?}");
    assert_eq!(again, first, "A came back with their old ID");
    assert_eq!(other.len(), 1, "B tracked: {other:?}");
    assert_ne!(other, first, "B is somebody else");
}
