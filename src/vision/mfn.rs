//! The multi-face network (MFN): one pass over the letterboxed frame gives every face's box,
//! 68 landmarks, head rotation and blendshapes, so its cost does not grow with the number of
//! people (the design of Chaudhuri et al., CVPR 2019). It is the detector's backbone with a
//! stride-8 face trunk; each detected face reads a small grid of trunk features spread over its
//! box into a linear layer plus a small MLP (the grid head: 1.5 M multiply-adds per face for the
//! shipped 5×5 grid, against ~80 M for the pass); in files with the refinement, stride-4
//! features sampled at the 68 landmarks that head gives correct all its values (one or more
//! stages, 0.42 M each at full rank), and a pose fit may correct the rotation last.
//! `training/MFN.md` documents the layout, the model file carries the layer list.

use std::path::Path;

use candle_core::{Device, Tensor};
use glam::Vec2;

use super::face::tight_box;
use super::heatmap::detections_from_heatmap;
use super::heatmap::{Detection, HeatmapLayout};
use super::letterbox::letterboxed_input;
use super::letterbox::Letterbox;
use super::model_file::{ModelError, ModelFile};
use super::ops::{read_f32, Activation};
use super::program::LayerOp;
use super::program::{LayerSpec, Program};
use super::sfn::{rotation_from_6d, sigmoid};
use super::FaceObservation;

/// Channels of the face head: 68 landmark offsets (x, y), a 6D rotation, 51 blendshape logits.
pub const FACE_CHANNELS: usize = 136 + 6 + 51;
const POSE: std::ops::Range<usize> = 136..142;
const BLENDSHAPES: std::ops::Range<usize> = 142..193;
const DETECTION_OUTPUT: &str = "head.out";
const FACE_FEATURES: &str = "face.pw1";
const GRID_HEAD: &str = "face_roi";
const MLP_HIDDEN: &str = "face_mlp1";
const MLP_OUT: &str = "face_mlp2";
const REFINEMENT: &str = "face_refine";
const LANDMARKS: usize = 68;

/// The per-face linear layer over a `grid` × `grid` set of feature samples, plus (in files with
/// `face_mlp` > 0) a residual one-hidden-layer MLP on the same samples:
/// `values = linear(samples) + mlp2(relu(mlp1(samples)))`.
struct GridHead {
    grid: usize,
    spacing: f32,
    channels: usize,
    /// The linear layer and the MLP's first layer side by side (they read the same samples, so
    /// one product serves both): grid² · channels → FACE_CHANNELS + hidden. In files exported
    /// with `face_grid_rank` > 0 through a projection fitted to training samples (a third of
    /// the multiply-adds).
    first: Factored,
    /// Their biases, the MLP's output bias folded into the linear layer's.
    first_bias: Vec<f32>,
    /// hidden → FACE_CHANNELS, when the file has an MLP.
    mlp_out: Option<Dense>,
}

/// A dense layer that files may store factored (`face_grid_rank`, `face_refine_rank` > 0): the
/// input first projected on `basis` (inputs → rank), then `dense` (rank → outputs), two
/// products of a fraction of the work and weight.
struct Factored {
    basis: Option<Dense>,
    dense: Dense,
}

impl Factored {
    /// `out` (rows × outputs) += the layer applied to `x` (rows × inputs); in a factored layer
    /// also gives the projection (rows × rank), which a pose fit may read.
    fn accumulate(&self, x: &[f32], out: &mut [f32]) -> Option<Vec<f32>> {
        match &self.basis {
            None => {
                self.dense.accumulate(x, out);
                None
            }
            Some(basis) => {
                let rows = x.len() / basis.inputs;
                let mut projected = vec![0f32; rows * basis.outputs];
                basis.accumulate(x, &mut projected);
                self.dense.accumulate(&projected, out);
                Some(projected)
            }
        }
    }

    fn outputs(&self) -> usize {
        self.dense.outputs
    }

    /// The projection's width, in a factored layer.
    fn rank(&self) -> Option<usize> {
        self.basis.as_ref().map(|b| b.outputs)
    }
}

/// Per-face values the head computes on its way to the face values — the grid samples'
/// projection, the MLP's hidden values, each refinement stage's projection, in that order —
/// kept for a pose fit that reads them ([`PoseFit::WITH_HEAD`]): they see the face's appearance,
/// where the landmarks give only its geometry.
#[derive(Default)]
struct HeadFeatures {
    /// (rows × width values, width), one block per source.
    blocks: Vec<(Vec<f32>, usize)>,
}

impl HeadFeatures {
    fn push(&mut self, block: Vec<f32>, rows: usize) {
        let width = block.len().checked_div(rows).unwrap_or(0);
        self.blocks.push((block, width));
    }

    /// Appends face `row`'s features, block by block.
    fn extend_row(&self, row: usize, out: &mut Vec<f32>) {
        for (block, width) in &self.blocks {
            out.extend_from_slice(&block[row * width..][..*width]);
        }
    }
}

