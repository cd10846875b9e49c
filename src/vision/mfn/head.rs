//! The per-face head of the decode: the grid head over the stride-8 face features, the face
//! trunk's last layer evaluated only on the cells it reads, the landmark-indexed refinement, and
//! the per-face values kept for the pose fit.

use glam::Vec2;

use super::dense::{add_to_rows, repeated, Dense};
use super::FACE_CHANNELS;
use crate::vision::ops::Activation;

/// The per-face linear layer over a `grid` × `grid` set of feature samples, plus (with
/// `mlp_hidden` > 0) a residual one-hidden-layer MLP on the same samples:
/// `values = linear(samples) + mlp2(relu(mlp1(samples)))`.
pub(super) struct GridHead {
    pub(super) grid: usize,
    pub(super) spacing: f32,
    pub(super) channels: usize,
    /// The linear layer and the MLP's first layer side by side (they read the same samples, so
    /// one product serves both): grid² · channels → FACE_CHANNELS + hidden, through a
    /// projection fitted to training samples (a third of the multiply-adds).
    pub(super) first: Factored,
    /// Their biases, the MLP's output bias folded into the linear layer's.
    pub(super) first_bias: Vec<f32>,
    /// hidden → FACE_CHANNELS, when the head has an MLP.
    pub(super) mlp_out: Option<Dense>,
}

/// A dense layer stored factored: the input first projected on `basis` (inputs → rank), then
/// `dense` (rank → outputs), two products of a fraction of the work and weight.
pub(super) struct Factored {
    pub(super) basis: Dense,
    pub(super) dense: Dense,
}

impl Factored {
    /// `out` (rows × outputs) += the layer applied to `x` (rows × inputs); gives the
    /// projection (rows × rank), which the pose fit reads.
    fn accumulate(&self, x: &[f32], out: &mut [f32]) -> Vec<f32> {
        let rows = x.len() / self.basis.inputs;
        let mut projected = vec![0f32; rows * self.basis.outputs];
        self.basis.accumulate(x, &mut projected);
        self.dense.accumulate(&projected, out);
        projected
    }

    fn outputs(&self) -> usize {
        self.dense.outputs
    }

    fn rank(&self) -> usize {
        self.basis.outputs
    }
}

/// Per-face values the head computes on its way to the face values — the grid samples'
/// projection, the MLP's hidden values, each refinement stage's projection, in that order —
/// kept for the pose fit, which reads them: they see the face's appearance, where the landmarks
/// give only its geometry.
#[derive(Default)]
pub(super) struct HeadFeatures {
    /// (rows × width values, width), one block per source.
    blocks: Vec<(Vec<f32>, usize)>,
}

impl HeadFeatures {
    pub(super) fn push(&mut self, block: Vec<f32>, rows: usize) {
        let width = block.len().checked_div(rows).unwrap_or(0);
        self.blocks.push((block, width));
    }

    /// Appends face `row`'s features, block by block.
    pub(super) fn extend_row(&self, row: usize, out: &mut Vec<f32>) {
        for (block, width) in &self.blocks {
            out.extend_from_slice(&block[row * width..][..*width]);
        }
    }
}

impl GridHead {
    /// The head's FACE_CHANNELS values for each row of `samples` (rows × grid² · channels);
    /// the projection and the MLP's hidden values go to `kept`.
    pub(super) fn apply(&self, samples: &[f32], rows: usize, kept: &mut HeadFeatures) -> Vec<f32> {
        let width = self.first.outputs();
        let mut first = repeated(&self.first_bias, rows);
        let projected = self.first.accumulate(samples, &mut first);
        kept.push(projected, rows);
        let mut values = Vec::with_capacity(rows * FACE_CHANNELS);
        for row in first.chunks_exact(width) {
            values.extend_from_slice(&row[..FACE_CHANNELS]);
        }
        if let Some(out) = &self.mlp_out {
            let mut hidden = Vec::with_capacity(rows * (width - FACE_CHANNELS));
            for row in first.chunks_exact(width) {
                hidden.extend(row[FACE_CHANNELS..].iter().map(|h| h.max(0.0)));
            }
            out.accumulate(&hidden, &mut values);
            kept.push(hidden, rows);
        }
        values
    }

