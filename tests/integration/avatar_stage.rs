//! The avatar stage drawn again and again, as the app does for hours: masked materials cut out
//! where they should, redrawing holds no more memory than the first frames did, avatar files
//! are shared and people who leave free what they held, unchanged pictures are not redrawn,
//! and the GPU is never more than a frame behind.

use std::process::Command;

use glam::{Quat, Vec3};
use polyface::avatar::{AlphaMode, Avatar, Primitive};
use polyface::render::{AvatarPose, AvatarStage};

use crate::gpu_rig::gpu_or_skip;

/// A 0.4 × 0.4 quad facing the camera, textured with alpha 0 on its left half and 1 on its
/// right half, in `alpha` mode.
fn half_transparent_quad(alpha: AlphaMode) -> Avatar {
    let (lo, hi) = (Vec3::new(-0.2, 1.4, 0.0), Vec3::new(0.2, 1.8, 0.0));
    let texture = image::RgbaImage::from_fn(8, 1, |x, _| {
        image::Rgba([255, 255, 255, if x < 4 { 0 } else { 255 }])
    });
    Avatar {
        name: "quad".into(),
        primitives: vec![Primitive {
            positions: vec![
                [lo.x, lo.y, 0.0],
                [hi.x, lo.y, 0.0],
                [hi.x, hi.y, 0.0],
                [lo.x, hi.y, 0.0],
            ],
            normals: vec![[0.0, 0.0, 1.0]; 4],
            uvs: vec![[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]],
            head_weight: vec![0.0; 4],
            indices: vec![0, 1, 2, 0, 2, 3],
            base_color: [1.0, 0.0, 0.0, 1.0],
            texture: Some(texture),
            alpha,
            targets: Vec::new(),
        }],
        morph_names: Vec::new(),
        expressions: Vec::new(),
        head_pivot: (lo + hi) / 2.0,
        has_head: false,
        bounds: (lo, hi),
        head_bounds: (lo, hi),
    }
}

/// Red pixels in the left and right half of the picture.
fn red_halves(pixels: &image::RgbaImage) -> (usize, usize) {
    let mut halves = (0, 0);
    for (x, _, p) in pixels.enumerate_pixels() {
        if p[0] as i32 > p[1] as i32 + 60 {
            if x < pixels.width() / 2 {
                halves.0 += 1;
            } else {
                halves.1 += 1;
            }
        }
    }
    halves
}

#[test]
fn masked_texels_are_cut_out_and_opaque_materials_keep_them() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let stage = AvatarStage::new(&gpu.device, &gpu.queue, 256, 256);
    let pose = AvatarPose {
        morph_weights: Vec::new(),
        head: Quat::IDENTITY,
    };
    let draw = |alpha| {
        let gpu_avatar = stage.upload(&gpu.device, &gpu.queue, &half_transparent_quad(alpha));
        stage.render(&gpu.device, &gpu.queue, &[(&gpu_avatar, &pose)]);
        red_halves(&stage.read_pixels(&gpu.device, &gpu.queue).unwrap())
    };
    let (left, right) = draw(AlphaMode::Mask(0.5));
    assert!(right > 2000, "the opaque half is drawn: {right} red pixels");
    assert!(
        left < right / 20,
        "the transparent half is cut out: {left} vs {right}"
    );
    let (left, right) = draw(AlphaMode::Opaque);
    assert!(
        left > 2000 && right > 2000,
        "an opaque material ignores alpha: {left} / {right}"
    );
}

/// Resident memory of this process, MB.
fn resident_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

const CHILD: &str = "POLYFACE_STAGE_MEMORY_CHILD";

/// Before the fix, Mesa's lavapipe compiled (and kept) a fragment shader per draw whose material
/// uniforms differed: +36 MB per redraw of the three default avatars. The stage is redrawn 80
/// times with changing expressions and head turns in a child process (this test alone, so no
/// other test's memory counts).
#[test]
fn redrawing_the_avatar_stage_keeps_memory_flat() {
    if std::env::var_os(CHILD).is_none() {
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "avatar_stage::redrawing_the_avatar_stage_keeps_memory_flat",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{text}");
        assert!(text.contains("1 passed"), "the child ran the test: {text}");
        return;
    }
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let stage = AvatarStage::new(&gpu.device, &gpu.queue, 466, 720);
    let dir = polyface::avatar::default_avatar_dir();
    let avatars: Vec<Avatar> = polyface::avatar::list_avatars(&dir)
        .iter()
        .map(|p| Avatar::load(p).unwrap())
        .collect();
    assert!(avatars.len() >= 3);
    let uploaded: Vec<_> = avatars
        .iter()
        .map(|a| stage.upload(&gpu.device, &gpu.queue, a))
        .collect();
    let mut at_warm = 0.0;
    for frame in 0..80 {
        let poses: Vec<AvatarPose> = avatars
            .iter()
            .map(|a| AvatarPose {
                morph_weights: (0..a.morph_names.len())
                    .map(|m| ((frame + m) % 10) as f32 / 10.0)
                    .collect(),
                head: Quat::from_rotation_y((frame % 7) as f32 * 0.05),
            })
            .collect();
        let items: Vec<_> = uploaded.iter().zip(&poses).collect();
        stage.render(&gpu.device, &gpu.queue, &items);
        // waits for the GPU, so every frame drawn so far is counted
        let _ = stage.read_pixels(&gpu.device, &gpu.queue).unwrap();
        if frame == 19 {
            at_warm = resident_mb();
        }
    }
    let growth = resident_mb() - at_warm;
    eprintln!("resident memory after 20 frames {at_warm:.0} MB, 60 frames later +{growth:.1} MB");
    assert!(
        growth < 40.0,
        "60 redraws grew resident memory by {growth:.0} MB (from {at_warm:.0} MB)"
    );
}