/// A dense layer's weight, multiplied on the CPU with the gemm crate on the calling thread:
/// candle's matmul re-packed the weights and woke the thread pool on every call, which cost
/// ~0.25 ms per frame, several times the product itself at a handful of faces.
struct Dense {
    /// [outputs, inputs], row-major.
    weight: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Dense {
    /// From a [outputs, inputs] weight tensor.
    fn new(weight: &Tensor) -> candle_core::Result<Dense> {
        let (outputs, inputs) = weight.dims2()?;
        let weight = weight.contiguous()?.flatten_all()?.to_vec1()?;
        Ok(Dense {
            weight,
            inputs,
            outputs,
        })
    }

    /// `out` (rows × outputs) += `x` (rows × inputs) · weightᵀ: with AVX2 + FMA the product
    /// below, on all threads (criterion, 5×5 head after a network pass, 10 faces: 0.94 ms with
    /// gemm on one thread, 0.44-0.49 ms), else gemm. The weight (5.8 MB for the 5×5 head) no
    /// longer sits in cache after a network pass, so a few faces mostly wait on memory.
    fn accumulate(&self, x: &[f32], out: &mut [f32]) {
        let rows = x.len() / self.inputs;
        assert_eq!(x.len(), rows * self.inputs, "dense input");
        assert_eq!(out.len(), rows * self.outputs, "dense output");
        if rows == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above); sizes checked above.
            super::ops::on_pool(|| unsafe { self.accumulate_fma(x, rows, out) });
            return;
        }
        self.accumulate_gemm(x, rows, out);
    }

    /// The portable product.
    fn accumulate_gemm(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        assert_eq!(x.len(), rows * self.inputs, "dense input");
        assert_eq!(out.len(), rows * self.outputs, "dense output");
        // Computed as outᵀ (outputs × rows) = weight · xᵀ, so the large weight is the left
        // operand, which gemm streams through once in packed blocks.
        // SAFETY: strides of the sizes checked above: out row-major (rows × outputs) read as
        // outputs × rows, weight row-major (outputs × inputs), x (rows × inputs) read as xᵀ.
        unsafe {
            gemm::gemm(
                self.outputs,
                rows,
                self.inputs,
                out.as_mut_ptr(),
                self.outputs as isize,
                1,
                true,
                self.weight.as_ptr(),
                1,
                self.inputs as isize,
                x.as_ptr(),
                self.inputs as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

/// Faces per block of the FMA product: each weight vector loaded is used for this many faces.
#[cfg(target_arch = "x86_64")]
const FACE_BLOCK: usize = 6;

#[cfg(target_arch = "x86_64")]
impl Dense {
    /// The product for AVX2 + FMA, for the handful of faces a frame holds (gemm packs its
    /// operands for large products). The outputs are split between the threads (the decode
    /// otherwise runs on one core while the other idles); within a thread they go in pairs of
    /// weight rows, each read from memory once: the pair stays in L1 while every block of up to
    /// FACE_BLOCK faces is multiplied with it, up to 12 running dot products in registers.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn accumulate_fma(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        use rayon::prelude::*;
        // outᵀ: `rows` dots per output, so that each thread writes one contiguous part.
        let mut dots = vec![0f32; self.outputs * rows];
        let per_thread = self
            .outputs
            .div_ceil(rayon::current_num_threads())
            .div_ceil(2)
            * 2;
        dots.par_chunks_mut(per_thread * rows)
            .enumerate()
            // SAFETY: AVX2 + FMA by the caller's check.
            .for_each(|(part, dots)| unsafe { self.dots(x, rows, part * per_thread, dots) });
        for (o, column) in dots.chunks_exact(rows).enumerate() {
            for (row, dot) in out.chunks_exact_mut(self.outputs).zip(column) {
                row[o] += dot;
            }
        }
    }

    /// `dots` (outputs first..first + dots.len() / rows, `rows` faces each) = x · weightᵀ.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots(&self, x: &[f32], rows: usize, first: usize, dots: &mut [f32]) {
        let n = self.inputs;
        let last = first + dots.len() / rows - 1;
        for o in (first..=last).step_by(2) {
            // An odd last output is computed twice, written once.
            let pair = [o, (o + 1).min(last)].map(|o| &self.weight[o * n..][..n]);
            // The weight no longer sits in cache after a network pass: while the first faces are
            // multiplied, the next pair (contiguous) is fetched.
            let next = self.weight.get((o + 2) * n..(o + 4) * n).unwrap_or(&[]);
            let columns = &mut dots[(o - first) * rows..];
            let mut r0 = 0;
            while r0 < rows {
                let block = (rows - r0).min(FACE_BLOCK);
                let prefetch = if r0 == 0 { next } else { &[] };
                let faces = &x[r0 * n..];
                // SAFETY: AVX2 + FMA by the caller's check; `block` faces of n values in `faces`.
                unsafe {
                    match block {
                        1 => face_block::<1>(pair, faces, prefetch, columns, rows, r0),
                        2 => face_block::<2>(pair, faces, prefetch, columns, rows, r0),
                        3 => face_block::<3>(pair, faces, prefetch, columns, rows, r0),
                        4 => face_block::<4>(pair, faces, prefetch, columns, rows, r0),
                        5 => face_block::<5>(pair, faces, prefetch, columns, rows, r0),
                        _ => face_block::<FACE_BLOCK>(pair, faces, prefetch, columns, rows, r0),
                    }
                }
                r0 += block;
            }
        }
    }
}

/// Faces r0..r0 + F of the pair's columns (`rows` dots each; the columns from the pair's first
/// on, of which the first one or two are written) = the dot products of the first F faces in
/// `faces` (rows of the pair's length) with the pair of weight rows. Meanwhile the first
/// 2 · len values of `prefetch` are requested into cache.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn face_block<const F: usize>(
    pair: [&[f32]; 2],
    faces: &[f32],
    prefetch: &[f32],
    columns: &mut [f32],
    rows: usize,
    r0: usize,
) {
    use std::arch::x86_64::*;
    let len = pair[0].len();
    let faces: [&[f32]; F] = std::array::from_fn(|i| &faces[i * len..][..len]);
    let mut acc = [[_mm256_setzero_ps(); F]; 2];
    let full = len / 8 * 8;
    let mut k = 0;
    while k < full {
        // 16 values ahead per step of 8: one 64-byte line.
        if let Some(value) = prefetch.get(2 * k) {
            _mm_prefetch::<_MM_HINT_T0>((value as *const f32).cast());
        }
        // SAFETY: k + 8 <= len, and every slice is `len` long.
        unsafe {
            let w = pair.map(|w| _mm256_loadu_ps(w.as_ptr().add(k)));
            for (i, f) in faces.iter().enumerate() {
                let v = _mm256_loadu_ps(f.as_ptr().add(k));
                acc[0][i] = _mm256_fmadd_ps(w[0], v, acc[0][i]);
                acc[1][i] = _mm256_fmadd_ps(w[1], v, acc[1][i]);
            }
        }
        k += 8;
    }
    for ((w, acc), column) in pair.iter().zip(acc).zip(columns.chunks_mut(rows)) {
        for ((f, acc), dot) in faces.iter().zip(acc).zip(&mut column[r0..r0 + F]) {
            let mut lanes = [0f32; 8];
            // SAFETY: an 8-float store into an 8-float array.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
            let tail: f32 = (full..len).map(|k| w[k] * f[k]).sum();
            *dot = lanes.iter().sum::<f32>() + tail;
        }
    }
}

/// Adds `bias` to each row of `values` (rows × bias.len()).
fn add_to_rows(values: &mut [f32], bias: &[f32]) {
    for row in values.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// How many features [`HeadFeatures`] holds for each face with this head and refinement, or
/// `None` when some layer is not factored (it computes no projection to keep) or a stage has a
/// hidden layer.
fn head_feature_count(head: &GridHead, refinement: Option<&Refinement>) -> Option<usize> {
    let mut count = head.first.rank()? + (head.first.outputs() - FACE_CHANNELS);
    for stage in refinement.map_or(&[][..], |r| &r.stages) {
        if stage.hidden.is_some() {
            return None;
        }
        count += stage.linear.rank()?;
    }
    Some(count)
}

/// `rows` copies of `bias`, one after another: the starting values of a dense layer's output.
fn repeated(bias: &[f32], rows: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * bias.len());
    for _ in 0..rows {
        out.extend_from_slice(bias);
    }
    out
}

impl GridHead {
    /// The head's FACE_CHANNELS values for each row of `samples` (rows × grid² · channels);
    /// the projection and the MLP's hidden values go to `kept`.
    fn apply(&self, samples: &[f32], rows: usize, kept: &mut HeadFeatures) -> Vec<f32> {
        let width = self.first.outputs();
        let mut first = repeated(&self.first_bias, rows);
        if let Some(projected) = self.first.accumulate(samples, &mut first) {
            kept.push(projected, rows);
        }
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
    fn offsets(&self) -> impl Iterator<Item = Vec2> + '_ {
        let mid = (self.grid as f32 - 1.0) / 2.0;
        (0..self.grid * self.grid).map(move |k| {
            let (gy, gx) = ((k / self.grid) as f32, (k % self.grid) as f32);
            Vec2::new(gx - mid, gy - mid) * self.spacing
        })
    }
}

/// The landmark-indexed refinement (files with `face_refine` = a layer name): that layer's
/// features, at the detection map's stride, sampled at the 68 landmarks the grid head gives,
/// and one linear layer over them that corrects all FACE_CHANNELS values. Features read where
/// the landmarks are see the detail a fixed grid over the box misses. Files with
/// `face_refine_stages` > 1 repeat it, each stage sampling where the one before put the
/// landmarks; files with `face_refine_mlp` > 0 end with a stage that has a hidden layer.
struct Refinement {
    /// The program output it reads.
    layer: String,
    channels: usize,
    stages: Vec<RefinementStage>,
}

struct RefinementStage {
    /// 68 · channels → FACE_CHANNELS (factored in files with `face_refine_rank` > 0: its
    /// truncated SVD); in the hidden-layer stage, the samples and the values so far → hidden.
    linear: Factored,
    bias: Vec<f32>,
    /// The hidden-layer stage's ReLU output layer (hidden → FACE_CHANNELS): its correction can
    /// depend non-linearly on the samples and on the values before it, the pose among them.
    hidden: Option<HiddenOutput>,
}

struct HiddenOutput {
    dense: Dense,
    bias: Vec<f32>,
}

