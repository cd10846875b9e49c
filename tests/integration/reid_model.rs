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
    let aligned = reid.align(&frame, &landmarks).unwrap();
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

/// `polyface track` over a folder of frames played at 10 fps: the faces.jsonl it writes.
fn track_at_10_fps(frames: &Path, out: &Path) -> String {
    let run = crate::support::polyface()
        .args(["track", "--fps", "10", "--input"])
        .arg(frames)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    crate::support::assert_success(&run);
    std::fs::read_to_string(out.join("faces.jsonl")).unwrap()
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
    plan.extend((0..5).map(|_| crate::support::frame_with(Some(&face_a), 40, 240)));
    plan.extend((0..20).map(|_| crate::support::frame_with(None, 0, 0)));
    plan.extend((0..5).map(|_| crate::support::frame_with(Some(&mirrored_a), 380, 200)));
    plan.extend((0..20).map(|_| crate::support::frame_with(None, 0, 0)));
    plan.extend((0..5).map(|_| crate::support::frame_with(Some(&face_b), 380, 220)));
    for (i, f) in plan.iter().enumerate() {
        f.save(frames.join(format!("{i:03}.png"))).unwrap();
    }
    let jsonl = track_at_10_fps(&frames, &dir.path().join("out"));
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

/// A person cut out of a shared multi-face photo: a square 1.6× crop around their face box
/// (neighbours may show at its edges), and where their face box lies in it.
struct ScenePerson {
    crop: image::RgbImage,
    face: [f32; 4],
}

fn scene_people(data: &Path, wanted: usize) -> Vec<ScenePerson> {
    let scenes = std::fs::read_to_string(data.join("scenes.jsonl")).unwrap();
    let mut records: Vec<serde_json::Value> = scenes
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["split"] == "test")
        .collect();
    records.sort_by_key(|r| r["image"].as_str().unwrap().to_string());
    let mut people = Vec::new();
    let mut photos_used: Vec<String> = Vec::new();
    for record in &records {
        // overlapping crops of one Flickr photo show the same people: use one file per photo
        let name = record["image"].as_str().unwrap();
        let photo = name.rsplit_once('_').map_or(name, |(p, _)| p).to_string();
        let big: Vec<[f32; 4]> = record["faces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["confirmed"] == true)
            .map(|f| {
                let b: Vec<f32> = f["box"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                [b[0], b[1], b[2], b[3]]
            })
            .filter(|b| (b[2] - b[0]).max(b[3] - b[1]) >= 70.0)
            .collect();
        if big.len() < 2 || photos_used.contains(&photo) {
            continue;
        }
        photos_used.push(photo);
        let image = image::open(data.join(name)).unwrap().into_rgb8();
        for b in big {
            let side = 1.6 * (b[2] - b[0]).max(b[3] - b[1]);
            let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
            let x0 = (cx - side / 2.0).max(0.0) as u32;
            let y0 = (cy - side / 2.0).max(0.0) as u32;
            let w = (side as u32).min(image.width() - x0);
            let h = (side as u32).min(image.height() - y0);
            people.push(ScenePerson {
                crop: image::imageops::crop_imm(&image, x0, y0, w, h).to_image(),
                face: [
                    b[0] - x0 as f32,
                    b[1] - y0 as f32,
                    b[2] - x0 as f32,
                    b[3] - y0 as f32,
                ],
            });
            if people.len() == wanted {
                return people;
            }
        }
    }
    panic!("the shared scenes hold fewer than {wanted} large test-split faces");
}

#[test]
fn people_in_a_shuffled_multi_face_sequence_keep_their_ids() {
    let Some(_) = shipped() else {
        return;
    };
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    let people = scene_people(&data, 4);
    const SLOT: u32 = 190;
    let slot_x = |s: usize| 40 + s as u32 * 230;
    // Each row: who stands in slots 0..4 for 1.2 s at 10 fps (None = empty slot). Rows follow
    // each other directly, so people who trade slots look to the tracker like people standing
    // still; an empty row of 1.5 s makes everyone leave and come back.
    let n: Option<usize> = None;
    let layouts: Vec<[Option<usize>; 4]> = vec![
        [Some(0), Some(1), Some(2), n],
        [Some(1), Some(0), Some(2), n],       // 0 and 1 trade places
        [Some(1), Some(0), n, Some(3)],       // 2 leaves, 3 arrives
        [n, n, n, n],                         // everyone leaves
        [Some(3), Some(2), Some(0), Some(1)], // everyone back, shuffled
        [Some(2), Some(3), Some(1), Some(0)], // all four move at once
        [n, Some(1), n, Some(2)],
        [Some(0), n, Some(3), n], // 1 and 2 leave as 0 and 3 come back
        [Some(3), Some(0), Some(2), Some(1)],
    ];
    let frames_per_row = |row: &[Option<usize>; 4]| {
        if row.iter().all(Option::is_none) {
            15
        } else {
            12
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let mut truth: Vec<Vec<(usize, [f32; 4])>> = Vec::new(); // per frame: (person, face box)
    let mut settled: Vec<bool> = Vec::new(); // last half of a row: IDs must be right by then
    for row in &layouts {
        let mut frame = image::RgbImage::from_pixel(960, 540, image::Rgb([92, 98, 104]));
        let mut who = Vec::new();
        for (slot, person) in row.iter().enumerate() {
            if let Some(p) = *person {
                let person = &people[p];
                let scale = SLOT as f32 / person.crop.width().max(person.crop.height()) as f32;
                let (w, h) = (person.crop.width(), person.crop.height());
                let shown = image::imageops::resize(
                    &person.crop,
                    (w as f32 * scale).round() as u32,
                    (h as f32 * scale).round() as u32,
                    image::imageops::FilterType::Triangle,
                );
                let (x0, y0) = (slot_x(slot) as f32, 170.0);
                image::imageops::replace(&mut frame, &shown, x0 as i64, y0 as i64);
                let f = person.face;
                let face = [
                    x0 + f[0] * scale,
                    y0 + f[1] * scale,
                    x0 + f[2] * scale,
                    y0 + f[3] * scale,
                ];
                who.push((p, face));
            }
        }
        let count = frames_per_row(row);
        for k in 0..count {
            frame
                .save(frames.join(format!("{:04}.png", truth.len())))
                .unwrap();
            truth.push(who.clone());
            settled.push(k >= count / 2);
        }
    }
    let jsonl = track_at_10_fps(&frames, &dir.path().join("out"));
    let lines: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), truth.len());
    // ids[p] = every confirmed ID person p had in settled frames
    let mut ids: Vec<Vec<u64>> = vec![Vec::new(); people.len()];
    let (mut seen, mut right_any_frame, mut checked_any_frame) = (0, 0, 0);
    let mut first_id: Vec<Option<u64>> = vec![None; people.len()];
    let mut story = String::new(); // who had which ID, frame by frame, for the failure message
    for ((line, who), &settled) in lines.iter().zip(&truth).zip(&settled) {
        story.push('\n');
        for person in line["people"].as_array().unwrap() {
            if person["state"] != "confirmed" {
                continue;
            }
            let b: Vec<f64> = person["box"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let centre = |b: [f32; 4]| ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
            let (cx, cy) = centre([b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32]);
            // the person whose face is here (not a neighbour showing at the edge of a crop)
            let Some(&(p, _)) = who.iter().find(|(_, face)| {
                let (fx, fy) = centre(*face);
                (cx - fx).hypot(cy - fy) < 0.3 * (face[2] - face[0])
            }) else {
                continue;
            };
            let id = person["id"].as_u64().unwrap();
            story.push_str(&format!(" p{p}=#{id}"));
            let first = *first_id[p].get_or_insert(id);
            checked_any_frame += 1;
            right_any_frame += usize::from(first == id);
            if settled {
                seen += 1;
                ids[p].push(id);
            }
        }
    }
    eprintln!(
        "confirmed sightings with the person's first ID: {right_any_frame} / {checked_any_frame} (all frames)"
    );
    let expected_sightings: usize = truth
        .iter()
        .zip(&settled)
        .filter(|(_, s)| **s)
        .map(|(w, _)| w.len())
        .sum();
    assert!(
        seen * 10 >= expected_sightings * 9,
        "people were tracked in {seen} of {expected_sightings} settled sightings"
    );
    for (p, list) in ids.iter_mut().enumerate() {
        list.sort_unstable();
        list.dedup();
        assert_eq!(list.len(), 1, "person {p} had IDs {list:?}; frames:{story}");
    }
    let mut all: Vec<u64> = ids.iter().map(|l| l[0]).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), people.len(), "two people shared an ID: {ids:?}");
}
