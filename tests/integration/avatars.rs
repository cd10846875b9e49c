//! Avatars: the default characters (deterministic, valid glTF, golden images per expression),
//! VRM 0.x / 1.0 expressions, and broken files.

use std::path::{Path, PathBuf};

use polyface::avatar::glb::GlbBuilder;
use polyface::avatar::Avatar;
use polyface::render::snapshot::{head_from_degrees, render};
use serde_json::json;

use crate::gpu_rig::gpu_or_skip;
use crate::support::in_ci;

const SIZE: (u32, u32) = (256, 256);
const EXPRESSIONS: [&str; 3] = ["jawOpen", "eyeBlinkLeft", "mouthSmileLeft"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn default_avatars() -> Vec<PathBuf> {
    polyface::avatar::list_avatars(&root().join("assets/avatars"))
}

#[test]
fn default_avatars_are_exactly_what_the_generator_writes() {
    let styles = polyface::avatar::generate::styles();
    assert!(styles.len() >= 3);
    for style in &styles {
        let shipped = std::fs::read(root().join(format!("assets/avatars/{}.glb", style.name)))
            .expect("default avatar shipped (polyface make-avatars)");
        let fresh = polyface::avatar::generate::build_glb(style);
        assert!(
            shipped == fresh,
            "{}: assets/avatars differs from the generator; run `polyface make-avatars`",
            style.name
        );
    }
}

#[test]
fn default_avatars_carry_all_52_arkit_targets_with_a_head_node() {
    for path in default_avatars() {
        let avatar = Avatar::load(&path).unwrap();
        for name in polyface::retarget::ARKIT_52 {
            assert!(
                avatar.morph_names.iter().any(|m| m == name),
                "{}: no {name}",
                path.display()
            );
        }
        assert!(avatar.has_head);
        // every target moves something
        for (i, name) in avatar.morph_names.iter().enumerate() {
            let moved = avatar
                .primitives
                .iter()
                .flat_map(|p| &p.targets)
                .filter(|t| t.morph == i)
                .flat_map(|t| &t.position_deltas)
                .any(|d| d.iter().any(|v| v.abs() > 1e-5));
            assert!(moved, "{}: {name} moves nothing", path.display());
        }
        // the head follows head pose, the shoulders do not
        let weights: Vec<f32> = avatar
            .primitives
            .iter()
            .flat_map(|p| &p.head_weight)
            .copied()
            .collect();
        assert!(weights.contains(&1.0) && weights.contains(&0.0));
    }
}

/// Runs the Khronos glTF validator (npm `gltf-validator`, installed by .ci/run) on `path`.
pub(crate) fn khronos_validator(path: &Path) -> Option<serde_json::Value> {
    let dir = std::env::var("GLTF_VALIDATOR_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target/gltf-validator"));
    if !dir.join("node_modules/gltf-validator").is_dir() {
        assert!(
            !in_ci(),
            "CI=true but gltf-validator is not installed in {}",
            dir.display()
        );
        eprintln!("skipped: gltf-validator not installed in {}", dir.display());
        return None;
    }
    let script = format!(
        "const v=require('gltf-validator');const fs=require('fs');\
         v.validateBytes(new Uint8Array(fs.readFileSync({:?}))).then(r=>console.log(JSON.stringify(r.issues)))\
         .catch(e=>{{console.error(e);process.exit(2)}})",
        path.display().to_string()
    );
    let out = std::process::Command::new("node")
        .arg("-e")
        .arg(script)
        .current_dir(&dir)
        .output()
        .expect("node runs");
    crate::support::assert_success(&out);
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn default_avatars_pass_the_khronos_validator_with_no_errors() {
    for path in default_avatars() {
        let Some(issues) = khronos_validator(&path) else {
            return;
        };
        assert_eq!(issues["numErrors"], 0, "{}: {issues}", path.display());
        assert_eq!(issues["numWarnings"], 0, "{}: {issues}", path.display());
    }
}

fn golden_path(name: &str, expression: &str) -> PathBuf {
    root().join(format!("tests/golden/avatar_{name}_{expression}.png"))
}

/// Pixels differing by more than a few levels (lavapipe is deterministic; drivers differ in
/// rasterisation details at edges, hence a tolerance rather than equality).
fn changed(a: &image::RgbaImage, b: &image::RgbaImage, threshold: i32) -> Vec<(u32, u32)> {
    a.enumerate_pixels()
        .filter(|(x, y, p)| {
            let q = b.get_pixel(*x, *y);
            (0..3).any(|c| (p[c] as i32 - q[c] as i32).abs() > threshold)
        })
        .map(|(x, y, _)| (x, y))
        .collect()
}

#[test]
fn default_avatars_match_their_golden_images_and_expressions_move_the_right_region() {
    if gpu_or_skip().is_none() {
        return;
    }
    let update = std::env::var("POLYFACE_UPDATE_GOLDEN").is_ok();
    for path in default_avatars() {
        let avatar = Avatar::load(&path).unwrap();
        let name = avatar.name.clone();
        let neutral = render(
            std::slice::from_ref(&avatar),
            &[],
            head_from_degrees(0.0, 0.0, 0.0),
            SIZE,
        )
        .unwrap();
        let mut shots = vec![("neutral", neutral.clone())];
        for e in EXPRESSIONS {
            let img = render(
                std::slice::from_ref(&avatar),
                &[(e.to_string(), 1.0)],
                head_from_degrees(0.0, 0.0, 0.0),
                SIZE,
            )
            .unwrap();
            shots.push((e, img));
        }
        for (label, img) in &shots {
            let golden = golden_path(&name, label);
            if update {
                std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
                img.save(&golden).unwrap();
                continue;
            }
            let want = image::open(&golden)
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: {e} (POLYFACE_UPDATE_GOLDEN=1 writes it)",
                        golden.display()
                    )
                })
                .into_rgba8();
            let diff = changed(img, &want, 24);
            let allowed = (SIZE.0 * SIZE.1) as usize / 200; // 0.5 %
            assert!(
                diff.len() <= allowed,
                "{name} {label}: {} pixels differ from {}",
                diff.len(),
                golden.display()
            );
        }
        // where each expression changes the picture (the avatar faces the viewer, so the
        // subject's left is the image's right)
        let face_x = SIZE.0 as f32 / 2.0;
        for (label, img) in &shots[1..] {
            let diff = changed(img, &neutral, 24);
            assert!(
                diff.len() > 40,
                "{name} {label}: hardly changes the picture ({} px)",
                diff.len()
            );
            let n = diff.len() as f32;
            let cx = diff.iter().map(|p| p.0 as f32).sum::<f32>() / n;
            let cy = diff.iter().map(|p| p.1 as f32).sum::<f32>() / n;
            match *label {
                "jawOpen" => assert!(
                    (cx - face_x).abs() < 12.0 && cy > 110.0,
                    "{name} jawOpen at ({cx},{cy})"
                ),
                "eyeBlinkLeft" => assert!(
                    cx > face_x + 5.0 && cy < 110.0,
                    "{name} blink at ({cx},{cy})"
                ),
                "mouthSmileLeft" => {
                    assert!(cx > face_x && cy > 100.0, "{name} smile at ({cx},{cy})")
                }
                _ => unreachable!(),
            }
        }
    }
}

