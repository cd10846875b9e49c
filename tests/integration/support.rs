//! Test helpers: synthetic frames, videos made with ffmpeg, the shared data folder, the binary.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The polyface binary Cargo built for these tests.
pub fn polyface() -> Command {
    Command::new(env!("CARGO_BIN_EXE_polyface"))
}

/// Fails the test with the command's stderr unless it exited successfully.
pub fn assert_success(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `../shared/data` beside the checkout. Missing: `None` with a message, or a failure under CI.
pub fn shared_data() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if path.join("README.md").is_file() {
        return Some(path);
    }
    assert!(
        !in_ci(),
        "CI=true but the shared data folder {} is missing",
        path.display()
    );
    eprintln!(
        "skipped: {} not found (the shared face data lives beside the checkout)",
        path.display()
    );
    None
}

/// Skips (returns false) when `tool` is not installed, except under CI where it must be.
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || !in_ci(),
        "CI=true but `{tool}` is not installed (.ci/run installs it)"
    );
    if !found {
        eprintln!("skipped: `{tool}` not installed");
    }
    found
}

/// A frame of four coloured quadrants (red, green / blue, white), distinct per `seed`.
pub fn quadrants(width: u32, height: u32, seed: u8) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        let base = match (x < width / 2, y < height / 2) {
            (true, true) => [220, 30, 30],
            (false, true) => [30, 200, 40],
            (true, false) => [30, 40, 220],
            (false, false) => [240, 240, 240],
        };
        image::Rgb([base[0], base[1].saturating_add(seed), base[2]])
    })
}

/// A folder with `count` numbered PNG frames of `width`×`height`.
pub fn frame_folder(dir: &Path, count: u8, width: u32, height: u32) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        quadrants(width, height, i)
            .save(dir.join(format!("frame_{i:03}.png")))
            .unwrap();
    }
    dir.to_path_buf()
}

/// Encodes the frames of `folder` into a video file with ffmpeg.
pub fn make_video(folder: &Path, out: &Path, fps: u32) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-framerate", &fps.to_string(), "-i"])
        .arg(folder.join("frame_%03d.png"))
        .args(["-pix_fmt", "yuv420p"])
        .arg(out)
        .status()
        .expect("running ffmpeg");
    assert!(status.success(), "ffmpeg could not make {}", out.display());
}

/// Mean absolute difference per channel between two same-sized colours.
pub fn colour_distance(a: [u8; 3], b: [u8; 3]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f32 - y as f32).abs())
        .sum::<f32>()
        / 3.0
}

/// Largest absolute difference between two tensors of one shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// The u8 fixture input normalised as the networks expect: (u8 / 255 − 0.5) / 0.5.
pub fn normalised(input_u8: &candle_core::Tensor) -> candle_core::Tensor {
    ((input_u8.to_dtype(candle_core::DType::F32).unwrap() / 127.5).unwrap() - 1.0).unwrap()
}

/// Records `draw` into a render pass that first clears `target` to black, submits it, and
/// returns what `draw` returned.
pub fn draw_offscreen<T>(
    gpu: &polyface::render::Gpu,
    target: &polyface::render::OffscreenTarget,
    draw: impl FnOnce(&mut wgpu::RenderPass<'_>) -> T,
) -> T {
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let result = {
        let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: None,
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: &target.view,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                    store: wgpu::StoreOp::Store,
                },
            })],
            ..Default::default()
        });
        draw(&mut pass)
    };
    gpu.queue.submit([encoder.finish()]);
    result
}

/// A 640×480 frame with `face` (a shared-data crop) pasted at `x`, `size` pixels wide.
pub fn frame_with(face: Option<&image::RgbImage>, x: u32, size: u32) -> image::RgbImage {
    let mut frame = image::RgbImage::from_pixel(640, 480, image::Rgb([96, 100, 104]));
    if let Some(face) = face {
        let scaled =
            image::imageops::resize(face, size, size, image::imageops::FilterType::Triangle);
        image::imageops::replace(&mut frame, &scaled, x as i64, 120);
    }
    frame
}
