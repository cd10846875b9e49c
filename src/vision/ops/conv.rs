//! Convolutions as matrix products on the CPU: 1×1 as one product per image, 3×3 by a direct
//! kernel for few input channels or as im2col + gemm, each output band on its own thread with
//! the bias, activation and an optional residual fused.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::depthwise::{conv_out_size, deinterleave};
use super::{assume_written, contiguous, unwritten, write_bias, Activation};

/// Convolution as matrix multiply (1×1 directly, 3×3 through im2col), bias and activation fused;
/// with `residual`, the residual block's add too (before the activation).
struct GemmConv {
    kernel: usize,
    stride: usize,
    activation: Activation,
    residual: Option<Tensor>,
}

impl CustomOp3 for GemmConv {
    fn name(&self) -> &'static str {
        "gemm-conv"
    }

    fn cpu_fwd(
        &self,
        s_input: &CpuStorage,
        l_input: &Layout,
        s_weight: &CpuStorage,
        l_weight: &Layout,
        s_bias: &CpuStorage,
        l_bias: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, cin, h, w) = l_input.shape().dims4()?;
        let cout = l_weight.shape().dims()[0];
        let k = self.kernel;
        if l_weight.shape().dims() != [cout, cin, k, k] || l_bias.shape().dims() != [cout] {
            candle_core::bail!(
                "conv: weight {:?} / bias {:?} do not fit {cin} input channels",
                l_weight.shape(),
                l_bias.shape()
            );
        }
        let input = contiguous(s_input, l_input, "input")?;
        let weight = contiguous(s_weight, l_weight, "weight")?;
        let bias = contiguous(s_bias, l_bias, "bias")?;
        let (ho, wo) = if k == 1 {
            ((h - 1) / self.stride + 1, (w - 1) / self.stride + 1)
        } else {
            conv_out_size(h, w, self.stride)
        };
        if k == 1 && self.stride != 1 {
            candle_core::bail!("1x1 conv with stride {} is not supported", self.stride);
        }
        let depth = cin * k * k;
        let plane_out = ho * wo;
        let residual_storage = self.residual.as_ref().map(|r| r.storage_and_layout());
        let residual: Option<&[f32]> = match &residual_storage {
            None => None,
            Some((storage, layout)) => {
                if layout.shape().dims() != [n, cout, ho, wo] {
                    candle_core::bail!(
                        "conv: residual {:?} does not match the output {:?}",
                        layout.shape(),
                        [n, cout, ho, wo]
                    );
                }
                let candle_core::Storage::Cpu(storage) = &**storage else {
                    candle_core::bail!("conv: the residual must be on the CPU");
                };
                Some(contiguous(storage, layout, "residual")?)
            }
        };
        if k == 3 && cin <= DIRECT_MAX_INPUTS && residual.is_none() {
            let mut out = vec![0f32; n * cout * plane_out];
            for (index, out) in out.chunks_exact_mut(cout * plane_out).enumerate() {
                conv3x3_direct(
                    &input[index * cin * h * w..(index + 1) * cin * h * w],
                    (cin, h, w),
                    weight,
                    bias,
                    self.stride,
                    (ho, wo),
                    self.activation,
                    out,
                );
            }
            return Ok((CpuStorage::F32(out), Shape::from_dims(&[n, cout, ho, wo])));
        }
        // The matrix the weight multiplies: the input itself (1×1) or its unfolded 3×3 patches.
        let columns = |index: usize| -> std::borrow::Cow<'_, [f32]> {
            let input = &input[index * cin * h * w..(index + 1) * cin * h * w];
            if k == 1 {
                input.into()
            } else {
                im2col3x3(input, (cin, h, w), self.stride, (ho, wo)).into()
            }
        };
        // Output channels `first..` of image `index` (as many as `out` holds rows).
        let product = |index: usize, first: usize, out: &mut [MaybeUninit<f32>], rhs: &[f32]| {
            let rows = out.len() / plane_out;
            // The product adds onto the bias (plus the residual), written here first.
            let residual = residual.map(|r| &r[(index * cout + first) * plane_out..][..out.len()]);
            let out = write_bias(out, &bias[first..first + rows], residual);
            let weight = &weight[first * depth..(first + rows) * depth];
            // SAFETY: the pointers and strides describe row-major matrices of these sizes:
            // out (rows × plane_out), weight (rows × depth), rhs (depth × plane_out).
            unsafe {
                gemm::gemm(
                    rows,
                    plane_out,
                    depth,
                    out.as_mut_ptr(),
                    1,
                    plane_out as isize,
                    true,
                    weight.as_ptr(),
                    1,
                    depth as isize,
                    rhs.as_ptr(),
                    1,
                    plane_out as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            self.activation.apply_all(out);
        };
        let mut out = unwritten(n * cout * plane_out);
        if n == 1 && !out.is_empty() {
            // One image: each thread takes a band of output channels. gemm's own threading
            // (Parallelism::Rayon) made these products ~2× slower than one thread on a 2-core
            // Xeon (`bench --layers`), as did the bias and activation passes left on one thread.
            let rhs = columns(0);
            let threads = rayon::current_num_threads().min(cout.div_ceil(MIN_BAND_CHANNELS));
            let band = cout.div_ceil(threads.max(1));
            out.par_chunks_mut(band * plane_out)
                .enumerate()
                .for_each(|(i, out)| product(0, i * band, out, &rhs));
        } else if !out.is_empty() {
            // Several faces: one image per thread beats splitting each small product.
            out.par_chunks_mut(cout * plane_out)
                .enumerate()
                .for_each(|(i, out)| product(i, 0, out, &columns(i)));
        }
        // SAFETY: each band of each image went through write_bias in `product` (none when empty).
        let out = unsafe { assume_written(out) };
        Ok((CpuStorage::F32(out), Shape::from_dims(&[n, cout, ho, wo])))
    }
}

