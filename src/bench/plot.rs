//! `polyface bench --plot FILE.png`: latency against the number of faces, one line per
//! pipeline (median, with the p95 as a lighter line), drawn with `image` and text rasterised
//! with ab_glyph from egui's bundled font (no system fonts needed).

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use anyhow::{Context, Result};
use image::{Rgb, RgbImage};

use super::BenchResult;

const W: u32 = 900;
const H: u32 = 560;
const MARGIN: (f32, f32, f32, f32) = (80.0, 30.0, 30.0, 70.0); // left, right, top, bottom
const COLOURS: [[u8; 3]; 4] = [
    [230, 110, 60],
    [60, 140, 230],
    [90, 190, 90],
    [180, 90, 200],
];

struct Canvas {
    image: RgbImage,
    font: FontRef<'static>,
}

impl Canvas {
    fn blend(&mut self, x: i64, y: i64, c: [u8; 3], a: f32) {
        if x < 0 || y < 0 || x >= W as i64 || y >= H as i64 || a <= 0.0 {
            return;
        }
        let p = self.image.get_pixel_mut(x as u32, y as u32);
        for (channel, target) in p.0.iter_mut().zip(c) {
            *channel = (*channel as f32 * (1.0 - a) + target as f32 * a).round() as u8;
        }
    }

    /// An anti-aliased-ish thick line (distance-based coverage).
    fn line(&mut self, a: (f32, f32), b: (f32, f32), width: f32, c: [u8; 3]) {
        let (x0, x1) = (a.0.min(b.0) - width, a.0.max(b.0) + width);
        let (y0, y1) = (a.1.min(b.1) - width, a.1.max(b.1) + width);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = (dx * dx + dy * dy).max(1e-6);
        for y in y0.floor() as i64..=y1.ceil() as i64 {
            for x in x0.floor() as i64..=x1.ceil() as i64 {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let t = (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0);
                let d = ((px - a.0 - t * dx).powi(2) + (py - a.1 - t * dy).powi(2)).sqrt();
                self.blend(x, y, c, (width / 2.0 + 0.5 - d).clamp(0.0, 1.0));
            }
        }
    }

    fn dot(&mut self, at: (f32, f32), r: f32, c: [u8; 3]) {
        for y in (at.1 - r - 1.0) as i64..=(at.1 + r + 1.0) as i64 {
            for x in (at.0 - r - 1.0) as i64..=(at.0 + r + 1.0) as i64 {
                let d = ((x as f32 + 0.5 - at.0).powi(2) + (y as f32 + 0.5 - at.1).powi(2)).sqrt();
                self.blend(x, y, c, (r + 0.5 - d).clamp(0.0, 1.0));
            }
        }
    }

    /// Text with its left end at x (or centred / right-aligned by `align` 0, 0.5, 1), baseline y.
    fn text(&mut self, s: &str, x: f32, y: f32, size: f32, align: f32, c: [u8; 3]) {
        let font = self.font.clone();
        let scaled = font.as_scaled(PxScale::from(size));
        let width: f32 = s
            .chars()
            .map(|ch| scaled.h_advance(font.glyph_id(ch)))
            .sum();
        let mut pen = x - align * width;
        for ch in s.chars() {
            let id = font.glyph_id(ch);
            let glyph = id.with_scale_and_position(PxScale::from(size), ab_glyph::point(pen, y));
            pen += scaled.h_advance(id);
            if let Some(outline) = font.outline_glyph(glyph) {
                let bounds = outline.px_bounds();
                outline.draw(|gx, gy, coverage| {
                    self.blend(
                        bounds.min.x as i64 + gx as i64,
                        bounds.min.y as i64 + gy as i64,
                        c,
                        coverage,
                    );
                });
            }
        }
    }
}

