//! Network inputs from frames: bilinear resampling of a frame region into normalised planes.

use glam::Vec2;

/// Samples a `width` × `height` grid from `frame`: output pixel (i, j) reads the frame at the
/// continuous point `origin + ((j + 0.5), (i + 0.5)) · step` with bilinear interpolation, black
/// outside the frame, and stores (u8 / 255 − 0.5) / 0.5 into three planes (R, G, B) of `out`.
pub fn resample(
    frame: &image::RgbImage,
    origin: Vec2,
    step: f32,
    (width, height): (usize, usize),
    out: &mut [f32],
) {
    let (frame_w, frame_h) = (frame.width() as i64, frame.height() as i64);
    let pixels = frame.as_raw();
    let plane = width * height;
    let (plane_r, rest) = out[..3 * plane].split_at_mut(plane);
    let (plane_g, plane_b) = rest.split_at_mut(plane);
    // Horizontal taps are the same for every row: compute them once.
    let columns: Vec<[(i64, f32); 2]> = (0..width)
        .map(|j| {
            let u = origin.x + (j as f32 + 0.5) * step - 0.5;
            let x0 = u.floor();
            let fx = u - x0;
            [(x0 as i64, 1.0 - fx), (x0 as i64 + 1, fx)]
        })
        .collect();
    for i in 0..height {
        // Continuous frame coordinate, then pixel-index coordinate (pixel centres at +0.5).
        let v = origin.y + (i as f32 + 0.5) * step - 0.5;
        let y0 = v.floor();
        let fy = v - y0;
        let rows = [(y0 as i64, 1.0 - fy), (y0 as i64 + 1, fy)];
        for (j, taps) in columns.iter().enumerate() {
            let mut rgb = [0f32; 3];
            for &(y, wy) in &rows {
                if y < 0 || y >= frame_h || wy == 0.0 {
                    continue;
                }
                for &(x, wx) in taps {
                    if x < 0 || x >= frame_w || wx == 0.0 {
                        continue;
                    }
                    let k = ((y * frame_w + x) * 3) as usize;
                    let w = wy * wx;
                    rgb[0] += w * pixels[k] as f32;
                    rgb[1] += w * pixels[k + 1] as f32;
                    rgb[2] += w * pixels[k + 2] as f32;
                }
            }
            let o = i * width + j;
            plane_r[o] = rgb[0] / 127.5 - 1.0;
            plane_g[o] = rgb[1] / 127.5 - 1.0;
            plane_b[o] = rgb[2] / 127.5 - 1.0;
        }
    }
}