    /// Sample offsets in units of the face size, row-major (y outer, x inner).
    pub(super) fn offsets(&self) -> impl Iterator<Item = Vec2> + '_ {
        let mid = (self.grid as f32 - 1.0) / 2.0;
        (0..self.grid * self.grid).map(move |k| {
            let (gy, gx) = ((k / self.grid) as f32, (k % self.grid) as f32);
            Vec2::new(gx - mid, gy - mid) * self.spacing
        })
    }
}

/// The landmark-indexed refinement: a layer's features (at the detection map's stride) sampled
/// at the 68 landmarks the grid head gives, and one linear layer over them that corrects all
/// FACE_CHANNELS values. Features read where the landmarks are see the detail a fixed grid over
/// the box misses. Each further stage samples where the one before put the landmarks.
pub(super) struct Refinement {
    /// The program output it reads.
    pub(super) layer: String,
    pub(super) channels: usize,
    pub(super) stages: Vec<RefinementStage>,
}

pub(super) struct RefinementStage {
    /// 68 · channels → FACE_CHANNELS, factored (its truncated SVD).
    pub(super) linear: Factored,
    pub(super) bias: Vec<f32>,
}

impl RefinementStage {
    /// Adds this stage's correction to `values` (rows × FACE_CHANNELS), given the samples at the
    /// landmarks (rows × 68 · channels); its projection goes to `kept`.
    pub(super) fn correct(&self, samples: &[f32], values: &mut [f32], kept: &mut HeadFeatures) {
        let rows = values.len() / FACE_CHANNELS;
        add_to_rows(values, &self.bias);
        let projected = self.linear.accumulate(samples, values);
        kept.push(projected, rows);
    }
}

/// How many features [`HeadFeatures`] holds for each face: the grid projection, the MLP's hidden
/// values and each refinement stage's projection.
pub(super) fn head_feature_count(head: &GridHead, refinement: &Refinement) -> usize {
    head.first.rank()
        + (head.first.outputs() - FACE_CHANNELS)
        + refinement
            .stages
            .iter()
            .map(|s| s.linear.rank())
            .sum::<usize>()
}
/// The face trunk's last layer, a 1×1 convolution + ReLU (`face.pw1`), evaluated per cell in
/// the decode for the cells the grid head reads: a face's 5×5 points touch a few dozen of the
/// map's 1,200 cells, so running it over the whole map in the pass (the pass's slowest layer,
/// ~0.24 ms) mostly computed features nobody read.
pub(super) struct CellProjection {
    pub(super) dense: Dense,
    pub(super) bias: Vec<f32>,
    pub(super) activation: Activation,
}

impl CellProjection {
    /// The features (cells × outputs) of `cells` (indices into the planes of the channel-major
    /// `trunk`, `plane` values per channel).
    pub(super) fn apply(&self, trunk: &[f32], plane: usize, cells: &[usize]) -> Vec<f32> {
        let inputs = self.dense.inputs;
        let mut gathered = Vec::with_capacity(cells.len() * inputs);
        for &cell in cells {
            gathered.extend((0..inputs).map(|c| trunk[c * plane + cell]));
        }
        let mut features = repeated(&self.bias, cells.len());
        // gemm on this thread: with only 96 inputs per row, the FMA product (made for a few
        // long rows) spends its time in horizontal sums (decode at 10 faces 0.78 vs 0.66 ms).
        self.dense
            .accumulate_gemm(&gathered, cells.len(), &mut features);
        self.activation.apply_all(&mut features);
        features
    }
}

/// A bilinear sample of the face map at input position `p` (cell centres at +0.5 cells),
/// clamped to the map border, as the training code's grid_sample: the four cells read (top
/// left, top right, bottom left, bottom right) and the weights of the right and bottom ones.
pub(super) struct BilinearTaps {
    pub(super) cells: [usize; 4],
    fx: f32,
    fy: f32,
}

impl BilinearTaps {
    pub(super) fn at(p: Vec2, stride: f32, rows: usize, columns: usize) -> BilinearTaps {
        let u = (p.x / stride - 0.5).clamp(0.0, (columns - 1) as f32);
        let v = (p.y / stride - 0.5).clamp(0.0, (rows - 1) as f32);
        let (x0, y0) = (u.floor() as usize, v.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(columns - 1), (y0 + 1).min(rows - 1));
        BilinearTaps {
            cells: [
                y0 * columns + x0,
                y0 * columns + x1,
                y1 * columns + x0,
                y1 * columns + x1,
            ],
            fx: u - x0 as f32,
            fy: v - y0 as f32,
        }
    }