#[test]
fn head_pose_turns_the_head_and_not_the_shoulders() {
    if gpu_or_skip().is_none() {
        return;
    }
    let avatar = Avatar::load(&default_avatars()[0]).unwrap();
    let straight = render(
        std::slice::from_ref(&avatar),
        &[],
        head_from_degrees(0.0, 0.0, 0.0),
        SIZE,
    )
    .unwrap();
    let turned = render(
        std::slice::from_ref(&avatar),
        &[],
        head_from_degrees(30.0, 0.0, 0.0),
        SIZE,
    )
    .unwrap();
    let diff = changed(&straight, &turned, 24);
    assert!(diff.len() > 1000, "turning the head changes the picture");
    // the bottom rows (shoulders) stay as they were
    assert!(diff.iter().all(|p| p.1 < SIZE.1 - 30), "shoulders moved");
}

/// A tiny VRM: one quad mesh with two morph targets (lift the top edge, push the right edge),
/// a head node, and `extensions` given by the caller.
fn tiny_vrm(extension_name: &str, extension: serde_json::Value) -> Vec<u8> {
    let mut b = GlbBuilder::new();
    let positions = [
        [-0.1, 1.4, 0.0],
        [0.1, 1.4, 0.0],
        [0.1, 1.6, 0.0],
        [-0.1, 1.6, 0.0],
    ];
    let pos = b.vec3(&positions, true);
    let idx = b.indices(&[0, 1, 2, 0, 2, 3]);
    let lift = b.sparse_deltas(&[[0.0; 3], [0.0; 3], [0.0, 0.08, 0.0], [0.0, 0.08, 0.0]]);
    let push = b.sparse_deltas(&[[0.0; 3], [0.08, 0.0, 0.0], [0.08, 0.0, 0.0], [0.0; 3]]);
    b.materials.push(json!({"pbrMetallicRoughness": {"baseColorFactor": [0.8, 0.3, 0.2, 1.0]}, "doubleSided": true}));
    b.meshes.push(
        json!({"name": "Face", "primitives": [{"attributes": {"POSITION": pos}, "indices": idx,
        "material": 0, "targets": [{"POSITION": lift}, {"POSITION": push}]}],
        "extras": {"targetNames": ["Fcl_MTH_A", "Fcl_EYE_Close"]}}),
    );
    let head = b.add_node(json!({"name": "J_Bip_C_Head", "mesh": 0}));
    b.scene_nodes.push(head);
    b.extensions.insert(extension_name.into(), extension);
    b.extensions_used.push(extension_name.into());
    b.to_glb()
}

