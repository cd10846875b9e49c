//! Face re-identification: a small embedding network trained with an additive angular margin
//! (ArcFace) loss on identity-labelled faces (`training/reid/REID.md`). A face is aligned from its 68
//! landmarks to a small grayscale crop (its size and template come from the model file) exactly as
//! the training code does, embedded, and compared by cosine similarity: a person who comes back
//! gets their old ID.

use std::path::Path;

use candle_core::{Device, Module, Tensor};
use glam::Vec2;

use super::model_file::{ModelError, ModelFile};
use super::program::{LayerSpec, Program};

/// Side of the crop that files without an `input_size` were trained on.
pub const SIZE_64: usize = 64;
/// Destination of the five alignment points in a 64×64 crop (pixel-index coordinates); larger
/// crops use it scaled (`Alignment::scaled`), as the training code does.
pub const TEMPLATE_64: [[f64; 2]; 5] = [
    [21.5, 29.5],
    [41.5, 29.5],
    [31.5, 41.0],
    [23.0, 52.5],
    [40.0, 52.5],
];

/// Where the five points of a face go in the network's square input crop.
#[derive(Clone, Debug, PartialEq)]
pub struct Alignment {
    pub size: usize,
    /// Eye centres, nose tip, mouth corners in pixel-index coordinates of the crop.
    pub template: [[f64; 2]; 5],
}

impl Alignment {
    /// The 64 px template scaled to a `size`-pixel crop: the same framing with more pixels.
    pub fn scaled(size: usize) -> Alignment {
        let k = size as f64 / SIZE_64 as f64;
        Alignment {
            size,
            template: TEMPLATE_64.map(|[x, y]| [(x + 0.5) * k - 0.5, (y + 0.5) * k - 0.5]),
        }
    }

    /// The aligned `size`×`size` grayscale face (u8), as the training code's cv2.warpAffine
    /// (bilinear, replicated border) of the frame converted to gray first.
    pub fn align(&self, frame: &image::RgbImage, landmarks: &[Vec2]) -> Option<Vec<u8>> {
        warp(frame, landmarks, self.size, &self.template)
    }
}

pub struct ReId {
    program: Program,
    device: Device,
    flip_average: bool,
    pub alignment: Alignment,
    /// Cosine similarity above which two faces are taken for the same person (from the held-out
    /// pairs, at a false-accept rate of 1 %).
    pub threshold: f32,
}

/// Five points (eye centres, nose tip, mouth corners) from the 68 iBUG landmarks, in OpenCV's
/// pixel-index convention (the landmarks' continuous convention minus half a pixel).
fn five_points(landmarks: &[Vec2]) -> Option<[[f64; 2]; 5]> {
    if landmarks.len() < 68 {
        return None;
    }
    let mean = |r: std::ops::Range<usize>| {
        let n = r.len() as f32;
        r.map(|i| landmarks[i]).fold(Vec2::ZERO, |a, b| a + b) / n
    };
    let points = [
        mean(36..42),
        mean(42..48),
        landmarks[30],
        landmarks[48],
        landmarks[54],
    ];
    let mut out = [[0.0; 2]; 5];
    for (o, p) in out.iter_mut().zip(points) {
        if !p.is_finite() {
            return None;
        }
        *o = [p.x as f64 - 0.5, p.y as f64 - 0.5];
    }
    Some(out)
}

/// Least-squares similarity (no reflection) mapping `from` onto `to`: (a, e, bx, by) for
/// x' = a x − e y + bx, y' = e x + a y + by.
fn similarity(from: &[[f64; 2]; 5], to: &[[f64; 2]; 5]) -> Option<[f64; 4]> {
    let mean = |p: &[[f64; 2]; 5]| {
        let s = p.iter().fold([0.0, 0.0], |a, q| [a[0] + q[0], a[1] + q[1]]);
        [s[0] / 5.0, s[1] / 5.0]
    };
    let (ms, mt) = (mean(from), mean(to));
    let (mut num_a, mut num_e, mut den) = (0.0, 0.0, 0.0);
    for (s, t) in from.iter().zip(to) {
        let (sx, sy) = (s[0] - ms[0], s[1] - ms[1]);
        let (tx, ty) = (t[0] - mt[0], t[1] - mt[1]);
        num_a += sx * tx + sy * ty;
        num_e += sx * ty - sy * tx;
        den += sx * sx + sy * sy;
    }
    if den < 1e-9 {
        return None;
    }
    let (a, e) = (num_a / den, num_e / den);
    Some([
        a,
        e,
        mt[0] - (a * ms[0] - e * ms[1]),
        mt[1] - (e * ms[0] + a * ms[1]),
    ])
}

