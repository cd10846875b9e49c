//! Hot kernels: depthwise convolution (ours vs candle's grouped conv), 1×1 conv, the whole SFN.
//! `cargo bench --bench kernels`

use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use polyface::vision::ops::{depthwise3x3, pointwise, Activation};
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
    use polyface::fit::{fit_pose, Camera, FitOptions, MEAN_FACE_68};
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
}

criterion_group!(benches, depthwise, sfn_forward, pose_fit);
criterion_main!(benches);