/// The fewest output channels worth a thread of their own in a one-image product.
const MIN_BAND_CHANNELS: usize = 8;

/// Input channels up to which a 3×3 convolution runs directly rather than as im2col + gemm.
const DIRECT_MAX_INPUTS: usize = 4;

/// 3×3 convolution (padding 1) + bias + activation of one image with few input channels (the
/// stem: 3 → 16 at stride 2). For each output row, every (channel, kernel row) input row is split
/// once into its stride phases, zero-padded, so that each of the cin·9 tap rows is a slice of
/// those copies; then blocks of 8 output channels × 8 columns are summed over the taps in
/// registers (AVX2 + FMA where the CPU has them: the crate's baseline target is SSE2). With three
/// input channels im2col + gemm spent most of its time writing and reading the unfolded input
/// (2 MB for the 320×240 frame). Each thread takes a band of output rows.
#[allow(clippy::too_many_arguments)]
fn conv3x3_direct(
    input: &[f32],
    (cin, h, w): (usize, usize, usize),
    weight: &[f32],
    bias: &[f32],
    stride: usize,
    (ho, wo): (usize, usize),
    activation: Activation,
    out: &mut [f32],
) {
    let plane_out = ho * wo;
    if plane_out == 0 || stride == 0 {
        return;
    }
    let depth = cin * 9;
    // Each block's weights tap-major ([tap][channel]) and biases; missing channels zero.
    let blocks: Vec<(Vec<f32>, [f32; BLOCK])> = (0..bias.len())
        .step_by(BLOCK)
        .map(|first| {
            let mut taps = vec![0f32; depth * BLOCK];
            let mut biases = [0f32; BLOCK];
            for j in 0..BLOCK.min(bias.len() - first) {
                biases[j] = bias[first + j];
                for t in 0..depth {
                    taps[t * BLOCK + j] = weight[(first + j) * depth + t];
                }
            }
            (taps, biases)
        })
        .collect();
    // Bands of whole rows, one per thread: every output plane split at the same rows.
    let band_rows = ho.div_ceil(rayon::current_num_threads()).max(1);
    let mut bands: Vec<(usize, Vec<&mut [f32]>)> = (0..ho)
        .step_by(band_rows)
        .map(|first| (first, Vec::new()))
        .collect();
    for plane in out.chunks_exact_mut(plane_out) {
        for (band, rows) in bands.iter_mut().zip(plane.chunks_mut(band_rows * wo)) {
            band.1.push(rows);
        }
    }
    #[cfg(target_arch = "x86_64")]
    let fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let fma = false;
    // Input column of output column x for kernel column kx: stride·x + kx − 1 =
    // stride·(x + kx / stride) + (kx % stride) − 1, so tap kx reads phase kx % stride from
    // offset kx / stride (≤ 2) on, where phase p holds row[stride·j + p − 1].
    let phases = stride.min(3);
    bands.into_par_iter().for_each(|(first_row, mut planes)| {
        let padded = wo.next_multiple_of(LANES);
        let line = padded + 2;
        let mut lines = vec![0f32; cin * 3 * phases * line];
        let zeros = vec![0f32; padded];
        let rows = planes[0].len() / wo;
        for oy in first_row..first_row + rows {
            let inside = |ky: usize| (oy * stride + ky).checked_sub(1).filter(|&iy| iy < h);
            // Only the in-row positions are written, the same ones every row: the zeros
            // around them stay from the allocation.
            for (index, group) in lines.chunks_exact_mut(phases * line).enumerate() {
                let (c, ky) = (index / 3, index % 3);
                let Some(iy) = inside(ky) else { continue };
                let row = &input[(c * h + iy) * w..][..w];
                if stride == 2 {
                    // One pass over the row: phase 0 gets the odd columns from j = 1 on,
                    // phase 1 the even ones.
                    let (odd, even) = group.split_at_mut(line);
                    deinterleave(row, even, &mut odd[1..]);
                    continue;
                }
                for (phase, phase_line) in group.chunks_exact_mut(line).enumerate() {
                    // j whose column stride·j + phase − 1 lies inside the row
                    let first = usize::from(phase == 0);
                    let end = (w + 1 - phase).div_ceil(stride).clamp(first, line);
                    if first < end {
                        let start = stride * first + phase - 1;
                        for (v, x) in phase_line[first..end]
                            .iter_mut()
                            .zip(row[start..].iter().step_by(stride))
                        {
                            *v = *x;
                        }
                    }
                }
            }
            let taps: Vec<&[f32]> = (0..depth)
                .map(|t| {
                    let (c, ky, kx) = (t / 9, (t % 9) / 3, t % 3);
                    if inside(ky).is_none() {
                        return &zeros[..];
                    }
                    let start = ((c * 3 + ky) * phases + kx % stride) * line + kx / stride;
                    &lines[start..start + padded]
                })
                .collect();
            let row = (oy - first_row) * wo;
            for (b, (block, biases)) in blocks.iter().enumerate() {
                let mut outputs: Vec<&mut [f32]> = planes[b * BLOCK..]
                    .iter_mut()
                    .take(BLOCK)
                    .map(|plane| &mut plane[row..row + wo])
                    .collect();
                if fma {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    unsafe {
                        block_row_fma(&taps, block, biases, activation, &mut outputs)
                    }
                } else {
                    block_row(&taps, block, biases, activation, &mut outputs);
                }
            }
        }
    });
}