/// Draws latency (ms) against faces for every pipeline in `results` and writes a PNG.
pub fn write_plot(results: &[BenchResult], device: &str, path: &std::path::Path) -> Result<()> {
    let font =
        FontRef::try_from_slice(epaint_default_fonts::UBUNTU_LIGHT).context("the bundled font")?;
    let mut c = Canvas {
        image: RgbImage::from_pixel(W, H, Rgb([255, 255, 255])),
        font,
    };
    let mut pipelines: Vec<&str> = results.iter().map(|r| r.pipeline.as_str()).collect();
    pipelines.dedup();
    let max_faces = results.iter().map(|r| r.faces).max().unwrap_or(1).max(1) as f32;
    let max_ms = results.iter().map(|r| r.p95_ms).fold(1.0f32, f32::max) * 1.1;
    let (l, r, t, b) = MARGIN;
    let (pw, ph) = (W as f32 - l - r, H as f32 - t - b);
    let at = |faces: f32, ms: f32| (l + faces / max_faces * pw, t + ph - ms / max_ms * ph);
    // grid and axes
    let step = nice_step(max_ms / 6.0);
    let mut v = 0.0;
    while v <= max_ms {
        let (_, y) = at(0.0, v);
        c.line((l, y), (l + pw, y), 1.0, [228, 228, 228]);
        c.text(
            &format!("{v:.0}"),
            l - 8.0,
            y + 5.0,
            15.0,
            1.0,
            [60, 60, 60],
        );
        v += step;
    }
    let mut faces: Vec<usize> = results.iter().map(|r| r.faces).collect();
    faces.sort_unstable();
    faces.dedup();
    for f in &faces {
        let (x, _) = at(*f as f32, 0.0);
        c.line((x, t), (x, t + ph), 1.0, [236, 236, 236]);
        c.text(&f.to_string(), x, t + ph + 22.0, 15.0, 0.5, [60, 60, 60]);
    }
    c.line((l, t + ph), (l + pw, t + ph), 1.5, [40, 40, 40]);
    c.line((l, t), (l, t + ph), 1.5, [40, 40, 40]);
    c.text(
        "faces in the frame",
        l + pw / 2.0,
        H as f32 - 18.0,
        17.0,
        0.5,
        [30, 30, 30],
    );
    c.text(
        "ms per frame",
        12.0,
        t - 8.0 + 14.0,
        15.0,
        0.0,
        [30, 30, 30],
    );
    c.text(
        &format!("polyface bench · {device}"),
        l + pw,
        t + 4.0,
        15.0,
        1.0,
        [90, 90, 90],
    );
    for (i, p) in pipelines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let light = colour.map(|v| ((v as u16 + 2 * 255) / 3) as u8);
        let mut rows: Vec<&BenchResult> = results.iter().filter(|r| r.pipeline == *p).collect();
        rows.sort_by_key(|r| r.faces);
        for w in rows.windows(2) {
            c.line(
                at(w[0].faces as f32, w[0].p95_ms),
                at(w[1].faces as f32, w[1].p95_ms),
                1.5,
                light,
            );
            c.line(
                at(w[0].faces as f32, w[0].median_ms),
                at(w[1].faces as f32, w[1].median_ms),
                3.0,
                colour,
            );
        }
        for row in &rows {
            c.dot(at(row.faces as f32, row.median_ms), 4.5, colour);
        }
        let (lx, ly) = (l + 20.0, t + 44.0 + 26.0 * i as f32);
        c.line((lx, ly - 5.0), (lx + 30.0, ly - 5.0), 3.0, colour);
        c.text(
            &format!("{} median (p95 lighter)", p.to_uppercase()),
            lx + 40.0,
            ly,
            16.0,
            0.0,
            [30, 30, 30],
        );
    }
    c.image
        .save(path)
        .with_context(|| format!("{}: cannot write the plot", path.display()))
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f32) -> f32 {
    let p = 10f32.powf(raw.max(1e-3).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_draws_both_pipelines_in_their_colours() {
        let row = |p: &str, faces, ms| BenchResult {
            pipeline: p.into(),
            faces,
            faces_found: faces,
            median_ms: ms,
            p95_ms: ms * 1.2,
            stages: Default::default(),
        };
        let results = vec![
            row("sfn", 1, 8.0),
            row("sfn", 10, 25.0),
            row("mfn", 1, 11.0),
            row("mfn", 10, 11.5),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        write_plot(&results, "test cpu", &path).unwrap();
        let img = image::open(&path).unwrap().into_rgb8();
        assert_eq!(img.dimensions(), (W, H));
        let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
        assert!(count(COLOURS[0]) > 200 && count(COLOURS[1]) > 200);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(1.5), 2.0);
    }
}
