//! Frames into network inputs: the letterbox (the frame scaled to fit, placed top-left, black
//! elsewhere) exactly as the training code makes it, and back from input to frame pixels.

use candle_core::{Device, Tensor};
use glam::Vec2;
use rayon::prelude::*;

/// u8 → [−1, 1]: x / 127.5 − 1 as one multiply.
const TO_UNIT: f32 = 1.0 / 127.5;

/// How a frame was fitted into the network input: scaled by `scale`, placed at the top-left.
/// A frame larger than the input is shrunk to fit; a smaller one is enlarged by at most the
/// network's `max_scale` (1 for networks that learnt faces only at the sizes a frame holds them:
/// enlarging adds no detail, only size; the room networks learnt enlarged photos too).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    pub input_width: usize,
    pub input_height: usize,
}

impl Letterbox {
    pub fn for_frame(
        frame_width: u32,
        frame_height: u32,
        input_width: usize,
        input_height: usize,
        max_scale: f32,
    ) -> Letterbox {
        let scale = (input_width as f32 / frame_width.max(1) as f32)
            .min(input_height as f32 / frame_height.max(1) as f32)
            .min(max_scale.max(f32::MIN_POSITIVE));
        Letterbox {
            scale,
            input_width,
            input_height,
        }
    }

    /// The detector's letterbox exactly as its training code makes it: the frame resized to
    /// round(W·s) × round(H·s) with OpenCV's bilinear rule (per-axis scale, neighbours clamped to
    /// the edge), at the top-left of a black canvas; normalised to [−1, 1].
    pub fn fill_resized(&self, frame: &image::RgbImage, out: &mut [f32]) {
        let (w, h) = (frame.width() as usize, frame.height() as usize);
        let (iw, ih) = (self.input_width, self.input_height);
        let plane = iw * ih;
        if w == 0 || h == 0 {
            out[..3 * plane].fill(-1.0);
            return;
        }
        let nw = ((w as f64 * self.scale as f64 + 0.5).floor() as usize).clamp(1, iw);
        let nh = ((h as f64 * self.scale as f64 + 0.5).floor() as usize).clamp(1, ih);
        let taps = |dst: usize, new: usize, old: usize| -> (usize, usize, f32) {
            let src = ((dst as f64 + 0.5) * old as f64 / new as f64 - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(old - 1);
            let i1 = (i0 + 1).min(old - 1);
            (i0, i1, (src - i0 as f64) as f32)
        };
        let pixels = frame.as_raw();
        // 640×480, 1280×720 and 1920×1080 frames are 2, 4 and 6 times the 320×240 input.
        let factor = (w % nw == 0 && h % nh == 0 && w / nw == h / nh).then_some(w / nw);
        // Byte offsets of each output column's two source pixels, and the right one's weight
        // (the general path's; the whole-factor rows need none).
        let columns: Vec<(usize, usize, f32)> = match factor {
            Some(_) => Vec::new(),
            None => (0..nw)
                .map(|x| {
                    let (x0, x1, fx) = taps(x, nw, w);
                    (x0 * 3, x1 * 3, fx)
                })
                .collect(),
        };
        let (red, rest) = out[..3 * plane].split_at_mut(plane);
        let (green, blue) = rest.split_at_mut(plane);
        // Rows are independent: split them over the CPU threads (this runs before every pass).
        // Each row blends its two source rows first (one straight pass the compiler vectorises),
        // then the columns: ~3x faster than blending four pixels per output pixel.
        red.par_chunks_mut(iw)
            .zip(green.par_chunks_mut(iw))
            .zip(blue.par_chunks_mut(iw))
            .enumerate()
            .for_each_init(
                // Each job's blended row, allocated on first use (whole-factor rows need none).
                Vec::new,
                |blended: &mut Vec<f32>, (y, ((r, g), b))| {
                    if y >= nh {
                        for channel in [r, g, b] {
                            channel.fill(-1.0);
                        }
                        return;
                    }
                    if let Some(k) = factor {
                        integer_factor_row(
                            pixels,
                            w,
                            k,
                            y,
                            [&mut r[..nw], &mut g[..nw], &mut b[..nw]],
                        );
                        for channel in [r, g, b] {
                            channel[nw..].fill(-1.0);
                        }
                        return;
                    }
                    blended.resize(w * 3, 0.0);
                    let (y0, y1, fy) = taps(y, nh, h);
                    let top = &pixels[y0 * w * 3..(y0 + 1) * w * 3];
                    let bottom = &pixels[y1 * w * 3..(y1 + 1) * w * 3];
                    for ((v, &t), &u) in blended.iter_mut().zip(top).zip(bottom) {
                        *v = t as f32 * (1.0 - fy) + u as f32 * fy;
                    }
                    let row = &blended[..];
                    for (x, &(i0, i1, fx)) in columns.iter().enumerate() {
                        let (left, right) = (&row[i0..i0 + 3], &row[i1..i1 + 3]);
                        let value =
                            |c: usize| (left[c] * (1.0 - fx) + right[c] * fx) * TO_UNIT - 1.0;
                        r[x] = value(0);
                        g[x] = value(1);
                        b[x] = value(2);
                    }
                    for channel in [r, g, b] {
                        channel[nw..].fill(-1.0);
                    }
                },
            );
    }

    pub fn to_frame(&self, input_point: Vec2) -> Vec2 {
        input_point / self.scale
    }
}

/// Output row `y` of a frame `k` times the resized size on both axes. The bilinear taps then
/// sit at fixed places with weights 0 or ½ (odd `k`: the block's centre pixel; even `k`: the
/// mean of its middle two rows and columns), so summing bytes gives the general path's floats
/// bit for bit, without its per-pixel weights.
fn integer_factor_row(pixels: &[u8], w: usize, k: usize, y: usize, [r, g, b]: [&mut [f32]; 3]) {
    let first = (k - 1) / 2;
    let row = |i: usize| &pixels[i * w * 3..(i + 1) * w * 3];
    let (block, at) = (3 * k, 3 * first);
    let top = row(k * y + first).chunks_exact(block);
    let outputs = r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut());
    if k % 2 == 1 {
        for (((r, g), b), p) in outputs.zip(top) {
            let p = &p[at..at + 3];
            *r = p[0] as f32 * TO_UNIT - 1.0;
            *g = p[1] as f32 * TO_UNIT - 1.0;
            *b = p[2] as f32 * TO_UNIT - 1.0;
        }
        return;
    }
    let bottom = row(k * y + first + 1).chunks_exact(block);
    for ((((r, g), b), t), u) in outputs.zip(top).zip(bottom) {
        let (t, u) = (&t[at..at + 6], &u[at..at + 6]);
        let mean = |c: usize| {
            let sum = t[c] as u16 + t[c + 3] as u16 + u[c] as u16 + u[c + 3] as u16;
            sum as f32 * 0.25 * TO_UNIT - 1.0
        };
        *r = mean(0);
        *g = mean(1);
        *b = mean(2);
    }
}