/// Output columns per register in [`conv3x3_direct`] (one AVX register of f32).
const LANES: usize = 8;
/// Output channels summed together in [`conv3x3_direct`], sharing each tap load.
const BLOCK: usize = 8;

/// One output row of a block of channels: `outputs[j][x] = activation(biases[j] +
/// Σ_t block[t][j] · taps[t][x])` (each tap row at least the outputs' width rounded up to
/// LANES).
fn block_row(
    taps: &[&[f32]],
    block: &[f32],
    biases: &[f32; BLOCK],
    activation: Activation,
    outputs: &mut [&mut [f32]],
) {
    for (j, out) in outputs.iter_mut().enumerate() {
        out.fill(biases[j]);
        for (tap, k) in taps.iter().zip(block.chunks_exact(BLOCK)) {
            for (o, v) in out.iter_mut().zip(tap.iter()) {
                *o += k[j] * v;
            }
        }
        activation.apply_all(out);
    }
}

/// [`block_row`] with AVX2 fused multiply-adds, LANES columns × BLOCK channels in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_row_fma(
    taps: &[&[f32]],
    block: &[f32],
    biases: &[f32; BLOCK],
    activation: Activation,
    outputs: &mut [&mut [f32]],
) {
    use std::arch::x86_64::*;
    let depth = block.len() / BLOCK;
    let width = outputs.first().map_or(0, |o| o.len());
    let padded = width.next_multiple_of(LANES);
    assert!(
        taps.len() >= depth && taps.iter().all(|tap| tap.len() >= padded),
        "tap rows"
    );
    let (low, high) = match activation {
        Activation::None => (f32::NEG_INFINITY, f32::INFINITY),
        Activation::Relu => (0.0, f32::INFINITY),
        Activation::Relu6 => (0.0, 6.0),
    };
    let (low, high) = (_mm256_set1_ps(low), _mm256_set1_ps(high));
    for x0 in (0..width).step_by(LANES) {
        let mut acc = biases.map(|b| _mm256_set1_ps(b));
        for t in 0..depth {
            // SAFETY: x0 < width, so x0 + LANES ≤ padded ≤ the tap row's length (asserted
            // above), and t < depth ≤ taps.len().
            let v = _mm256_loadu_ps(taps.get_unchecked(t).as_ptr().add(x0));
            let k = &block[t * BLOCK..(t + 1) * BLOCK];
            for (a, k) in acc.iter_mut().zip(k) {
                *a = _mm256_fmadd_ps(_mm256_set1_ps(*k), v, *a);
            }
        }
        for (out, a) in outputs.iter_mut().zip(acc) {
            let a = _mm256_min_ps(_mm256_max_ps(a, low), high);
            if x0 + LANES <= out.len() {
                // SAFETY: the LANES values x0.. lie inside `out` (checked just above).
                _mm256_storeu_ps(out.as_mut_ptr().add(x0), a);
            } else {
                let mut values = [0f32; LANES];
                // SAFETY: `values` holds exactly LANES f32.
                _mm256_storeu_ps(values.as_mut_ptr(), a);
                let columns = out.len() - x0;
                out[x0..].copy_from_slice(&values[..columns]);
            }
        }
    }
}

