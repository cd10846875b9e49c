//! Hot kernels: depthwise convolution (ours vs candle's grouped conv), 1×1 conv, the stem conv,
//! the whole SFN and the shipped MFN (or the one in `$POLYFACE_MODELS`).
//! `cargo bench --bench kernels`

use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use polyface::vision::ops::{conv2d, depthwise3x3, pointwise, upsample2x, Activation};
use polyface::vision::sfn::{self, SfnConfig, DEFAULT_CONFIG_JSON};
use polyface::vision::Sfn;

fn depthwise(c: &mut Criterion) {
    let dev = Device::Cpu;
    // The layer the issue measured: 144 channels at 56×56.
    let x = Tensor::randn(0f32, 1.0, (1, 144, 56, 56), &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (144, 1, 3, 3), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, 144, &dev).unwrap();
    let mut group = c.benchmark_group("depthwise 144x56x56");
    group.bench_function("polyface fused kernel", |bench| {
        bench.iter(|| depthwise3x3(&x, &w, &b, 1, Activation::Relu).unwrap())
    });
    group.sample_size(10);
    group.bench_function("candle conv2d groups=C", |bench| {
        bench.iter(|| {
            x.conv2d(&w, 1, 1, 1, 144)
                .unwrap()
                .broadcast_add(&b.reshape((1, 144, 1, 1)).unwrap())
                .unwrap()
        })
    });
    group.finish();

    let x = Tensor::randn(0f32, 1.0, (1, 24, 56, 56), &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (144, 24, 1, 1), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, 144, &dev).unwrap();
    c.bench_function("pointwise 24->144 at 56x56", |bench| {
        bench.iter(|| pointwise(&x, &w, &b, Activation::Relu).unwrap())
    });
}

fn stem_and_strided(c: &mut Criterion) {
    let dev = Device::Cpu;
    // The detector / MFN stem: 3→16, stride 2, on the 320×240 letterboxed frame.
    let x = Tensor::randn(0f32, 1.0, (1, 3, 240, 320), &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (16, 3, 3, 3), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, 16, &dev).unwrap();
    c.bench_function("conv3x3 stem 3->16 stride 2 at 320x240", |bench| {
        bench.iter(|| conv2d(&x, &w, &b, 2, 1, Activation::Relu).unwrap())
    });
    // The first stride-2 depthwise layer after it.
    let x = Tensor::randn(0f32, 1.0, (1, 16, 120, 160), &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (16, 1, 3, 3), &dev).unwrap();
    c.bench_function("depthwise stride 2 16x120x160", |bench| {
        bench.iter(|| depthwise3x3(&x, &w, &b, 2, Activation::Relu).unwrap())
    });
}

fn upsampling(c: &mut Criterion) {
    // The FPN's stride-8 → stride-4 step.
    let x = Tensor::randn(0f32, 1.0, (1, 32, 30, 40), &Device::Cpu).unwrap();
    let mut group = c.benchmark_group("upsample2x 32x30x40");
    group.bench_function("polyface", |bench| bench.iter(|| upsample2x(&x).unwrap()));
    group.bench_function("candle upsample_nearest2d", |bench| {
        bench.iter(|| x.upsample_nearest2d(60, 80).unwrap())
    });
    group.finish();
}

/// The model folder: `$POLYFACE_MODELS` (as for the app, so a candidate can be measured against
/// the shipped files), else the repository's `models/`.
fn models_dir() -> std::path::PathBuf {
    std::env::var_os("POLYFACE_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
}

fn mfn_forward(c: &mut Criterion) {
    let model =
        polyface::vision::Mfn::load(&models_dir().join("mfn.safetensors"), &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 3, 240, 320), &Device::Cpu).unwrap();
    c.bench_function("mfn forward 320x240 (shipped model)", |bench| {
        bench.iter(|| model.forward(&x).unwrap())
    });
}

/// A 640×480 camera frame letterboxed into the networks' 320×240 input (before every pass).
fn letterbox(c: &mut Criterion) {
    let frame = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8])
    });
    c.bench_function("letterbox 640x480 -> 320x240", |bench| {
        bench.iter(|| {
            polyface::vision::letterbox::letterboxed_input(&frame, 320, 240, 1.0, &Device::Cpu)
                .unwrap()
        })
    });
}