    /// The samples of the first `out.len()` planes of `plane` values (a channel-major map).
    pub(super) fn blend_planes(&self, map: &[f32], plane: usize, out: &mut [f32]) {
        let (fx, fy) = (self.fx, self.fy);
        let [a, b, c, d] = self.cells;
        for (o, p) in out.iter_mut().zip(map.chunks_exact(plane)) {
            let top = p[a] * (1.0 - fx) + p[b] * fx;
            let bottom = p[c] * (1.0 - fx) + p[d] * fx;
            *o = top * (1.0 - fy) + bottom * fy;
        }
    }

    /// Appends the sample of every channel, from the feature vectors of the four cells.
    pub(super) fn blend(&self, [a, b, c, d]: [&[f32]; 4], out: &mut Vec<f32>) {
        let (fx, fy) = (self.fx, self.fy);
        out.extend(
            a.iter()
                .zip(b)
                .zip(c.iter().zip(d))
                .map(|((a, b), (c, d))| {
                    let top = a * (1.0 - fx) + b * fx;
                    let bottom = c * (1.0 - fx) + d * fx;
                    top * (1.0 - fy) + bottom * fy
                }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn the_pose_fit_reads_the_grid_projection_the_hidden_values_and_each_stage() {
        let dense = |outputs: usize, inputs: usize| {
            Dense::new(
                &Tensor::zeros((outputs, inputs), candle_core::DType::F32, &Device::Cpu).unwrap(),
            )
            .unwrap()
        };
        let factored = |rank, inputs, outputs| Factored {
            basis: dense(rank, inputs),
            dense: dense(outputs, rank),
        };
        // a 128-value projection of the samples and 256 hidden units; two stages of rank 96
        let head = GridHead {
            grid: 5,
            spacing: 0.15,
            channels: 128,
            first: factored(128, 3200, FACE_CHANNELS + 256),
            first_bias: vec![0.0; FACE_CHANNELS + 256],
            mlp_out: Some(dense(FACE_CHANNELS, 256)),
        };
        let stage = || RefinementStage {
            linear: factored(96, 2176, FACE_CHANNELS),
            bias: vec![0.0; FACE_CHANNELS],
        };
        let refinement = Refinement {
            layer: "fpn.smooth4.pw".into(),
            channels: 32,
            stages: vec![stage(), stage()],
        };
        assert_eq!(head_feature_count(&head, &refinement), 128 + 256 + 2 * 96);
        // and the head keeps them, block by block, for every face
        let mut kept = HeadFeatures::default();
        let values = head.apply(&vec![0.0; 2 * 3200], 2, &mut kept);
        assert_eq!(values.len(), 2 * FACE_CHANNELS);
        let mut values = values;
        for s in &refinement.stages {
            s.correct(&vec![0.0; 2 * 2176], &mut values, &mut kept);
        }
        let mut row = Vec::new();
        kept.extend_row(1, &mut row);
        assert_eq!(row.len(), head_feature_count(&head, &refinement));
    }

    #[test]
    fn face_map_sampling_is_bilinear_and_clamped() {
        let (rows, columns) = (2, 3);
        // cell-major features: channel c at cell (y, x) = 100 c + 10 y + x
        let channels = 4;
        let mut features = vec![0f32; rows * columns * channels];
        for y in 0..rows {
            for x in 0..columns {
                for c in 0..channels {
                    features[(y * columns + x) * channels + c] = (100 * c + 10 * y + x) as f32;
                }
            }
        }
        let at = |p: Vec2| {
            let taps = BilinearTaps::at(p, 8.0, rows, columns);
            let mut out = Vec::new();
            taps.blend(
                taps.cells
                    .map(|cell| &features[cell * channels..(cell + 1) * channels]),
                &mut out,
            );
            out
        };
        // cell (0, 1) centre = input (12, 4)
        assert_eq!(at(Vec2::new(12.0, 4.0))[2], 201.0);
        // halfway between columns 1 and 2, rows 0 and 1
        let s = at(Vec2::new(16.0, 8.0));
        assert_eq!(s.len(), channels);
        assert!((s[0] - 6.5).abs() < 1e-5, "{}", s[0]);
        // outside the map: the border value
        assert_eq!(at(Vec2::new(-50.0, 500.0))[0], 10.0);
        // there, the bottom-left cell with the full weight
        let border = BilinearTaps::at(Vec2::new(-50.0, 500.0), 8.0, rows, columns);
        assert_eq!((border.cells[0], border.fx, border.fy), (3, 0.0, 0.0));
    }
}
