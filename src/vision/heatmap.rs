//! Centre-heatmap decoding, shared by the detector and the MFN: peaks of the 15-channel
//! stride-4 output as boxes with 5 keypoints, and non-maximum suppression. O(cells + faces).

use glam::Vec2;

use super::letterbox::Letterbox;

/// Peaks kept (best first) before non-maximum suppression.
pub const MAX_DETECTIONS: usize = 100;

/// One detected face, in frame pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// Tight box of the face's 68 landmarks (the data's box convention): min and max corner.
    pub bbox: (Vec2, Vec2),
    pub score: f32,
    /// Right eye centre, left eye centre, nose tip, right and left mouth corner (subject's sides).
    pub keypoints: [Vec2; 5],
}

impl Detection {
    pub fn width(&self) -> f32 {
        self.bbox.1.x - self.bbox.0.x
    }
    pub fn height(&self) -> f32 {
        self.bbox.1.y - self.bbox.0.y
    }
    pub fn center(&self) -> Vec2 {
        (self.bbox.0 + self.bbox.1) / 2.0
    }
}

/// Intersection over union of two boxes given as (min, max) corners.
pub fn iou(a: &(Vec2, Vec2), b: &(Vec2, Vec2)) -> f32 {
    let lo = a.0.max(b.0);
    let hi = a.1.min(b.1);
    let inter = (hi - lo).max(Vec2::ZERO);
    let inter = inter.x * inter.y;
    let area = |r: &(Vec2, Vec2)| ((r.1 - r.0).max(Vec2::ZERO)).element_product();
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Keeps the best-scoring detections, dropping any that overlap a kept one by more than `threshold`.
pub fn nms(mut detections: Vec<Detection>, threshold: f32) -> Vec<Detection> {
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::with_capacity(detections.len());
    for d in detections {
        if kept.iter().all(|k| iou(&k.bbox, &d.bbox) <= threshold) {
            kept.push(d);
        }
    }
    kept
}

/// Layout of the detector's dense output (channels × rows × columns at one stride).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeatmapLayout {
    pub stride: f32,
    pub rows: usize,
    pub columns: usize,
}

/// Decodes a CenterNet-style output: channel 0 centre logit, 1–2 sub-cell offset (cells),
/// 3–4 log(box size / stride), 5–14 keypoint offsets from the box centre in box widths/heights.
/// A cell is a face centre when its probability reaches `threshold` and is the maximum of its
/// 3×3 neighbourhood. Boxes come back in frame pixels.
pub fn decode_heatmap(
    output: &[f32],
    layout: HeatmapLayout,
    letterbox: &Letterbox,
    threshold: f32,
) -> Vec<Detection> {
    let plane = layout.rows * layout.columns;
    if output.len() < 15 * plane {
        return Vec::new();
    }
    let channel = |c: usize| &output[c * plane..(c + 1) * plane];
    let heat = channel(0);
    // Compare logits: sigmoid is monotonic.
    let logit_threshold = (threshold / (1.0 - threshold).max(1e-6)).ln();
    let mut detections = Vec::new();
    for row in 0..layout.rows {
        for col in 0..layout.columns {
            let index = row * layout.columns + col;
            let value = heat[index];
            if value < logit_threshold || !value.is_finite() {
                continue;
            }
            // Equal neighbours are both peaks (NMS sorts them out), as the training code decodes.
            let is_peak = (row.saturating_sub(1)..(row + 2).min(layout.rows)).all(|r| {
                (col.saturating_sub(1)..(col + 2).min(layout.columns))
                    .all(|c| heat[r * layout.columns + c] <= value)
            });
            if !is_peak {
                continue;
            }
            let center = Vec2::new(
                (col as f32 + 0.5 + channel(1)[index]) * layout.stride,
                (row as f32 + 0.5 + channel(2)[index]) * layout.stride,
            );
            let size = Vec2::new(
                channel(3)[index].clamp(-10.0, 10.0).exp(),
                channel(4)[index].clamp(-10.0, 10.0).exp(),
            ) * layout.stride;
            let mut keypoints = [Vec2::ZERO; 5];
            for (k, point) in keypoints.iter_mut().enumerate() {
                let offset = Vec2::new(channel(5 + 2 * k)[index], channel(6 + 2 * k)[index]);
                *point = letterbox.to_frame(center + offset * size);
            }
            let half = size / 2.0;
            detections.push(Detection {
                bbox: (
                    letterbox.to_frame(center - half),
                    letterbox.to_frame(center + half),
                ),
                score: 1.0 / (1.0 + (-value).exp()),
                keypoints,
            });
        }
    }
    detections
}

