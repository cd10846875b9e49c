//! A looping input for load runs: `faces` real faces (HELEN test crops) on a 640×480 grid in
//! every frame, panning slowly in a circle so tracking, fitting and the avatars have work every
//! frame, written as JPEG files (decoded per frame, as a camera's MJPEG is).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::bench::{compose_frame, load_face_crops, FRAME_SIZE};

/// Writes `frames` frames of `faces` faces into `dir` (created) and returns it.
pub fn write_moving_faces(data: &Path, faces: usize, frames: usize, dir: &Path) -> Result<PathBuf> {
    anyhow::ensure!(faces > 0, "--faces must be at least 1");
    anyhow::ensure!(frames > 0, "a scene needs at least one frame");
    let crops = load_face_crops(data, faces)
        .with_context(|| format!("{}: cannot read the HELEN test crops", data.display()))?;
    let (grid, _) = compose_frame(faces, &crops);
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the scene folder", dir.display()))?;
    let (width, height) = FRAME_SIZE;
    let background = image::Rgb([70, 74, 80]);
    for i in 0..frames {
        // a 12 × 8 pixel circle, once per loop, so the loop has no jump
        let angle = std::f32::consts::TAU * i as f32 / frames as f32;
        let (dx, dy) = ((12.0 * angle.cos()).round(), (8.0 * angle.sin()).round());
        let mut frame = image::RgbImage::from_pixel(width, height, background);
        image::imageops::replace(&mut frame, &grid, dx as i64, dy as i64);
        let path = dir.join(format!("frame_{i:04}.jpg"));
        image::DynamicImage::ImageRgb8(frame)
            .save(&path)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(dir.to_path_buf())
}