/// Unfolds 3×3 patches (padding 1) into a (cin·9) × (ho·wo) matrix, one matrix row per
/// (channel, tap) in parallel (the stem's unfolded input is 2 MB: worth both cores).
fn im2col3x3(
    input: &[f32],
    (cin, h, w): (usize, usize, usize),
    stride: usize,
    (ho, wo): (usize, usize),
) -> Vec<f32> {
    let mut columns = vec![0f32; cin * 9 * ho * wo];
    if ho * wo == 0 {
        return columns;
    }
    columns
        .par_chunks_mut(ho * wo)
        .enumerate()
        .for_each(|(r, row)| {
            let (c, ky, kx) = (r / 9, (r % 9) / 3, r % 3);
            let plane = &input[c * h * w..(c + 1) * h * w];
            // Output columns whose input column ox·stride + kx − 1 lies inside the row.
            let first = usize::from(kx == 0);
            let last = (w + 1 - kx).div_ceil(stride).min(wo);
            for oy in 0..ho {
                let iy = (oy * stride + ky) as isize - 1;
                if iy < 0 || iy >= h as isize || first >= last {
                    continue;
                }
                let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                let dst = &mut row[oy * wo + first..oy * wo + last];
                if stride == 1 {
                    dst.copy_from_slice(&src[first + kx - 1..last + kx - 1]);
                } else {
                    let start = first * stride + kx - 1;
                    for (d, v) in dst.iter_mut().zip(src[start..].iter().step_by(stride)) {
                        *d = *v;
                    }
                }
            }
        });
    columns
}