/// Peaks of a centre-heatmap output (the detector's 15-channel layout) as frame-space
/// detections, best first, at most [`MAX_DETECTIONS`] before non-maximum suppression.
pub fn detections_from_heatmap(
    values: &[f32],
    layout: HeatmapLayout,
    letterbox: &Letterbox,
    score_threshold: f32,
    nms_iou: f32,
) -> Vec<Detection> {
    let mut detections = decode_heatmap(values, layout, letterbox, score_threshold);
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    detections.truncate(MAX_DETECTIONS);
    nms(detections, nms_iou)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic_output(layout: HeatmapLayout, faces: &[(usize, usize, f32, f32)]) -> Vec<f32> {
        let plane = layout.rows * layout.columns;
        let mut out = vec![0f32; 15 * plane];
        out[..plane].fill(-8.0);
        for &(row, col, logit, log_size) in faces {
            let i = row * layout.columns + col;
            out[i] = logit;
            // Neighbours slightly lower: still one peak.
            if col + 1 < layout.columns {
                out[i + 1] = logit - 1.0;
            }
            out[plane + i] = 0.25;
            out[2 * plane + i] = -0.25;
            out[3 * plane + i] = log_size;
            out[4 * plane + i] = log_size;
            out[5 * plane + i] = -0.2; // right eye: left of centre in the image
        }
        out
    }

    #[test]
    fn decodes_peaks_into_frame_boxes() {
        let layout = HeatmapLayout {
            stride: 4.0,
            rows: 60,
            columns: 80,
        };
        let letterbox = Letterbox::for_frame(640, 480, 320, 240, 1.0);
        assert_eq!(letterbox.scale, 0.5);
        let out = synthetic_output(
            layout,
            &[(10, 20, 3.0, 2.0_f32.ln() + 2.0), (40, 60, 0.5, 1.0)],
        );
        let dets = decode_heatmap(&out, layout, &letterbox, 0.5);
        assert_eq!(dets.len(), 2);
        let d = dets.iter().find(|d| d.score > 0.9).unwrap();
        // centre (20 + 0.5 + 0.25) * 4 = 83 input px → 166 frame px; size 2e² * 4 input px.
        let size = 2.0 * 2f32.exp().powi(1) * 4.0 / 0.5;
        assert!((d.center() - Vec2::new(166.0, (10.0 + 0.5 - 0.25) * 8.0)).length() < 1e-3);
        assert!((d.width() - size).abs() < 1e-2 && (d.height() - size).abs() < 1e-2);
        assert!((d.keypoints[0].x - (d.center().x - 0.2 * size)).abs() < 1e-2);
        assert!(decode_heatmap(&out, layout, &letterbox, 0.7).len() == 1);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let det = |x: f32, score: f32| Detection {
            bbox: (Vec2::new(x, 0.0), Vec2::new(x + 10.0, 10.0)),
            score,
            keypoints: [Vec2::ZERO; 5],
        };
        let kept = nms(vec![det(0.0, 0.5), det(1.0, 0.9), det(50.0, 0.3)], 0.4);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert!((iou(&det(0.0, 1.0).bbox, &det(5.0, 1.0).bbox) - 1.0 / 3.0).abs() < 1e-6);
    }
}