#[test]
fn vrm_1_and_0_expressions_resolve_to_morph_binds_and_move_the_mesh() {
    let vrm1 = tiny_vrm(
        "VRMC_vrm",
        json!({"specVersion": "1.0", "humanoid": {"humanBones": {"head": {"node": 0}}},
               "expressions": {"preset": {
                   "aa": {"morphTargetBinds": [{"node": 0, "index": 0, "weight": 1.0}]},
                   "blink": {"morphTargetBinds": [{"node": 0, "index": 1, "weight": 0.5}]}}}}),
    );
    let vrm0 = tiny_vrm(
        "VRM",
        json!({"humanoid": {"humanBones": [{"bone": "head", "node": 0}]},
               "blendShapeMaster": {"blendShapeGroups": [
                   {"name": "A", "presetName": "a", "binds": [{"mesh": 0, "index": 0, "weight": 100}]},
                   {"name": "Blink", "presetName": "blink", "binds": [{"mesh": 0, "index": 1, "weight": 50}]}]}}),
    );
    for (label, bytes, mouth) in [("vrm1", vrm1, "aa"), ("vrm0", vrm0, "a")] {
        let avatar = Avatar::from_bytes(&bytes, None, label).unwrap();
        assert!(avatar.has_head, "{label}");
        assert_eq!(
            avatar.morph_names,
            ["Fcl_MTH_A", "Fcl_EYE_Close"],
            "{label}"
        );
        let w = avatar.morph_weights(&[(mouth.to_string(), 1.0), ("blink".to_string(), 1.0)]);
        assert_eq!(w, vec![1.0, 0.5], "{label}");
        // ARKit input reaches the VRM presets through the retargeter (jawOpen -> aa / a)
        let w =
            polyface::render::snapshot::weights_for(&avatar, &[("jawOpen".into(), 1.0)]).unwrap();
        assert!(w[0] > 0.5, "{label}: {w:?}");
        if gpu_or_skip().is_none() {
            continue;
        }
        let rest = render(
            std::slice::from_ref(&avatar),
            &[],
            head_from_degrees(0.0, 0.0, 0.0),
            SIZE,
        )
        .unwrap();
        let open = render(
            std::slice::from_ref(&avatar),
            &[(mouth.to_string(), 1.0)],
            head_from_degrees(0.0, 0.0, 0.0),
            SIZE,
        )
        .unwrap();
        assert!(
            changed(&rest, &open, 24).len() > 100,
            "{label}: the expression moves the mesh"
        );
    }
}