fn gemm_conv(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    kernel: usize,
    stride: usize,
    activation: Activation,
) -> Result<Tensor> {
    let op = GemmConv {
        kernel,
        stride,
        activation,
        residual: None,
    };
    x.contiguous()?
        .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op)
}

/// 1×1 convolution + bias + activation: (N, Cin, H, W) → (N, Cout, H, W).
/// `weight`: (Cout, Cin, 1, 1), `bias`: (Cout).
pub fn pointwise(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    activation: Activation,
) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return gemm_conv(x, weight, bias, 1, 1, activation);
    }
    let (n, cin, h, w) = x.dims4()?;
    let cout = weight.dim(0)?;
    let y = weight
        .reshape((cout, cin))?
        .broadcast_left(n)?
        .matmul(&x.reshape((n, cin, h * w))?)?
        .broadcast_add(&bias.reshape((1, cout, 1))?)?;
    activation.forward(&y)?.reshape((n, cout, h, w))
}

/// The end of a residual block: `activation(pointwise(x) + residual)` in one pass over the
/// output, without the separate add and its extra tensor. `residual` has the output's shape.
pub fn pointwise_residual(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    residual: &Tensor,
    activation: Activation,
) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && residual.dtype() == DType::F32 {
        let op = GemmConv {
            kernel: 1,
            stride: 1,
            activation,
            residual: Some(residual.contiguous()?),
        };
        return x
            .contiguous()?
            .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op);
    }
    activation.forward(&(pointwise(x, weight, bias, Activation::None)? + residual)?)
}