fn warp(
    frame: &image::RgbImage,
    landmarks: &[Vec2],
    size: usize,
    template: &[[f64; 2]; 5],
) -> Option<Vec<u8>> {
    let m = similarity(&five_points(landmarks)?, template)?;
    let [a, e, bx, by] = m;
    let det = a * a + e * e;
    if det < 1e-12 || frame.width() == 0 || frame.height() == 0 {
        return None;
    }
    let (w, h) = (frame.width() as i64, frame.height() as i64);
    let gray = |x: i64, y: i64| {
        let p = frame
            .get_pixel(x.clamp(0, w - 1) as u32, y.clamp(0, h - 1) as u32)
            .0;
        ((4899 * p[0] as u32 + 9617 * p[1] as u32 + 1868 * p[2] as u32 + 8192) >> 14) as f64
    };
    let mut out = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            // inverse of [[a, -e], [e, a]]: [[a, e], [-e, a]] / det
            let (dx, dy) = (x as f64 - bx, y as f64 - by);
            let u = (a * dx + e * dy) / det;
            let v = (-e * dx + a * dy) / det;
            let (x0, y0) = (u.floor(), v.floor());
            let (fx, fy) = (u - x0, v - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let top = gray(x0, y0) * (1.0 - fx) + gray(x0 + 1, y0) * fx;
            let bottom = gray(x0, y0 + 1) * (1.0 - fx) + gray(x0 + 1, y0 + 1) * fx;
            out.push((top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8);
        }
    }
    Some(out)
}

impl ReId {
    pub fn load(path: &Path, device: &Device) -> Result<ReId, ModelError> {
        let file = ModelFile::open(path, device)?;
        if let Some(format) = file.metadata.get("format") {
            if format != "polyface-reid" {
                return Err(ModelError::Metadata {
                    path: file.path.clone(),
                    key: "format".into(),
                    problem: format!(
                        "{format:?} is not a re-identification network (polyface-reid)"
                    ),
                });
            }
        }
        let specs: Vec<LayerSpec> = file.meta_json("layers")?;
        let number = |key: &str| file.metadata.get(key).and_then(|v| v.parse::<f32>().ok());
        let alignment = alignment_of(&file)?;
        Ok(ReId {
            program: Program::new(&specs, &file)?,
            alignment,
            device: device.clone(),
            flip_average: file
                .metadata
                .get("flip_average")
                .is_some_and(|v| v == "true"),
            // the strict (low false-accept) threshold when the file has it: merging two people
            // is worse than giving a returning person a new ID
            threshold: number("match_threshold")
                .or_else(|| number("threshold"))
                .unwrap_or(0.4),
        })
    }

    /// The face cropped and aligned for this network (None without 68 usable landmarks).
    pub fn align(&self, frame: &image::RgbImage, landmarks: &[Vec2]) -> Option<Vec<u8>> {
        self.alignment.align(frame, landmarks)
    }

    /// L2-normalised embeddings of aligned faces (u8, `alignment.size` squared each).
    pub fn embed_aligned(&self, faces: &[Vec<u8>]) -> candle_core::Result<Vec<Vec<f32>>> {
        if faces.is_empty() {
            return Ok(Vec::new());
        }
        let size = self.alignment.size;
        if let Some(f) = faces.iter().find(|f| f.len() != size * size) {
            candle_core::bail!(
                "an aligned face has {} pixels, this network takes {size}×{size}",
                f.len()
            );
        }
        let n = faces.len();
        let mut data = Vec::with_capacity(n * size * size * if self.flip_average { 2 } else { 1 });
        let norm = |v: u8| (v as f32 / 255.0 - 0.5) / 0.5;
        for f in faces {
            data.extend(f.iter().map(|v| norm(*v)));
        }
        if self.flip_average {
            for f in faces {
                for row in f.chunks_exact(size) {
                    data.extend(row.iter().rev().map(|v| norm(*v)));
                }
            }
        }
        let batch = data.len() / (size * size);
        let input = Tensor::from_vec(data, (batch, 1, size, size), &self.device)?;
        let out: Vec<Vec<f32>> = self.program.forward(&input)?.flatten_from(1)?.to_vec2()?;
        Ok((0..n)
            .map(|i| {
                let mut v = out[i].clone();
                if self.flip_average {
                    for (a, b) in v.iter_mut().zip(&out[n + i]) {
                        *a += b;
                    }
                }
                normalize(&mut v);
                v
            })
            .collect())
    }

    /// Raw network outputs (before normalisation) for aligned faces: the parity check.
    pub fn forward_raw(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        self.program.forward(input)
    }
}