#[test]
fn broken_avatar_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(&default_avatars()[0]).unwrap();
    // truncated glb
    let truncated = dir.path().join("truncated.glb");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let err = Avatar::load(&truncated).unwrap_err().to_string();
    assert!(
        err.contains("truncated.glb") && err.contains("not a valid"),
        "{err}"
    );
    // an accessor that claims more data than its buffer holds
    let mut b = GlbBuilder::new();
    let pos = b.vec3(&[[0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], true);
    b.meshes
        .push(json!({"primitives": [{"attributes": {"POSITION": pos}}]}));
    let n = b.add_node(json!({"mesh": 0}));
    b.scene_nodes.push(n);
    let mut doc = b.document();
    doc["accessors"][0]["count"] = json!(3000);
    let text = serde_json::to_vec(&doc).unwrap();
    // as .gltf JSON with the (short) buffer as a data URI
    let bin = {
        let glb = b.to_glb();
        let json_len = u32::from_le_bytes(glb[12..16].try_into().unwrap()) as usize;
        glb[20 + json_len + 8..].to_vec()
    };
    let mut doc: serde_json::Value = serde_json::from_slice(&text).unwrap();
    doc["buffers"][0]["uri"] = json!(format!(
        "data:application/octet-stream;base64,{}",
        base64_encode(&bin)
    ));
    let bad = dir.path().join("bad_accessor.gltf");
    std::fs::write(&bad, serde_json::to_vec(&doc).unwrap()).unwrap();
    let err = Avatar::load(&bad).unwrap_err().to_string();
    assert!(
        err.contains("bad_accessor.gltf") && err.contains("accessor"),
        "{err}"
    );
    // a texture file that is not there
    doc["accessors"][0]["count"] = json!(3);
    doc["images"] = json!([{"uri": "missing_skin.png"}]);
    doc["textures"] = json!([{"source": 0}]);
    doc["materials"] = json!([{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}]);
    doc["meshes"][0]["primitives"][0]["material"] = json!(0);
    let missing = dir.path().join("missing_texture.gltf");
    std::fs::write(&missing, serde_json::to_vec(&doc).unwrap()).unwrap();
    let err = Avatar::load(&missing).unwrap_err().to_string();
    assert!(err.contains("texture"), "{err}");
    // not a file at all
    let err = Avatar::load(&dir.path().join("nope.vrm"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.vrm") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn mutated_avatar_bytes_never_panic_the_loader() {
    // a deterministic fuzz smoke test (the cargo-fuzz target in fuzz/ runs the same for longer)
    let good = std::fs::read(&default_avatars()[0]).unwrap();
    let json_len = u32::from_le_bytes(good[12..16].try_into().unwrap()) as usize;
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..300 {
        let mut bytes = good.clone();
        let flips = 1 + (next() % 8) as usize;
        for _ in 0..flips {
            // mostly hit the JSON chunk, where structure lives
            let at = if round % 3 == 0 {
                (next() as usize) % bytes.len()
            } else {
                20 + (next() as usize) % json_len
            };
            bytes[at] = (next() & 0xff) as u8;
        }
        if round % 5 == 0 {
            let cut = (next() as usize) % bytes.len();
            bytes.truncate(cut);
        }
        let _ = Avatar::from_bytes(&bytes, None, "mutant");
    }
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn a_person_whose_avatar_file_is_broken_keeps_a_default_one() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.vrm");
    std::fs::write(&broken, b"glTF\x02\x00\x00\x00garbage").unwrap();
    let mut slots = polyface::ui::AvatarSlots::new(&root().join("assets/avatars"));
    slots.choose(1, broken.clone());
    let stage = polyface::render::AvatarStage::new(&gpu.device, &gpu.queue, 128, 128);
    let landmarks: Vec<glam::Vec2> = (0..68)
        .map(|i| glam::Vec2::new(i as f32, i as f32))
        .collect();
    let face = polyface::vision::FaceObservation {
        bbox: (glam::Vec2::ZERO, glam::Vec2::splat(67.0)),
        score: 1.0,
        landmarks,
        rotation: glam::Mat3::IDENTITY,
        blendshapes: vec![0.0; 51],
    };
    let person = polyface::track::Person {
        id: 1,
        state: polyface::track::TrackState::Confirmed,
        raw: face.clone(),
        smoothed: face,
        pose: None,
        fit_rms_px: 0.0,
        name: None,
    };
    slots.render(&stage, &gpu.device, &gpu.queue, &[person], |_| [0.0; 52]);
    assert_eq!(slots.warnings.len(), 1, "{:?}", slots.warnings);
    assert!(
        slots.warnings[0].contains("broken.vrm"),
        "{:?}",
        slots.warnings
    );
    assert_ne!(slots.path_for(1), Some(broken), "back on a default avatar");
    // and the default avatar was drawn
    let pixels = stage.read_pixels(&gpu.device, &gpu.queue).unwrap();
    let background = *pixels.get_pixel(0, 0);
    assert!(pixels.pixels().filter(|p| **p != background).count() > 1000);
}
