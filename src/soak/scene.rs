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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scene_loops_a_panning_grid_of_faces() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
        if !data.join("helen/test.jsonl").is_file() {
            eprintln!("skipped: no shared data at {}", data.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let scene = write_moving_faces(&data, 20, 8, &dir.path().join("scene")).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&scene)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 8);
        let frames: Vec<image::RgbImage> = files
            .iter()
            .map(|f| image::open(f).unwrap().into_rgb8())
            .collect();
        assert!(frames.iter().all(|f| f.dimensions() == FRAME_SIZE));
        // consecutive frames differ (the grid moved), a quarter turn apart by 8-12 pixels
        let differing = |a: &image::RgbImage, b: &image::RgbImage| {
            a.pixels()
                .zip(b.pixels())
                .filter(|(p, q)| p.0.iter().zip(q.0).any(|(x, y)| x.abs_diff(y) > 40))
                .count()
        };
        assert!(differing(&frames[0], &frames[2]) > 10_000);
        assert!(write_moving_faces(&data, 0, 8, dir.path()).is_err());
    }
}