/// The MFN's per-frame decode (heatmap peaks, grid-head samples, the head's matrix products)
/// on a synthetic network output holding `faces` well-separated face peaks.
fn mfn_decode(c: &mut Criterion) {
    let model =
        polyface::vision::Mfn::load(&models_dir().join("mfn.safetensors"), &Device::Cpu).unwrap();
    let (width, height) = model.input_size();
    let (columns, rows) = (width / 4, height / 4);
    // The face maps of a pass over noise; the detection map is replaced by one with `faces` peaks.
    let x = Tensor::randn(0f32, 1.0, (1, 3, height, width), &Device::Cpu).unwrap();
    let pass = model.forward(&x).unwrap();
    let letterbox =
        polyface::vision::Letterbox::for_frame(width as u32, height as u32, width, height, 1.0);
    let mut group = c.benchmark_group("mfn decode");
    for faces in [1usize, 10] {
        let plane = rows * columns;
        let mut heat = vec![0f32; 15 * plane];
        heat[..plane].fill(-10.0);
        for k in 0..faces {
            let (row, col) = (8 + 20 * (k / 5), 8 + 14 * (k % 5));
            heat[row * columns + col] = 5.0;
            // 32-pixel boxes: exp(ln 8) cells of stride 4.
            heat[3 * plane + row * columns + col] = 8f32.ln();
            heat[4 * plane + row * columns + col] = 8f32.ln();
        }
        let detection = Tensor::from_vec(heat, (1, 15, rows, columns), &Device::Cpu).unwrap();
        let output = polyface::vision::mfn::MfnOutput {
            detection,
            face: pass.face.clone(),
            refinement: pass.refinement.clone(),
        };
        assert_eq!(model.decode(&output, &letterbox).unwrap().len(), faces);
        group.bench_with_input(
            BenchmarkId::from_parameter(faces),
            &output,
            |bench, output| bench.iter(|| model.decode(output, &letterbox).unwrap()),
        );
        group.bench_with_input(
            BenchmarkId::new("after a network pass", faces),
            &output,
            |bench, output| {
                bench.iter_custom(|iters| {
                    let mut total = std::time::Duration::ZERO;
                    for _ in 0..iters {
                        model.forward(&x).unwrap();
                        let t = std::time::Instant::now();
                        std::hint::black_box(model.decode(output, &letterbox).unwrap());
                        total += t.elapsed();
                    }
                    total
                })
            },
        );
    }
    group.finish();
}

fn sfn_forward(c: &mut Criterion) {
    let config: SfnConfig = serde_json::from_str(DEFAULT_CONFIG_JSON).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sfn.safetensors");
    sfn::write_random_weights(&config, DEFAULT_CONFIG_JSON, &path, 1).unwrap();
    let model = Sfn::load(&path, &Device::Cpu).unwrap();
    let mut group = c.benchmark_group("sfn forward");
    for faces in [1usize, 10] {
        let x = Tensor::randn(0f32, 1.0, (faces, 3, 112, 112), &Device::Cpu).unwrap();
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{faces} faces")),
            &x,
            |bench, x| bench.iter(|| model.forward(x).unwrap()),
        );
    }
    group.finish();
}

fn pose_fit(c: &mut Criterion) {
    use glam::{Mat3, Vec3};
    use polyface::fit::{fit_pose, fit_pose_from, Camera, FitOptions, MEAN_FACE_68};
    let camera = Camera::assumed(640, 480, 63.0);
    let rotation = Mat3::from_rotation_y(0.4) * Mat3::from_rotation_x(-0.2);
    let points: Vec<glam::Vec2> = MEAN_FACE_68
        .iter()
        .map(|p| camera.project(rotation * Vec3::from_array(*p) + Vec3::new(3.0, -2.0, -55.0)))
        .collect();
    let network = Mat3::from_rotation_y(0.35);
    c.bench_function("fit_pose 68 points (LM, Huber, network prior)", |bench| {
        bench.iter(|| fit_pose(&points, &camera, Some(network), &FitOptions::default()).unwrap())
    });
    // A tracked face: the previous frame's answer is the start.
    let options = FitOptions::default();
    let previous = fit_pose(&points, &camera, Some(network), &options)
        .unwrap()
        .pose;
    c.bench_function("fit_pose 68 points, warm start", |bench| {
        bench.iter(|| fit_pose_from(&points, &camera, Some(network), previous, &options).unwrap())
    });
}