/// The crop size and template the file was trained with: `input_size` [1,1,S,S] and
/// `alignment_template` (5 points); files from before those keys are 64 px with the 64 px template.
fn alignment_of(file: &ModelFile) -> Result<Alignment, ModelError> {
    let bad = |key: &str, problem: String| ModelError::Metadata {
        path: file.path.clone(),
        key: key.into(),
        problem,
    };
    let size = match file.metadata.get("input_size") {
        None => SIZE_64,
        Some(_) => {
            let shape: Vec<usize> = file.meta_json("input_size")?;
            match shape[..] {
                [1, 1, h, w] if h == w && (16..=256).contains(&h) => h,
                _ => {
                    return Err(bad(
                        "input_size",
                        format!("{shape:?} is not [1, 1, S, S] with S in 16..=256"),
                    ))
                }
            }
        }
    };
    let mut alignment = Alignment::scaled(size);
    if file.metadata.contains_key("alignment_template") {
        let points: Vec<[f64; 2]> = file.meta_json("alignment_template")?;
        let inside = |p: &[f64; 2]| {
            p.iter()
                .all(|v| v.is_finite() && (0.0..size as f64).contains(v))
        };
        match <[[f64; 2]; 5]>::try_from(points) {
            Ok(t) if t.iter().all(inside) => alignment.template = t,
            _ => {
                return Err(bad(
                    "alignment_template",
                    format!("needs 5 [x, y] points inside the {size}×{size} crop"),
                ))
            }
        }
    }
    Ok(alignment)
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// Cosine similarity of two L2-normalised embeddings.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_maps_onto_itself_and_a_scaled_rotated_copy_back() {
        let id = similarity(&TEMPLATE_64, &TEMPLATE_64).unwrap();
        assert!((id[0] - 1.0).abs() < 1e-12 && id[1].abs() < 1e-12 && id[2].abs() < 1e-9);
        // a face twice as big, turned 30°, shifted
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let moved: Vec<[f64; 2]> = TEMPLATE_64
            .iter()
            .map(|p| {
                [
                    2.0 * (c * p[0] - s * p[1]) + 100.0,
                    2.0 * (s * p[0] + c * p[1]) + 50.0,
                ]
            })
            .collect();
        let m = similarity(&moved.try_into().unwrap(), &TEMPLATE_64).unwrap();
        assert!((m[0] - 0.5 * c).abs() < 1e-9 && (m[1] + 0.5 * s).abs() < 1e-9);
    }

    #[test]
    fn aligning_a_face_drawn_at_the_template_reproduces_it() {
        for size in [64, 96] {
            let alignment = Alignment::scaled(size);
            let t = alignment.template;
            // a frame whose 5 points are exactly the template (+0.5: landmarks are continuous)
            let frame = image::RgbImage::from_fn(size as u32, size as u32, |x, y| {
                image::Rgb([(x * 2) as u8, (y * 2) as u8, 0])
            });
            let mut lm = vec![Vec2::ZERO; 68];
            let at = |p: [f64; 2]| Vec2::new(p[0] as f32 + 0.5, p[1] as f32 + 0.5);
            lm[36..42].fill(at(t[0]));
            lm[42..48].fill(at(t[1]));
            lm[30] = at(t[2]);
            lm[48] = at(t[3]);
            lm[54] = at(t[4]);
            let out = alignment.align(&frame, &lm).unwrap();
            assert_eq!(out.len(), size * size);
            for (y, row) in out.chunks(size).enumerate() {
                for (x, v) in row.iter().enumerate() {
                    let p = frame.get_pixel(x as u32, y as u32).0;
                    let want =
                        (4899 * p[0] as u32 + 9617 * p[1] as u32 + 1868 * p[2] as u32 + 8192) >> 14;
                    assert!((*v as i32 - want as i32).abs() <= 1);
                }
            }
            assert!(alignment.align(&frame, &lm[..10]).is_none());
        }
    }

    #[test]
    fn a_scaled_template_keeps_the_framing() {
        assert_eq!(Alignment::scaled(64).template, TEMPLATE_64);
        let t = Alignment::scaled(96).template;
        // symmetric about the centre of the 96 px crop, eyes 1.5× as far apart
        assert!((t[0][0] + t[1][0] - 95.0).abs() < 1e-12);
        assert!(
            ((t[1][0] - t[0][0]) - 1.5 * (TEMPLATE_64[1][0] - TEMPLATE_64[0][0])).abs() < 1e-12
        );
        assert!((t[0][1] - ((29.5 + 0.5) * 1.5 - 0.5)).abs() < 1e-12);
    }
}