impl RefinementStage {
    /// Adds this stage's correction to `values` (rows × FACE_CHANNELS), given the samples at the
    /// landmarks (rows × 68 · channels); a factored stage's projection goes to `kept`.
    fn correct(&self, samples: &[f32], values: &mut [f32], kept: &mut HeadFeatures) {
        let rows = values.len() / FACE_CHANNELS;
        let Some(out) = &self.hidden else {
            add_to_rows(values, &self.bias);
            if let Some(projected) = self.linear.accumulate(samples, values) {
                kept.push(projected, rows);
            }
            return;
        };
        if rows == 0 {
            return;
        }
        let per_row = samples.len() / rows;
        let mut inputs = Vec::with_capacity(samples.len() + values.len());
        for (s, v) in samples
            .chunks_exact(per_row)
            .zip(values.chunks_exact(FACE_CHANNELS))
        {
            inputs.extend_from_slice(s);
            inputs.extend_from_slice(v);
        }
        let mut hidden = repeated(&self.bias, rows);
        self.linear.accumulate(&inputs, &mut hidden);
        for h in &mut hidden {
            *h = h.max(0.0);
        }
        add_to_rows(values, &out.bias);
        out.dense.accumulate(&hidden, values);
    }
}

/// The pose fit (files with `face_pose_fit` = [`PoseFit::FEATURES`], [`PoseFit::WITH_HEAD`],
/// [`PoseFit::WITH_SHAPE`] or [`PoseFit::WITH_SHAPE3`], from `training/mfn_pose_fit.py`): a
/// linear correction of the 6
/// rotation values from the face's own landmarks and rotation (and, with the head, the head's
/// own per-face features; with the shape, products of the landmarks' principal shape values),
/// fitted to the teacher's rotation on training faces. The net places the landmarks as well as
/// the SFN but its rotation output uses their geometry only in part.
struct PoseFit {
    /// [`PoseFit::INPUTS`] + `head_features` + the shape's products → 6.
    weight: Dense,
    bias: Vec<f32>,
    /// How many of the head's own features ([`HeadFeatures`]) follow the geometry (0: none).
    head_features: usize,
    shape: Option<ShapeProducts>,
}

/// The landmarks' geometry to second order in few values: z = basis · (scaled landmarks −
/// mean), the first k principal shape values of the training faces (the basis holds the
/// principal directions divided by their spread), then z_i z_j for i ≤ j (i outer).
/// With `cubic` = c ([`PoseFit::WITH_SHAPE3`]) those are followed by z_i z_j z_l for
/// i ≤ j ≤ l < c and the rotation values' pairs r_i r_j, i ≤ j.
struct ShapeProducts {
    mean: Vec<f32>,
    /// [k, 136], row-major.
    basis: Vec<f32>,
    cubic: Option<usize>,
}

impl ShapeProducts {
    fn count(&self) -> usize {
        let k = self.basis.len() / (2 * LANDMARKS);
        k * (k + 1) / 2 + self.cubic.map_or(0, |c| c * (c + 1) * (c + 2) / 6 + 21)
    }

    /// The products for one face's scaled landmarks (136 values) and rotation values (6).
    fn of(&self, landmarks: &[f32], rotation: &[f32]) -> Vec<f32> {
        let z: Vec<f32> = self
            .basis
            .chunks_exact(2 * LANDMARKS)
            .map(|direction| {
                direction
                    .iter()
                    .zip(landmarks.iter().zip(&self.mean))
                    .map(|(d, (l, m))| d * (l - m))
                    .sum()
            })
            .collect();
        let pairs = |z: &[f32]| -> Vec<f32> {
            z.iter()
                .enumerate()
                .flat_map(|(i, zi)| z[i..].iter().map(move |zj| zi * zj))
                .collect()
        };
        let mut out = pairs(&z);
        if let Some(c) = self.cubic {
            for i in 0..c {
                for j in i..c {
                    out.extend(z[j..c].iter().map(|zl| z[i] * z[j] * zl));
                }
            }
            out.extend(pairs(rotation));
        }
        out
    }
}

impl PoseFit {
    const FEATURES: &'static str = "landmarks+rotation+products";
    const WITH_HEAD: &'static str = "landmarks+rotation+products+head";
    const WITH_SHAPE: &'static str = "landmarks+rotation+products+head+shape";
    const WITH_SHAPE3: &'static str = "landmarks+rotation+products+head+shape+cubic+rotation";
    /// 136 landmark values, 6 rotation values and their 816 products.
    const INPUTS: usize = 2 * LANDMARKS + 6 + 2 * LANDMARKS * 6;

    /// Adds the correction to each face's rotation values (`values`: rows × FACE_CHANNELS;
    /// `head`: the head's features of the same rows, read when the fit has `head_features`).
    fn correct(&self, values: &mut [f32], head: &HeadFeatures) {
        let rows = values.len() / FACE_CHANNELS;
        let products = self.shape.as_ref().map_or(0, ShapeProducts::count);
        let mut features =
            Vec::with_capacity(rows * (Self::INPUTS + self.head_features + products));
        for (row, v) in values.chunks_exact(FACE_CHANNELS).enumerate() {
            // The landmarks centred on their mean point and scaled to unit RMS distance from
            // it: the box's place and size drop out.
            let points = &v[..2 * LANDMARKS];
            let mean = points
                .chunks_exact(2)
                .fold(Vec2::ZERO, |m, p| m + Vec2::new(p[0], p[1]))
                / LANDMARKS as f32;
            let spread = (points
                .chunks_exact(2)
                .map(|p| (Vec2::new(p[0], p[1]) - mean).length_squared())
                .sum::<f32>()
                / LANDMARKS as f32)
                .sqrt()
                .max(1e-6);
            let start = features.len();
            features.extend(
                points
                    .chunks_exact(2)
                    .flat_map(|p| ((Vec2::new(p[0], p[1]) - mean) / spread).to_array()),
            );
            let rotation = &v[2 * LANDMARKS..2 * LANDMARKS + 6];
            features.extend_from_slice(rotation);
            for i in start..start + 2 * LANDMARKS {
                let l = features[i];
                features.extend(rotation.iter().map(|r| l * r));
            }
            let shape = self
                .shape
                .as_ref()
                .map(|shape| shape.of(&features[start..start + 2 * LANDMARKS], rotation));
            if self.head_features > 0 {
                head.extend_row(row, &mut features);
            }
            features.extend(shape.into_iter().flatten());
        }
        let mut correction = repeated(&self.bias, rows);
        self.weight.accumulate(&features, &mut correction);
        for (v, c) in values
            .chunks_exact_mut(FACE_CHANNELS)
            .zip(correction.chunks_exact(6))
        {
            for (v, c) in v[2 * LANDMARKS..2 * LANDMARKS + 6].iter_mut().zip(c) {
                *v += c;
            }
        }
    }
}

pub struct Mfn {
    /// Every layer but the face trunk's last.
    program: Program,
    /// The layer that layer reads (the pass's second output).
    face_trunk: String,
    projection: CellProjection,
    input_width: usize,
    input_height: usize,
    stride: usize,
    face_stride: usize,
    head: GridHead,
    refinement: Option<Refinement>,
    pose_fit: Option<PoseFit>,
    pub score_threshold: f32,
    pub nms_iou: f32,
    device: Device,
}

/// The raw outputs of one pass: the detection map, the stride-8 face trunk before its last
/// layer (`face.pw1`, which [`Mfn::decode`] applies only where the grid head reads;
/// [`Mfn::face_features`] gives the whole map) and, in files with the refinement, the map it
/// samples at the landmarks.
pub struct MfnOutput {
    pub detection: Tensor,
    pub face: Tensor,
    pub refinement: Option<Tensor>,
}

/// The face trunk's last layer, a 1×1 convolution + ReLU (`face.pw1`), evaluated per cell in
/// the decode for the cells the grid head reads: a face's 5×5 points touch a few dozen of the
/// map's 1,200 cells, so running it over the whole map in the pass (the pass's slowest layer,
/// ~0.24 ms) mostly computed features nobody read.
struct CellProjection {
    dense: Dense,
    bias: Vec<f32>,
    activation: Activation,
}