fn detection_decode(c: &mut Criterion) {
    use glam::Vec2;
    use polyface::vision::heatmap::{decode_heatmap, nms, Detection, HeatmapLayout};
    use polyface::vision::Letterbox;
    // A stride-4 output for 320×240 with 20 strong peaks on a noisy background.
    let layout = HeatmapLayout {
        stride: 4.0,
        rows: 60,
        columns: 80,
    };
    let plane = 60 * 80;
    let mut output: Vec<f32> = (0..15 * plane)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 4.0)
        .collect();
    for k in 0..20 {
        output[(k % 5) * 12 * 80 + (k / 5) * 18 + 5] = 3.0;
    }
    let letterbox = Letterbox::for_frame(640, 480, 320, 240, 1.0);
    c.bench_function("decode 80x60 heatmap (20 faces)", |bench| {
        bench.iter(|| decode_heatmap(&output, layout, &letterbox, 0.35))
    });
    let boxes: Vec<Detection> = (0..100)
        .map(|i| {
            let x = (i % 10) as f32 * 30.0 + (i / 50) as f32 * 5.0;
            let y = (i / 10 % 5) as f32 * 30.0;
            Detection {
                bbox: (Vec2::new(x, y), Vec2::new(x + 40.0, y + 40.0)),
                score: 1.0 - i as f32 / 100.0,
                keypoints: [Vec2::ZERO; 5],
            }
        })
        .collect();
    c.bench_function("nms 100 boxes", |bench| {
        bench.iter(|| nms(boxes.clone(), 0.4))
    });
}

/// The avatar stage: morph targets blended on the GPU for 10 default avatars at 1280×720, MSAA,
/// GPU work waited for (on lavapipe this is CPU rendering; on a real GPU it is the frame's cost).
fn render_morph_pass(c: &mut Criterion) {
    let Ok(gpu) = polyface::render::Gpu::headless() else {
        eprintln!("skipped: no GPU adapter");
        return;
    };
    let dir = polyface::avatar::default_avatar_dir();
    let avatars: Vec<polyface::avatar::Avatar> = polyface::avatar::list_avatars(&dir)
        .iter()
        .map(|p| polyface::avatar::Avatar::load(p).unwrap())
        .collect();
    let stage = polyface::render::AvatarStage::new(&gpu.device, &gpu.queue, 1280, 720);
    let uploaded: Vec<_> = (0..10)
        .map(|i| stage.upload(&gpu.device, &gpu.queue, &avatars[i % avatars.len()]))
        .collect();
    let jaw = polyface::retarget::ARKIT_52
        .iter()
        .position(|n| *n == "jawOpen")
        .unwrap();
    let mut group = c.benchmark_group("render morph pass");
    group.sample_size(10);
    group.bench_function("10 avatars 1280x720", |b| {
        let mut t = 0f32;
        b.iter(|| {
            t += 0.1;
            let poses: Vec<polyface::render::AvatarPose> = (0..10)
                .map(|i| {
                    let mut w = vec![0f32; 52];
                    w[jaw] = (t + i as f32).sin().abs();
                    polyface::render::AvatarPose {
                        morph_weights: w,
                        head: glam::Quat::from_rotation_y((t + i as f32).sin() * 0.3),
                    }
                })
                .collect();
            let items: Vec<_> = uploaded.iter().zip(&poses).collect();
            stage.render(&gpu.device, &gpu.queue, &items);
            gpu.device
                .poll(wgpu::PollType::wait_indefinitely())
                .unwrap();
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    depthwise,
    stem_and_strided,
    sfn_forward,
    upsampling,
    mfn_forward,
    mfn_decode,
    letterbox,
    pose_fit,
    detection_decode,
    render_morph_pass
);
criterion_main!(benches);