/// `frame` letterboxed into a (1, 3, height, width) network input by the training code's rule,
/// enlarged by at most `max_scale`.
pub fn letterboxed_input(
    frame: &image::RgbImage,
    width: usize,
    height: usize,
    max_scale: f32,
    device: &Device,
) -> candle_core::Result<(Tensor, Letterbox)> {
    let letterbox = Letterbox::for_frame(frame.width(), frame.height(), width, height, max_scale);
    let mut data = vec![0f32; 3 * width * height];
    letterbox.fill_resized(frame, &mut data);
    let input = Tensor::from_vec(data, (1, 3, height, width), device)?;
    Ok((input, letterbox))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenCV's bilinear resize of `frame` into the letterbox, four taps per pixel in f64.
    fn reference_letterbox(frame: &image::RgbImage, letterbox: &Letterbox) -> Vec<f32> {
        let (w, h) = (frame.width() as usize, frame.height() as usize);
        let (iw, ih) = (letterbox.input_width, letterbox.input_height);
        let nw = ((w as f64 * letterbox.scale as f64 + 0.5).floor() as usize).clamp(1, iw);
        let nh = ((h as f64 * letterbox.scale as f64 + 0.5).floor() as usize).clamp(1, ih);
        let taps = |dst: usize, new: usize, old: usize| {
            let src = ((dst as f64 + 0.5) * old as f64 / new as f64 - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(old - 1);
            (i0, (i0 + 1).min(old - 1), src - i0 as f64)
        };
        let mut out = vec![-1f32; 3 * iw * ih];
        for y in 0..nh {
            let (y0, y1, fy) = taps(y, nh, h);
            for x in 0..nw {
                let (x0, x1, fx) = taps(x, nw, w);
                for c in 0..3 {
                    let p = |x: usize, y: usize| frame.get_pixel(x as u32, y as u32)[c] as f64;
                    let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
                    let bottom = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
                    let value = top * (1.0 - fy) + bottom * fy;
                    out[(c * ih + y) * iw + x] = (value / 127.5 - 1.0) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn letterbox_is_opencvs_bilinear_at_whole_and_fractional_scales() {
        // 640×480, 1280×720 and 960×720 are 2, 4 and 3 times the input (the fixed-tap path);
        // the others are not.
        for (w, h) in [
            (640, 480),
            (1280, 720),
            (960, 720),
            (641, 479),
            (500, 700),
            (320, 240),
        ] {
            let mut seed = w * 31 + h;
            let frame = image::RgbImage::from_fn(w, h, |_, _| {
                let mut byte = || {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 24) as u8
                };
                image::Rgb([byte(), byte(), byte()])
            });
            let letterbox = Letterbox::for_frame(w, h, 320, 240, 1.0);
            let mut ours = vec![0f32; 3 * 320 * 240];
            letterbox.fill_resized(&frame, &mut ours);
            let reference = reference_letterbox(&frame, &letterbox);
            let worst = ours
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-6, "{w}x{h}: max difference {worst}");
        }
    }

    #[test]
    fn letterbox_fills_the_frame_top_left_and_black_elsewhere() {
        let frame = image::RgbImage::from_pixel(64, 32, image::Rgb([255, 255, 255]));
        let letterbox = Letterbox::for_frame(64, 32, 32, 32, 1.0);
        let mut out = vec![0f32; 3 * 32 * 32];
        letterbox.fill_resized(&frame, &mut out);
        assert_eq!(letterbox.scale, 0.5);
        assert!((out[0] - 1.0).abs() < 1e-6, "frame pixels are white");
        assert!(
            (out[20 * 32 + 5] + 1.0).abs() < 1e-6,
            "below the frame is black"
        );
    }

    #[test]
    fn a_frame_smaller_than_the_input_is_placed_as_it_is() {
        let frame = image::RgbImage::from_fn(256, 200, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        });
        let letterbox = Letterbox::for_frame(256, 200, 640, 480, 1.0);
        assert_eq!(letterbox.scale, 1.0);
        let mut out = vec![0f32; 3 * 640 * 480];
        letterbox.fill_resized(&frame, &mut out);
        let at = |c: usize, x: usize, y: usize| out[c * 640 * 480 + y * 640 + x];
        // pixels copied one to one, the rest black
        assert!((at(0, 100, 50) - (100.0 / 127.5 - 1.0)).abs() < 1e-5);
        assert!((at(1, 100, 199) - (199.0 / 127.5 - 1.0)).abs() < 1e-5);
        assert_eq!((at(0, 256, 10), at(2, 10, 200)), (-1.0, -1.0));
        assert_eq!(
            letterbox.to_frame(glam::Vec2::new(30.0, 40.0)),
            glam::Vec2::new(30.0, 40.0)
        );
    }

    #[test]
    fn a_network_that_learnt_enlarged_photos_gets_them_enlarged_up_to_its_limit() {
        // 320×200 fits 640×480 at 2.0 (width-bound); a limit of 1.5 stops there
        let fit = Letterbox::for_frame(320, 200, 640, 480, 4.0);
        assert_eq!(fit.scale, 2.0);
        let capped = Letterbox::for_frame(320, 200, 640, 480, 1.5);
        assert_eq!(capped.scale, 1.5);
        // a frame larger than the input is shrunk whatever the limit
        assert_eq!(Letterbox::for_frame(1280, 960, 640, 480, 2.0).scale, 0.5);
        let frame = image::RgbImage::from_fn(320, 200, |x, _| image::Rgb([x as u8, 0, 0]));
        let mut out = vec![0f32; 3 * 640 * 480];
        fit.fill_resized(&frame, &mut out);
        let red = |x: usize, y: usize| (out[y * 640 + x] + 1.0) * 127.5;
        // input column c samples frame column (c + 0.5) / 2 - 0.5 (half-pixel centres): 201 ->
        // 100.25, 10 -> 4.75; rows 0..400 hold the frame, the rest is black
        assert!((red(201, 100) - 100.25).abs() < 0.01, "{}", red(201, 100));
        assert!((red(10, 399) - 4.75).abs() < 0.01, "{}", red(10, 399));
        assert_eq!(out[400 * 640 + 10], -1.0);
        assert_eq!(
            fit.to_frame(glam::Vec2::new(200.0, 100.0)),
            glam::Vec2::new(100.0, 50.0)
        );
    }
}