impl CellProjection {
    /// The features (cells × outputs) of `cells` (indices into the planes of the channel-major
    /// `trunk`, `plane` values per channel).
    fn apply(&self, trunk: &[f32], plane: usize, cells: &[usize]) -> Vec<f32> {
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

impl Mfn {
    pub fn load(path: &Path, device: &Device) -> Result<Mfn, ModelError> {
        let file = ModelFile::open(path, device)?;
        let bad = |key: &str, problem: String| ModelError::Metadata {
            path: file.path.clone(),
            key: key.into(),
            problem,
        };
        if let Some(format) = file.metadata.get("format") {
            if format != "polyface-mfn" {
                return Err(bad(
                    "format",
                    format!("{format:?} is not a multi-face network (polyface-mfn)"),
                ));
            }
        }
        let mut specs: Vec<LayerSpec> = file.meta_json("layers")?;
        let [_, _, input_height, input_width]: [usize; 4] = file.meta_json("input_size")?;
        let stride: usize = file.meta_json("stride")?;
        let face_stride: usize = file.meta_json("face_stride")?;
        for s in [stride, face_stride] {
            if s == 0 || input_width % s != 0 || input_height % s != 0 {
                return Err(bad("stride", format!("{s} must divide the input size")));
            }
        }
        let channels = |name: &str| {
            specs
                .iter()
                .find(|l| l.name == name)
                .map(|l| l.out_channels)
        };
        if channels(DETECTION_OUTPUT) != Some(15) {
            return Err(bad(
                "layers",
                format!("{DETECTION_OUTPUT} must have 15 channels"),
            ));
        }
        let version = file.metadata.get("format_version").map(String::as_str);
        if version != Some("2") {
            return Err(bad(
                "format_version",
                format!(
                    "{version:?}: this build reads format 2 (grid face head); \
                     re-export the model with training/mfn_train.py"
                ),
            ));
        }
        let Some(last) = specs.iter().position(|l| l.name == FACE_FEATURES) else {
            return Err(bad("layers", format!("no {FACE_FEATURES} layer")));
        };
        let last = specs.remove(last);
        let (face_trunk, activation) = match (last.input.names().as_slice(), last.op, last.act) {
            ([input], LayerOp::Conv1x1, activation) => (input.to_string(), activation),
            _ => {
                return Err(bad(
                    "layers",
                    format!(
                        "{FACE_FEATURES} must be a 1x1 convolution (+ activation) of one input"
                    ),
                ))
            }
        };
        if specs
            .iter()
            .any(|l| l.input.names().contains(&FACE_FEATURES))
        {
            return Err(bad(
                "layers",
                format!("{FACE_FEATURES} must be an output only"),
            ));
        }
        let trunk_channels = specs
            .iter()
            .find(|l| l.name == face_trunk)
            .map(|l| l.out_channels);
        if trunk_channels != Some(last.in_channels) {
            return Err(bad(
                "layers",
                format!(
                    "{FACE_FEATURES} reads {} channels, {face_trunk} must give as many",
                    last.in_channels
                ),
            ));
        }
        let feature_channels = last.out_channels;
        let grid: usize = file.meta_json("face_grid")?;
        let spacing: f32 = file.meta_json("face_grid_spacing")?;
        if !(1..=7).contains(&grid) || !(0.0..=1.0).contains(&spacing) {
            return Err(bad(
                "face_grid",
                format!("grid {grid} / spacing {spacing} out of range"),
            ));
        }
        let inputs = grid * grid * feature_channels;
        // Counts the metadata may leave out (older files): 0 = none.
        let optional_count = |key: &str| -> Result<usize, ModelError> {
            match file.metadata.get(key) {
                Some(_) => file.meta_json(key),
                None => Ok(0),
            }
        };
        let rank = optional_count("face_grid_rank")?;
        if rank > inputs {
            return Err(bad(
                "face_grid_rank",
                format!("{rank} is more than the {inputs} samples"),
            ));
        }
        // What the linear layer and the MLP read: the samples, or their projection.
        let head_inputs = if rank == 0 { inputs } else { rank };
        let tensor_error = |e: candle_core::Error| ModelError::Tensor {
            path: file.path.clone(),
            tensor: GRID_HEAD.into(),
            problem: e.to_string(),
        };
        let linear = file
            .tensor(
                &format!("{GRID_HEAD}.weight"),
                &[FACE_CHANNELS, head_inputs],
            )?
            .to_device(&Device::Cpu)
            .map_err(tensor_error)?;
        let mut bias = file
            .tensor(&format!("{GRID_HEAD}.bias"), &[FACE_CHANNELS])?
            .to_device(&Device::Cpu)
            .and_then(|b| b.to_vec1::<f32>())
            .map_err(tensor_error)?;
        let hidden = optional_count("face_mlp")?;
        if hidden > 4096 {
            return Err(bad(
                "face_mlp",
                format!("{hidden} hidden units is out of range"),
            ));
        }
        let cpu_tensor = |name: &str, shape: &[usize]| {
            file.tensor(name, shape)?
                .to_device(&Device::Cpu)
                .map_err(|e| ModelError::Tensor {
                    path: file.path.clone(),
                    tensor: name.into(),
                    problem: e.to_string(),
                })
        };
        let (first_weight, mlp_out) = if hidden == 0 {
            (linear, None)
        } else {
            let w1 = format!("{MLP_HIDDEN}.weight");
            let b1 = format!("{MLP_HIDDEN}.bias");
            let w2 = format!("{MLP_OUT}.weight");
            let b2 = format!("{MLP_OUT}.bias");
            let out_bias: Vec<f32> = cpu_tensor(&b2, &[FACE_CHANNELS])?
                .to_vec1()
                .map_err(tensor_error)?;
            for (b, o) in bias.iter_mut().zip(out_bias) {
                *b += o;
            }
            let hidden_bias: Vec<f32> = cpu_tensor(&b1, &[hidden])?
                .to_vec1()
                .map_err(tensor_error)?;
            bias.extend(hidden_bias);
            let both = Tensor::cat(&[&linear, &cpu_tensor(&w1, &[hidden, head_inputs])?], 0)
                .map_err(tensor_error)?;
            let out = cpu_tensor(&w2, &[FACE_CHANNELS, hidden])?;
            (both, Some(Dense::new(&out).map_err(tensor_error)?))
        };
        let projection_weight = cpu_tensor(
            &format!("{FACE_FEATURES}.weight"),
            &[feature_channels, last.in_channels, 1, 1],
        )?
        .reshape((feature_channels, last.in_channels))
        .map_err(tensor_error)?;
        let projection = CellProjection {
            dense: Dense::new(&projection_weight).map_err(tensor_error)?,
            bias: cpu_tensor(&format!("{FACE_FEATURES}.bias"), &[feature_channels])?
                .to_vec1()
                .map_err(tensor_error)?,
            activation,
        };
        // The projection `{name}.basis` [rank, inputs] of a factored layer, if the file has one.
        let basis_of = |name: &str, rank: usize, inputs: usize| -> Result<_, ModelError> {
            match rank {
                0 => Ok(None),
                _ => {
                    let basis = cpu_tensor(&format!("{name}.basis"), &[rank, inputs])?;
                    Ok(Some(Dense::new(&basis).map_err(tensor_error)?))
                }
            }
        };
        let head = GridHead {
            grid,
            spacing,
            channels: feature_channels,
            first: Factored {
                basis: basis_of(GRID_HEAD, rank, inputs)?,
                dense: Dense::new(&first_weight).map_err(tensor_error)?,
            },
            first_bias: bias,
            mlp_out,
        };
        let hidden_width = optional_count("face_refine_mlp")?;
        let refinement = match file.metadata.get("face_refine").map(String::as_str) {
            None | Some("") if hidden_width > 0 => {
                return Err(bad(
                    "face_refine_mlp",
                    "a hidden-layer stage needs the refinement (face_refine)".into(),
                ))
            }
            None | Some("") => None,
            Some(layer) => {
                let found = specs.iter().find(|l| l.name == layer);
                // (A layer without channels would leave nothing to sample.)
                let Some(channels) = found.map(|l| l.out_channels).filter(|&c| c > 0) else {
                    return Err(bad(
                        "face_refine",
                        format!("{layer:?} is not a layer of the network with channels"),
                    ));
                };
                let inputs = LANDMARKS * channels;
                let rank = optional_count("face_refine_rank")?;
                let count = optional_count("face_refine_stages")?.max(1);
                if count > 8 {
                    return Err(bad(
                        "face_refine_stages",
                        format!("{count} stages is out of range"),
                    ));
                }
                let weight_inputs = if rank == 0 { inputs } else { rank };
                let mut stages = Vec::with_capacity(count);
                for stage in 1..=count {
                    // face_refine.*, then face_refine2.*, face_refine3.*, ...
                    let prefix = match stage {
                        1 => REFINEMENT.to_string(),
                        _ => format!("{REFINEMENT}{stage}"),
                    };
                    let basis = basis_of(&prefix, rank, inputs)?;
                    let weight =
                        cpu_tensor(&format!("{prefix}.weight"), &[FACE_CHANNELS, weight_inputs])?;
                    stages.push(RefinementStage {
                        linear: Factored {
                            basis,
                            dense: Dense::new(&weight).map_err(tensor_error)?,
                        },
                        bias: cpu_tensor(&format!("{prefix}.bias"), &[FACE_CHANNELS])?
                            .to_vec1()
                            .map_err(tensor_error)?,
                        hidden: None,
                    });
                }
                if hidden_width > 0 {
                    let tensor = |name: &str, shape: &[usize]| {
                        cpu_tensor(&format!("{REFINEMENT}_mlp.{name}"), shape)
                    };
                    let vector = |name: &str, length: usize| {
                        tensor(name, &[length])?.to_vec1().map_err(tensor_error)
                    };
                    let hidden_weight =
                        tensor("hidden.weight", &[hidden_width, inputs + FACE_CHANNELS])?;
                    let out_weight = tensor("out.weight", &[FACE_CHANNELS, hidden_width])?;
                    stages.push(RefinementStage {
                        linear: Factored {
                            basis: None,
                            dense: Dense::new(&hidden_weight).map_err(tensor_error)?,
                        },
                        bias: vector("hidden.bias", hidden_width)?,
                        hidden: Some(HiddenOutput {
                            dense: Dense::new(&out_weight).map_err(tensor_error)?,
                            bias: vector("out.bias", FACE_CHANNELS)?,
                        }),
                    });
                }
                Some(Refinement {
                    layer: layer.to_string(),
                    channels,
                    stages,
                })
            }
        };
        let pose_fit = match file.metadata.get("face_pose_fit").map(String::as_str) {
            None | Some("") => None,
            Some(
                kind @ (PoseFit::FEATURES
                | PoseFit::WITH_HEAD
                | PoseFit::WITH_SHAPE
                | PoseFit::WITH_SHAPE3),
            ) => {
                let head_features = match kind {
                    PoseFit::FEATURES => 0,
                    _ => head_feature_count(&head, refinement.as_ref()).ok_or_else(|| {
                        bad(
                            "face_pose_fit",
                            format!(
                                "{kind:?} reads the head's own features, which only a factored head \
                                 gives (face_grid_rank and face_refine_rank > 0, no hidden-layer stage)"
                            ),
                        )
                    })?,
                };
                let shape = if kind == PoseFit::WITH_SHAPE || kind == PoseFit::WITH_SHAPE3 {
                    const BASIS: &str = "face_pose_fit.shape_basis";
                    let k = match file.shape(BASIS) {
                        Some(&[k, n]) if n == 2 * LANDMARKS && (1..=64).contains(&k) => k,
                        found => {
                            return Err(bad(
                                "face_pose_fit",
                                format!(
                                    "{kind:?} needs {BASIS} [k, {}] with 1 <= k <= 64, the file \
                                     has {found:?}",
                                    2 * LANDMARKS
                                ),
                            ))
                        }
                    };
                    let cubic = match kind {
                        PoseFit::WITH_SHAPE3 => match optional_count("face_pose_fit_cubic")? {
                            c @ 1.. if c <= k => Some(c),
                            c => {
                                return Err(bad(
                                    "face_pose_fit_cubic",
                                    format!("{c}: {kind:?} needs 1 to {k} (the shape values)"),
                                ))
                            }
                        },
                        _ => None,
                    };
                    Some(ShapeProducts {
                        cubic,
                        mean: cpu_tensor("face_pose_fit.shape_mean", &[2 * LANDMARKS])?
                            .to_vec1()
                            .map_err(tensor_error)?,
                        basis: cpu_tensor(BASIS, &[k, 2 * LANDMARKS])?
                            .flatten_all()
                            .and_then(|t| t.to_vec1())
                            .map_err(tensor_error)?,
                    })
                } else {
                    None
                };
                let inputs = PoseFit::INPUTS
                    + head_features
                    + shape.as_ref().map_or(0, ShapeProducts::count);
                Some(PoseFit {
                    weight: Dense::new(&cpu_tensor("face_pose_fit.weight", &[6, inputs])?)
                        .map_err(tensor_error)?,
                    bias: cpu_tensor("face_pose_fit.bias", &[6])?
                        .to_vec1()
                        .map_err(tensor_error)?,
                    head_features,
                    shape,
                })
            }
            Some(other) => {
                return Err(bad(
                    "face_pose_fit",
                    format!(
                        "{other:?} is not a pose fit this build reads ({:?}, {:?}, {:?} or {:?})",
                        PoseFit::FEATURES,
                        PoseFit::WITH_HEAD,
                        PoseFit::WITH_SHAPE,
                        PoseFit::WITH_SHAPE3
                    ),
                ))
            }
        };
        let number = |key: &str, default: f32| {
            file.metadata
                .get(key)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Ok(Mfn {
            program: Program::new(&specs, &file)?,
            face_trunk,
            projection,
            input_width,
            input_height,
            stride,
            face_stride,
            head,
            refinement,
            pose_fit,
            score_threshold: number("score_threshold", super::detector::DEFAULT_SCORE_THRESHOLD),
            nms_iou: number("nms_iou", super::detector::DEFAULT_NMS_IOU),
            device: device.clone(),
        })
    }

    pub fn input_size(&self) -> (usize, usize) {
        (self.input_width, self.input_height)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The letterboxed, normalised network input for `frame` (1, 3, H, W).
    pub fn prepare(&self, frame: &image::RgbImage) -> candle_core::Result<(Tensor, Letterbox)> {
        letterboxed_input(frame, self.input_width, self.input_height, &self.device)
    }

    pub fn forward(&self, input: &Tensor) -> candle_core::Result<MfnOutput> {
        let mut names = vec![DETECTION_OUTPUT, self.face_trunk.as_str()];
        if let Some(r) = &self.refinement {
            names.push(&r.layer);
        }
        let mut outputs = self.program.forward_outputs(input, &names)?.into_iter();
        let (Some(detection), Some(face)) = (outputs.next(), outputs.next()) else {
            return Err(candle_core::Error::Msg("the pass lost an output".into()));
        };
        Ok(MfnOutput {
            detection,
            face,
            refinement: outputs.next(),
        })
    }

    /// Each layer's wall time for one pass (`bench --layers`).
    pub fn layer_times(&self, input: &Tensor) -> candle_core::Result<Vec<(String, f64)>> {
        self.program.layer_times(input)
    }

    /// Every face in frame coordinates: detections from the centre heatmap, then the grid head
    /// on each face's feature samples (one matrix product for all faces). O(faces) work on top
    /// of the network pass.
    pub fn decode(
        &self,
        output: &MfnOutput,
        letterbox: &Letterbox,
    ) -> candle_core::Result<Vec<FaceObservation>> {
        // Entered once: each of the decode's products splits over the pool, and entering it
        // from outside wakes it and puts this thread to sleep every time.
        super::ops::on_pool(|| self.decode_on_pool(output, letterbox))
    }

    fn decode_on_pool(
        &self,
        output: &MfnOutput,
        letterbox: &Letterbox,
    ) -> candle_core::Result<Vec<FaceObservation>> {
        let (rows, columns) = self.detection_map_size();
        let layout = HeatmapLayout {
            stride: self.stride as f32,
            rows,
            columns,
        };
        let detections = read_f32(&output.detection, |heat| {
            detections_from_heatmap(heat, layout, letterbox, self.score_threshold, self.nms_iou)
        })?;
        if detections.is_empty() {
            return Ok(Vec::new());
        }
        // Face centre and size in network-input pixels, as in training.
        let places: Vec<(Vec2, f32)> = detections
            .iter()
            .map(|d| {
                (
                    d.center() * letterbox.scale,
                    d.width().max(d.height()) * letterbox.scale,
                )
            })
            .collect();
        let (rows, columns) = self.face_map_size();
        let taps: Vec<BilinearTaps> = places
            .iter()
            .flat_map(|&(center, size)| self.head.offsets().map(move |o| center + o * size))
            .map(|p| BilinearTaps::at(p, self.face_stride as f32, rows, columns))
            .collect();
        // The cells those taps read, each once, and where its features go.
        let mut slot = vec![usize::MAX; rows * columns];
        let mut cells = Vec::new();
        for cell in taps.iter().flat_map(|t| t.cells) {
            if slot[cell] == usize::MAX {
                slot[cell] = cells.len();
                cells.push(cell);
            }
        }
        let features = read_f32(&output.face, |trunk| {
            self.projection.apply(trunk, rows * columns, &cells)
        })?;
        let channels = self.head.channels;
        let mut samples = Vec::with_capacity(taps.len() * channels);
        for t in &taps {
            t.blend(
                t.cells
                    .map(|cell| &features[slot[cell] * channels..][..channels]),
                &mut samples,
            );
        }
        let mut kept = HeadFeatures::default();
        let mut values = self.head.apply(&samples, places.len(), &mut kept);
        if let Some(refinement) = &self.refinement {
            let map = output.refinement.as_ref().ok_or_else(|| {
                candle_core::Error::Msg(
                    "this MFN refines its faces: the output lacks the map".into(),
                )
            })?;
            // It is sampled on the detection map's grid.
            let (rows, columns) = self.detection_map_size();
            if map.dims() != [1, refinement.channels, rows, columns] {
                return Err(candle_core::Error::Msg(format!(
                    "face_refine: the map is {:?}, the decode reads [1, {}, {rows}, {columns}]",
                    map.dims(),
                    refinement.channels
                )));
            }
            read_f32(map, |map| {
                self.refine(refinement, map, &places, &mut values, &mut kept)
            })?;
        }
        if let Some(fit) = &self.pose_fit {
            fit.correct(&mut values, &kept);
        }
        Ok(detections
            .iter()
            .zip(places)
            .zip(values.chunks_exact(FACE_CHANNELS))
            .map(|((d, (center, size)), v)| observe(d, center, size, v, letterbox))
            .collect())
    }

    /// The face features over the whole map (1, channels, rows, columns), as the training
    /// code's pass ends: the last face layer on every cell (for parity checks and tools; the
    /// decode computes only the cells it reads).
    pub fn face_features(&self, output: &MfnOutput) -> candle_core::Result<Tensor> {
        let (rows, columns) = self.face_map_size();
        let cells: Vec<usize> = (0..rows * columns).collect();
        let features = read_f32(&output.face, |trunk| {
            self.projection.apply(trunk, rows * columns, &cells)
        })?;
        // cells × channels → channels × cells
        let channels = self.head.channels;
        let mut planes = vec![0f32; features.len()];
        for (cell, values) in features.chunks_exact(channels).enumerate() {
            for (c, v) in values.iter().enumerate() {
                planes[c * cells.len() + cell] = *v;
            }
        }
        Tensor::from_vec(planes, (1, channels, rows, columns), &Device::Cpu)
    }

    /// Adds each refinement stage's correction to each face's `values`: `map` (channel-major, at
    /// the detection stride) sampled at the 68 landmarks the values give at that point.
    fn refine(
        &self,
        refinement: &Refinement,
        map: &[f32],
        places: &[(Vec2, f32)],
        values: &mut [f32],
        kept: &mut HeadFeatures,
    ) {
        use rayon::prelude::*;
        let (rows, columns) = self.detection_map_size();
        let channels = refinement.channels;
        let mut samples = vec![0f32; places.len() * LANDMARKS * channels];
        super::ops::on_pool(|| {
            for stage in &refinement.stages {
                // One landmark's samples per chunk, on both threads: each reads two cache lines
                // in each of the map's planes (~0.1 ms for 10 faces on one thread).
                samples
                    .par_chunks_mut(channels)
                    .with_min_len(LANDMARKS / 4)
                    .enumerate()
                    .for_each(|(i, out)| {
                        let (face, k) = (i / LANDMARKS, i % LANDMARKS);
                        let (center, size) = places[face];
                        let d = &values[face * FACE_CHANNELS + 2 * k..][..2];
                        let p = center + Vec2::new(d[0], d[1]) * size;
                        BilinearTaps::at(p, self.stride as f32, rows, columns).blend_planes(
                            map,
                            rows * columns,
                            out,
                        );
                    });
                stage.correct(&samples, values, kept);
            }
        });
    }

    /// Rows and columns of the detection map (the refinement's map too).
    fn detection_map_size(&self) -> (usize, usize) {
        (
            self.input_height / self.stride,
            self.input_width / self.stride,
        )
    }

    /// Rows and columns of the stride-8 face map.
    fn face_map_size(&self) -> (usize, usize) {
        (
            self.input_height / self.face_stride,
            self.input_width / self.face_stride,
        )
    }

    /// Every face in `frame`.
    pub fn detect(&self, frame: &image::RgbImage) -> candle_core::Result<Vec<FaceObservation>> {
        let (input, letterbox) = self.prepare(frame)?;
        let output = self.forward(&input)?;
        self.decode(&output, &letterbox)
    }
}

/// A bilinear sample of the face map at input position `p` (cell centres at +0.5 cells),
/// clamped to the map border, as the training code's grid_sample: the four cells read (top
/// left, top right, bottom left, bottom right) and the weights of the right and bottom ones.
struct BilinearTaps {
    cells: [usize; 4],
    fx: f32,
    fy: f32,
}

impl BilinearTaps {
    fn at(p: Vec2, stride: f32, rows: usize, columns: usize) -> BilinearTaps {
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
    fn blend_planes(&self, map: &[f32], plane: usize, out: &mut [f32]) {
        let (fx, fy) = (self.fx, self.fy);
        let [a, b, c, d] = self.cells;
        for (o, p) in out.iter_mut().zip(map.chunks_exact(plane)) {
            let top = p[a] * (1.0 - fx) + p[b] * fx;
            let bottom = p[c] * (1.0 - fx) + p[d] * fx;
            *o = top * (1.0 - fy) + bottom * fy;
        }
    }

    /// Appends the sample of every channel, from the feature vectors of the four cells.
    fn blend(&self, [a, b, c, d]: [&[f32]; 4], out: &mut Vec<f32>) {
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

/// One face from its grid-head values `v` (centre and size in network-input pixels).
fn observe(
    detection: &Detection,
    center: Vec2,
    size: f32,
    v: &[f32],
    letterbox: &Letterbox,
) -> FaceObservation {
    let landmarks: Vec<Vec2> = v[..136]
        .chunks_exact(2)
        .map(|d| letterbox.to_frame(center + Vec2::new(d[0], d[1]) * size))
        .collect();
    FaceObservation {
        bbox: tight_box(&landmarks).unwrap_or(detection.bbox),
        score: detection.score,
        landmarks,
        rotation: rotation_from_6d(&v[POSE]),
        blendshapes: v[BLENDSHAPES].iter().map(|&x| sigmoid(x)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_layers_match_a_plain_matrix_product() {
        // Odd sizes: partial vectors, an odd last output, outputs split unevenly between threads.
        for (inputs, outputs) in [(37, 11), (1100, 7)] {
            check_dense(inputs, outputs);
        }
    }

    fn check_dense(inputs: usize, outputs: usize) {
        let value = |i: usize| ((i * 7919) % 101) as f32 / 50.0 - 1.0;
        let weight: Vec<f32> = (0..outputs * inputs).map(value).collect();
        let w = Tensor::from_vec(weight.clone(), (outputs, inputs), &Device::Cpu).unwrap();
        let dense = Dense::new(&w).unwrap();
        for rows in [1, 2, 3, 6, 7, 10, 13] {
            let x: Vec<f32> = (0..rows * inputs).map(|i| value(i + 5)).collect();
            let start: Vec<f32> = (0..rows * outputs).map(|i| i as f32).collect();
            let mut out = start.clone();
            dense.accumulate(&x, &mut out);
            // the portable path as well (the one above is the AVX2/FMA one on most x86-64 CPUs)
            let mut portable = start.clone();
            dense.accumulate_gemm(&x, rows, &mut portable);
            for r in 0..rows {
                for o in 0..outputs {
                    let expected = start[r * outputs + o]
                        + (0..inputs)
                            .map(|i| x[r * inputs + i] * weight[o * inputs + i])
                            .sum::<f32>();
                    for got in [out[r * outputs + o], portable[r * outputs + o]] {
                        assert!(
                            (got - expected).abs() < 1e-4 * (1.0 + expected.abs()),
                            "{rows} rows, ({r}, {o}): {got} vs {expected}"
                        );
                    }
                }
            }
        }
        // no faces: nothing to do, no panic
        dense.accumulate(&[], &mut []);
    }

    #[test]
    fn the_hidden_layer_stage_adds_its_relu_correction_of_samples_and_values() {
        let (per_face, width, rows) = (5, 3, 2);
        let value = |i: usize| ((i * 7919) % 101) as f32 / 50.0 - 1.0;
        let matrix = |outputs: usize, inputs: usize, seed: usize| -> Vec<f32> {
            (0..outputs * inputs).map(|i| value(i + seed)).collect()
        };
        let dense = |w: &[f32], outputs: usize, inputs: usize| {
            Dense::new(&Tensor::from_vec(w.to_vec(), (outputs, inputs), &Device::Cpu).unwrap())
                .unwrap()
        };
        let inputs = per_face + FACE_CHANNELS;
        let (w1, w2) = (matrix(width, inputs, 1), matrix(FACE_CHANNELS, width, 2));
        let (b1, b2) = (matrix(1, width, 3), matrix(1, FACE_CHANNELS, 4));
        let stage = RefinementStage {
            linear: Factored {
                basis: None,
                dense: dense(&w1, width, inputs),
            },
            bias: b1.clone(),
            hidden: Some(HiddenOutput {
                dense: dense(&w2, FACE_CHANNELS, width),
                bias: b2.clone(),
            }),
        };
        let samples = matrix(rows, per_face, 5);
        let before = matrix(rows, FACE_CHANNELS, 6);
        let mut values = before.clone();
        stage.correct(&samples, &mut values, &mut HeadFeatures::default());
        let mut active = 0;
        for r in 0..rows {
            let x: Vec<f32> = samples[r * per_face..][..per_face]
                .iter()
                .chain(&before[r * FACE_CHANNELS..][..FACE_CHANNELS])
                .copied()
                .collect();
            let hidden: Vec<f32> = (0..width)
                .map(|h| {
                    let z = b1[h] + (0..inputs).map(|i| w1[h * inputs + i] * x[i]).sum::<f32>();
                    active += usize::from(z > 0.0);
                    z.max(0.0)
                })
                .collect();
            for o in 0..FACE_CHANNELS {
                let expected = before[r * FACE_CHANNELS + o]
                    + b2[o]
                    + (0..width)
                        .map(|h| w2[o * width + h] * hidden[h])
                        .sum::<f32>();
                let got = values[r * FACE_CHANNELS + o];
                assert!(
                    (got - expected).abs() < 1e-3,
                    "({r}, {o}): {got} vs {expected}"
                );
            }
        }
        // the ReLU both passed and cut some hidden values
        assert!(active > 0 && active < rows * width, "{active} active");
        // no faces: no panic
        stage.correct(&[], &mut [], &mut HeadFeatures::default());
    }

    /// One face's values with its landmarks on a circle of radius 3 around (10, -4), the rest 0:
    /// normalised, landmark k is (cos, sin) of its angle (RMS distance 1).
    fn circle_face() -> Vec<f32> {
        let mut values = vec![0f32; FACE_CHANNELS];
        for k in 0..LANDMARKS {
            let a = k as f32 * std::f32::consts::TAU / LANDMARKS as f32;
            values[2 * k] = 10.0 + 3.0 * a.cos();
            values[2 * k + 1] = -4.0 + 3.0 * a.sin();
        }
        values
    }

    #[test]
    fn the_pose_fit_reads_scaled_landmarks_rotation_and_their_products() {
        // Landmarks on a circle of radius 3 around (10, -4): normalised, landmark k is
        // (cos, sin) of its angle (RMS distance 1, whatever the place and size).
        let mut values = circle_face();
        let rotation = [0.9, 0.1, -0.2, 0.05, 0.8, 0.3];
        values[2 * LANDMARKS..2 * LANDMARKS + 6].copy_from_slice(&rotation);
        // landmark 1's normalised y
        let l1y = (std::f32::consts::TAU / LANDMARKS as f32).sin();
        // output 0 reads landmark 1's y, output 1 the rotation's 5th value, output 2 the
        // product of landmark 0's x with the rotation's 2nd value (1 · 0.1)
        let mut weight = vec![0f32; 6 * PoseFit::INPUTS];
        weight[3] = 2.0;
        weight[PoseFit::INPUTS + 2 * LANDMARKS + 4] = -1.0;
        weight[2 * PoseFit::INPUTS + 2 * LANDMARKS + 6 + 1] = 4.0;
        let fit = PoseFit {
            weight: Dense::new(
                &Tensor::from_vec(weight, (6, PoseFit::INPUTS), &Device::Cpu).unwrap(),
            )
            .unwrap(),
            bias: vec![0.5, 0.0, 0.0, 0.0, 0.0, -0.25],
            head_features: 0,
            shape: None,
        };
        let mut corrected = values.clone();
        fit.correct(&mut corrected, &HeadFeatures::default());
        let expected = [
            rotation[0] + 0.5 + 2.0 * l1y,
            rotation[1] - rotation[4],
            rotation[2] + 4.0 * 0.1,
            rotation[3],
            rotation[4],
            rotation[5] - 0.25,
        ];
        for (i, want) in expected.iter().enumerate() {
            let got = corrected[2 * LANDMARKS + i];
            assert!(
                (got - want).abs() < 1e-4,
                "rotation value {i}: {got} vs {want}"
            );
        }
        // nothing else changes
        assert_eq!(corrected[..2 * LANDMARKS], values[..2 * LANDMARKS]);
        assert_eq!(corrected[2 * LANDMARKS + 6..], values[2 * LANDMARKS + 6..]);
        fit.correct(&mut [], &HeadFeatures::default());
    }

    #[test]
    fn only_a_factored_head_keeps_features_for_the_pose_fit() {
        let dense = |outputs: usize, inputs: usize| {
            Dense::new(
                &Tensor::zeros((outputs, inputs), candle_core::DType::F32, &Device::Cpu).unwrap(),
            )
            .unwrap()
        };
        // a 128-value projection of the samples and 256 hidden units
        let head = |factored: bool| GridHead {
            grid: 5,
            spacing: 0.15,
            channels: 128,
            first: Factored {
                basis: factored.then(|| dense(128, 3200)),
                dense: dense(FACE_CHANNELS + 256, if factored { 128 } else { 3200 }),
            },
            first_bias: vec![0.0; FACE_CHANNELS + 256],
            mlp_out: Some(dense(FACE_CHANNELS, 256)),
        };
        let stage = |factored: bool, hidden: bool| RefinementStage {
            linear: Factored {
                basis: factored.then(|| dense(96, 2176)),
                dense: dense(FACE_CHANNELS, if factored { 96 } else { 2176 }),
            },
            bias: vec![0.0; FACE_CHANNELS],
            hidden: hidden.then(|| HiddenOutput {
                dense: dense(FACE_CHANNELS, 8),
                bias: vec![0.0; FACE_CHANNELS],
            }),
        };
        let refinement = |stages| Refinement {
            layer: "fpn.smooth4.pw".into(),
            channels: 32,
            stages,
        };
        let two = refinement(vec![stage(true, false), stage(true, false)]);
        assert_eq!(head_feature_count(&head(true), None), Some(128 + 256));
        assert_eq!(
            head_feature_count(&head(true), Some(&two)),
            Some(128 + 256 + 2 * 96)
        );
        assert_eq!(head_feature_count(&head(false), Some(&two)), None);
        let plain = refinement(vec![stage(true, false), stage(false, false)]);
        assert_eq!(head_feature_count(&head(true), Some(&plain)), None);
        let hidden = refinement(vec![stage(true, false), stage(false, true)]);
        assert_eq!(head_feature_count(&head(true), Some(&hidden)), None);
    }

    #[test]
    fn a_pose_fit_with_the_head_reads_each_faces_own_features_after_the_geometry() {
        // Two faces, the same geometry; the head kept two blocks for them (widths 2 and 1), and
        // the fit reads the second block's value (input 958 + 2) into rotation value 3.
        let mut face = vec![0f32; FACE_CHANNELS];
        for k in 0..LANDMARKS {
            face[2 * k] = k as f32;
            face[2 * k + 1] = (k % 7) as f32;
        }
        let values: Vec<f32> = [face.clone(), face].concat();
        let mut kept = HeadFeatures::default();
        kept.push(vec![1.0, 2.0, 3.0, 4.0], 2);
        kept.push(vec![10.0, -20.0], 2);
        let inputs = PoseFit::INPUTS + 3;
        let mut weight = vec![0f32; 6 * inputs];
        weight[3 * inputs + PoseFit::INPUTS + 2] = 0.5;
        weight[PoseFit::INPUTS] = 1.0; // first block, first value, into rotation value 0
        let fit = PoseFit {
            weight: Dense::new(&Tensor::from_vec(weight, (6, inputs), &Device::Cpu).unwrap())
                .unwrap(),
            bias: vec![0.0; 6],
            head_features: 3,
            shape: None,
        };
        let mut corrected = values.clone();
        fit.correct(&mut corrected, &kept);
        let rotation =
            |v: &[f32], face: usize, i: usize| v[face * FACE_CHANNELS + 2 * LANDMARKS + i];
        assert!((rotation(&corrected, 0, 3) - 5.0).abs() < 1e-5);
        assert!((rotation(&corrected, 1, 3) + 10.0).abs() < 1e-5);
        assert!((rotation(&corrected, 0, 0) - 1.0).abs() < 1e-5);
        assert!((rotation(&corrected, 1, 0) - 3.0).abs() < 1e-5);
        for i in [1, 2, 4, 5] {
            assert_eq!(rotation(&corrected, 1, i), rotation(&values, 1, i));
        }
    }

    #[test]
    fn a_pose_fit_with_the_shape_reads_products_of_shape_values_after_the_head() {
        // The circle of the first pose fit test: normalised, landmark 0 is (1, 0) and landmark
        // 1's y is sin(τ/68). Shape values z0 = landmark 0's x − 0.5, z1 = landmark 1's y; their
        // products z0², z0 z1, z1² follow the head's one feature.
        let values = circle_face();
        let l1y = (std::f32::consts::TAU / LANDMARKS as f32).sin();
        let mut mean = vec![0f32; 2 * LANDMARKS];
        mean[0] = 0.5;
        let mut basis = vec![0f32; 2 * 2 * LANDMARKS];
        basis[0] = 1.0;
        basis[2 * LANDMARKS + 3] = 1.0;
        let shape = ShapeProducts {
            mean,
            basis,
            cubic: None,
        };
        assert_eq!(shape.count(), 3);
        let inputs = PoseFit::INPUTS + 1 + 3;
        let mut weight = vec![0f32; 6 * inputs];
        weight[2 * inputs + PoseFit::INPUTS + 1 + 1] = 2.0; // z0 z1 into rotation value 2
        weight[4 * inputs + PoseFit::INPUTS + 1 + 2] = -1.0; // z1² into rotation value 4
        weight[5 * inputs + PoseFit::INPUTS] = 0.1; // the head's feature into value 5
        let fit = PoseFit {
            weight: Dense::new(&Tensor::from_vec(weight, (6, inputs), &Device::Cpu).unwrap())
                .unwrap(),
            bias: vec![0.0; 6],
            head_features: 1,
            shape: Some(shape),
        };
        let mut kept = HeadFeatures::default();
        kept.push(vec![7.0], 1);
        let mut corrected = values.clone();
        fit.correct(&mut corrected, &kept);
        let change = |i: usize| corrected[2 * LANDMARKS + i] - values[2 * LANDMARKS + i];
        assert!((change(2) - 2.0 * 0.5 * l1y).abs() < 1e-5, "{}", change(2));
        assert!((change(4) + l1y * l1y).abs() < 1e-5, "{}", change(4));
        assert!((change(5) - 0.7).abs() < 1e-5, "{}", change(5));
        for i in [0, 1, 3] {
            assert_eq!(change(i), 0.0);
        }
    }

    #[test]
    fn shape_products_with_cubic_terms_follow_the_pairs_then_the_rotation_pairs() {
        // z = (landmark 0's x, landmark 0's y) = (2, 3); rotation values 1..6.
        let mut basis = vec![0f32; 2 * 2 * LANDMARKS];
        basis[0] = 1.0;
        basis[2 * LANDMARKS + 1] = 1.0;
        let shape = ShapeProducts {
            mean: vec![0.0; 2 * LANDMARKS],
            basis,
            cubic: Some(2),
        };
        let mut landmarks = vec![0f32; 2 * LANDMARKS];
        landmarks[..2].copy_from_slice(&[2.0, 3.0]);
        let rotation = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let products = shape.of(&landmarks, &rotation);
        assert_eq!(products.len(), shape.count());
        assert_eq!(products.len(), 3 + 4 + 21);
        assert_eq!(products[..7], [4.0, 6.0, 9.0, 8.0, 12.0, 18.0, 27.0]);
        // r0 r0, r0 r1, ..., r0 r5, r1 r1, ..., r5 r5
        assert_eq!(products[7..13], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(products[13], 4.0);
        assert_eq!(*products.last().unwrap(), 36.0);
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