/// A confirmed person `id` looking straight ahead.
fn person(id: u32) -> polyface::track::Person {
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
    polyface::track::Person {
        id,
        state: polyface::track::TrackState::Confirmed,
        raw: face.clone(),
        smoothed: face,
        pose: None,
        fit_rms_px: 0.0,
        name: None,
    }
}

/// Bytes the GPU allocator holds for live resources, after the GPU finished what was queued
/// (dropped resources are freed once their last use is done).
fn gpu_allocated(gpu: &polyface::render::Gpu) -> Option<u64> {
    let _ = gpu.device.poll(wgpu::PollType::wait_indefinitely());
    gpu.device
        .generate_allocator_report()
        .map(|r| r.total_allocated_bytes)
}

#[test]
fn people_wearing_one_avatar_file_share_it_and_people_who_leave_free_theirs() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let defaults = polyface::avatar::default_avatar_dir();
    let default_count = polyface::avatar::list_avatars(&defaults).len();
    assert!(default_count >= 3);
    let mut slots = polyface::ui::AvatarSlots::new(&defaults);
    let stage = AvatarStage::new(&gpu.device, &gpu.queue, 320, 240);
    let (device, queue) = (&gpu.device, &gpu.queue);
    let crowd: Vec<_> = (1..=12).map(person).collect();
    assert!(slots.render(&stage, device, queue, &crowd, |_| [0.0; 52]));
    assert_eq!(slots.loaded_files(), default_count, "one upload per file");
    assert_eq!(slots.worn(), 12);
    // Four people at a time, with new IDs every frame (tracks lost and found again): what each
    // person holds goes with them; the files stay loaded once.
    let mut after_first = None;
    for round in 0..200u32 {
        let group: Vec<_> = (0..4).map(|k| person(100 + 4 * round + k)).collect();
        slots.render(&stage, device, queue, &group, |_| [0.0; 52]);
        assert_eq!(slots.worn(), 4, "round {round}");
        assert_eq!(slots.loaded_files(), default_count, "round {round}");
        if round == 0 {
            after_first = gpu_allocated(&gpu);
        }
    }
    if let (Some(first), Some(last)) = (after_first, gpu_allocated(&gpu)) {
        let grown = last as i64 - first as i64;
        assert!(
            grown.abs() < 1 << 20,
            "GPU memory after 200 rounds of new people: {first} -> {last} bytes"
        );
    }
    slots.render(&stage, device, queue, &[], |_| [0.0; 52]);
    assert_eq!(slots.worn(), 0, "nobody in view holds nothing");
    assert_eq!(
        slots.loaded_files(),
        default_count,
        "the defaults stay ready"
    );
}

#[test]
fn the_stage_is_drawn_only_when_its_picture_changes() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let mut slots = polyface::ui::AvatarSlots::new(&polyface::avatar::default_avatar_dir());
    let mut stage = AvatarStage::new(&gpu.device, &gpu.queue, 320, 240);
    let (device, queue) = (&gpu.device, &gpu.queue);
    let people = [person(1), person(2)];
    let still = |_: &polyface::track::Person| [0.0f32; 52];
    let mut jaw = [0.0f32; 52];
    jaw[polyface::retarget::ARKIT_52
        .iter()
        .position(|n| *n == "jawOpen")
        .unwrap()] = 0.8;
    assert!(slots.render(&stage, device, queue, &people, still));
    assert!(
        !slots.render(&stage, device, queue, &people, still),
        "same picture"
    );
    assert!(
        slots.render(&stage, device, queue, &people, |_| jaw),
        "a jaw opened"
    );
    assert!(!slots.render(&stage, device, queue, &people, |_| jaw));
    stage.resize(device, 400, 240);
    assert!(
        slots.render(&stage, device, queue, &people, |_| jaw),
        "a resized stage starts empty"
    );
    assert!(
        slots.render(&stage, device, queue, &people[..1], |_| jaw),
        "someone left"
    );
}

/// Frames submitted through `FramesInFlight` never run more than one ahead of the GPU: after
/// each submit, every earlier frame's work is done. (With plain submits the frames pile up:
/// this fails at the third.)
#[test]
fn frames_in_flight_keep_the_gpu_at_most_one_frame_behind() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let size = 32 << 20;
    let buffer = |usage| {
        gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let (from, to) = (
        buffer(wgpu::BufferUsages::COPY_SRC),
        buffer(wgpu::BufferUsages::COPY_DST),
    );
    let done = Arc::new(AtomicUsize::new(0));
    let mut in_flight = polyface::render::FramesInFlight::default();
    for frame in 0..12 {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        for _ in 0..4 {
            encoder.copy_buffer_to_buffer(&from, 0, &to, 0, size);
        }
        in_flight.submit(&gpu, [encoder.finish()]);
        let counter = Arc::clone(&done);
        gpu.queue.on_submitted_work_done(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let finished = done.load(Ordering::SeqCst);
        assert!(
            finished >= frame,
            "frame {frame} submitted with only {finished} earlier frames done"
        );
    }
}