/// Standard convolution (groups 1) + bias + activation; 3×3 kernels (padding 1) take the fast
/// path on CPU.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
    activation: Activation,
) -> Result<Tensor> {
    let (cout, _, kh, kw) = weight.dims4()?;
    if x.device().is_cpu() && x.dtype() == DType::F32 && kh == 3 && kw == 3 && padding == 1 {
        return gemm_conv(x, weight, bias, 3, stride, activation);
    }
    let y = x.conv2d(weight, padding, stride, 1, 1)?;
    activation.forward(&y.broadcast_add(&bias.reshape((1, cout, 1, 1))?)?)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{max_abs_diff, reference_conv};
    use super::*;
    use candle_core::Device;

    #[test]
    fn pointwise_matches_candle_conv_for_one_and_many_images() {
        let dev = Device::Cpu;
        // Three threads, whatever the machine: one image's 24 channels go in three bands of 8,
        // its 15 in two uneven ones (8 + 7).
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for n in [1, 3] {
            for cout in [24, 15, 4] {
                let x = Tensor::randn(0f32, 1.0, (n, 16, 7, 9), &dev).unwrap();
                let w = Tensor::randn(0f32, 1.0, (cout, 16, 1, 1), &dev).unwrap();
                let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
                let r = Tensor::randn(0f32, 1.0, (n, cout, 7, 9), &dev).unwrap();
                let slow = reference_conv(&x, &w, &b, 1, 0, Activation::Relu);
                let fast = pool.install(|| pointwise(&x, &w, &b, Activation::Relu).unwrap());
                assert!(max_abs_diff(&fast, &slow) < 1e-4, "n {n} cout {cout}");
                let fused =
                    pool.install(|| pointwise_residual(&x, &w, &b, &r, Activation::Relu).unwrap());
                let plain = reference_conv(&x, &w, &b, 1, 0, Activation::None);
                let expected = Activation::Relu.forward(&(plain + &r).unwrap()).unwrap();
                let d = max_abs_diff(&fused, &expected);
                assert!(d < 1e-4, "n {n} cout {cout} with the residual: {d}");
            }
        }
    }

    #[test]
    fn pointwise_with_a_residual_matches_conv_then_add() {
        let dev = Device::Cpu;
        for n in [1, 3] {
            let x = Tensor::randn(0f32, 1.0, (n, 6, 5, 7), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (4, 6, 1, 1), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, 4, &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (n, 4, 5, 7), &dev).unwrap();
            for act in [Activation::None, Activation::Relu] {
                let fused = pointwise_residual(&x, &wt, &b, &r, act).unwrap();
                let plain = pointwise(&x, &wt, &b, Activation::None).unwrap();
                let expected = act.forward(&(plain + &r).unwrap()).unwrap();
                let d = max_abs_diff(&fused, &expected);
                assert!(d < 1e-5, "n {n} {act:?}: {d}");
            }
        }
        // a residual of the wrong shape is an error, not a panic
        let x = Tensor::zeros((1, 6, 5, 7), DType::F32, &dev).unwrap();
        let wt = Tensor::zeros((4, 6, 1, 1), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let r = Tensor::zeros((1, 4, 5, 6), DType::F32, &dev).unwrap();
        assert!(pointwise_residual(&x, &wt, &b, &r, Activation::None).is_err());
    }

    #[test]
    fn direct_conv_rows_agree_with_and_without_fma() {
        let (depth, padded, width) = (27, 24, 19);
        let value = |i: usize| ((i * 7919) % 97) as f32 / 48.0 - 1.0;
        let taps: Vec<f32> = (0..depth * padded)
            .map(|i| if i % padded < width { value(i) } else { 0.0 })
            .collect();
        let taps: Vec<&[f32]> = taps.chunks_exact(padded).collect();
        let block: Vec<f32> = (0..depth * BLOCK).map(|i| value(i + 3)).collect();
        let biases: [f32; BLOCK] =
            std::array::from_fn(|j| [0.5, -0.25, 3.0, -4.0][j % 4] * (1 + j / 4) as f32);
        for activation in [Activation::None, Activation::Relu, Activation::Relu6] {
            let mut plain = vec![vec![0f32; width]; 3];
            let mut rows: Vec<&mut [f32]> = plain.iter_mut().map(|r| &mut r[..]).collect();
            block_row(&taps, &block, &biases, activation, &mut rows);
            // channel 0, column 0 by hand
            let expected = biases[0]
                + (0..depth)
                    .map(|t| block[t * BLOCK] * taps[t][0])
                    .sum::<f32>();
            assert!((plain[0][0] - activation.apply(expected)).abs() < 1e-4);
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                let mut fused = vec![vec![0f32; width]; 3];
                let mut rows: Vec<&mut [f32]> = fused.iter_mut().map(|r| &mut r[..]).collect();
                // SAFETY: the CPU has AVX2 and FMA.
                unsafe { block_row_fma(&taps, &block, &biases, activation, &mut rows) };
                for (p, f) in plain.iter().flatten().zip(fused.iter().flatten()) {
                    assert!((p - f).abs() < 1e-4, "{activation:?}: {p} vs {f}");
                }
            }
        }
    }

    #[test]
    fn conv3x3_matches_candle_conv_with_strides_1_to_3() {
        let dev = Device::Cpu;
        for (n, cin, h, w) in [
            (1, 3, 112, 112),
            (2, 3, 9, 14),
            (1, 5, 1, 2),
            (1, 2, 7, 5),
            (1, 2, 1, 1),
            (2, 4, 24, 33),
            (1, 6, 10, 11),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, cin, h, w), &dev).unwrap();
            // 6 and 12 output channels: the direct path's only or last block of 8 is partial
            for cout in [16, 12, 6] {
                let wt = Tensor::randn(0f32, 1.0, (cout, cin, 3, 3), &dev).unwrap();
                let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
                for stride in [1, 2, 3] {
                    let fast = conv2d(&x, &wt, &b, stride, 1, Activation::Relu6).unwrap();
                    let slow = reference_conv(&x, &wt, &b, stride, 1, Activation::Relu6);
                    assert_eq!(fast.dims(), slow.dims());
                    let d = max_abs_diff(&fast, &slow);
                    assert!(
                        d < 1e-4,
                        "{n}x{cin}x{h}x{w} -> {cout}, stride {stride}: {d}"
                    );
                }
            }
        }
    }
}
