//! The depthwise 3×3 convolution (padding 1, stride 1 or 2) with bias and activation fused: rows
//! of output from three input rows at a time, interior pixels without bounds checks.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{assume_written, contiguous, unwritten, write_zeros, Activation};

/// Depthwise 3×3 convolution, padding 1, stride 1 or 2, with bias and activation fused.
struct Depthwise3x3 {
    stride: usize,
    activation: Activation,
}

impl CustomOp3 for Depthwise3x3 {
    fn name(&self) -> &'static str {
        "depthwise3x3"
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
        let (n, c, h, w) = depthwise_dims(l_input, l_weight, l_bias)?;
        let input = contiguous(s_input, l_input, "input")?;
        let weight = contiguous(s_weight, l_weight, "weight")?;
        let bias = contiguous(s_bias, l_bias, "bias")?;
        let (ho, wo) = conv_out_size(h, w, self.stride);
        let plane_in = h * w;
        let plane_out = ho * wo;
        let mut out = unwritten(n * c * plane_out);
        let zeros = vec![0f32; w];
        if plane_out > 0 {
            out.par_chunks_mut(plane_out)
                .with_min_len((4096 / plane_out).max(1))
                .enumerate()
                .for_each(|(plane, out)| {
                    // Zeroed here, on this thread, while the plane is about to be written.
                    let out = write_zeros(out);
                    let ch = plane % c;
                    let kernel: &[f32; 9] = weight[ch * 9..ch * 9 + 9].try_into().expect("9 taps");
                    let input = &input[plane * plane_in..(plane + 1) * plane_in];
                    DepthwisePlane {
                        input,
                        size: (h, w),
                        kernel,
                        bias: bias[ch],
                        stride: self.stride,
                        activation: self.activation,
                        out_size: (ho, wo),
                        zeros: &zeros,
                    }
                    .run(out);
                });
        }
        // SAFETY: every plane went through write_zeros above (none when plane_out is 0).
        let out = unsafe { assume_written(out) };
        Ok((CpuStorage::F32(out), Shape::from_dims(&[n, c, ho, wo])))
    }

    /// The CUDA twin of `cpu_fwd` (src/vision/kernels/depthwise.cu): one launch per layer.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s_input: &candle_core::CudaStorage,
        l_input: &Layout,
        s_weight: &candle_core::CudaStorage,
        l_weight: &Layout,
        s_bias: &candle_core::CudaStorage,
        l_bias: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::WrapErr;

        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/depthwise.ptx"));
        let (n, c, h, w) = depthwise_dims(l_input, l_weight, l_bias)?;
        fn view<'a>(
            storage: &'a candle_core::CudaStorage,
            layout: &Layout,
            what: &str,
        ) -> Result<CudaView<'a, f32>> {
            let Some((start, end)) = layout.contiguous_offsets() else {
                candle_core::bail!("depthwise conv: {what} must be contiguous");
            };
            Ok(storage.as_cuda_slice::<f32>()?.slice(start..end))
        }
        let input = view(s_input, l_input, "input")?;
        let weight = view(s_weight, l_weight, "weight")?;
        let bias = view(s_bias, l_bias, "bias")?;
        let (ho, wo) = conv_out_size(h, w, self.stride);
        let count = n * c * ho * wo;
        let device = s_input.device().clone();
        let func = device.get_or_load_custom_func("depthwise3x3_f32", "polyface_depthwise", PTX)?;
        // SAFETY: every element is written by the kernel before anyone reads it.
        let output = unsafe { device.alloc::<f32>(count)? };
        let dims = [n, c, h, w, ho, wo, self.stride].map(|d| d as i32);
        let activation = match self.activation {
            Activation::None => 0i32,
            Activation::Relu => 1,
            Activation::Relu6 => 2,
        };
        if count > 0 {
            let mut launch = func.builder();
            launch.arg(&input);
            launch.arg(&weight);
            launch.arg(&bias);
            launch.arg(&output);
            for d in &dims {
                launch.arg(d);
            }
            launch.arg(&activation);
            let blocks = count.div_ceil(256).min(65_535 * 8) as u32;
            let config = LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: argument types and order match depthwise3x3_f32's signature.
            unsafe { launch.launch(config) }.w()?;
        }
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(output, device),
            Shape::from_dims(&[n, c, ho, wo]),
        ))
    }
}

/// (N, C, H, W) of a depthwise input whose weight is (C, 1, 3, 3) and bias (C); an error otherwise.
fn depthwise_dims(
    l_input: &Layout,
    l_weight: &Layout,
    l_bias: &Layout,
) -> Result<(usize, usize, usize, usize)> {
    let (n, c, h, w) = l_input.shape().dims4()?;
    if l_weight.shape().dims() != [c, 1, 3, 3] || l_bias.shape().dims() != [c] {
        candle_core::bail!(
            "depthwise conv: weight {:?} / bias {:?} do not fit {c} channels",
            l_weight.shape(),
            l_bias.shape()
        );
    }
    Ok((n, c, h, w))
}

pub(super) fn conv_out_size(h: usize, w: usize, stride: usize) -> (usize, usize) {
    // kernel 3, padding 1
    ((h + 2 - 3) / stride + 1, (w + 2 - 3) / stride + 1)
}

/// One channel plane, a row at a time. Each output row is one pass that reads its three input
/// rows (a shared zero row stands in for the padding above and below), so the stride-1 interior
/// is a single vectorised loop with one store per pixel; stride 2 first splits the rows into
/// even and odd columns so that it is contiguous too. Only the border columns take the scalar
/// path with bounds checks.
///
/// Compiled twice: for the crate's SSE2 baseline and, picked at run time where the CPU has it,
/// for AVX2 (8-wide instead of 4-wide vectors; the same operations in the same order, so the
/// results are bit-identical).
struct DepthwisePlane<'a> {
    input: &'a [f32],
    size: (usize, usize),
    kernel: &'a [f32; 9],
    bias: f32,
    stride: usize,
    activation: Activation,
    out_size: (usize, usize),
    /// A zero row at least as wide as the input: the padding above and below.
    zeros: &'a [f32],
}

impl DepthwisePlane<'_> {
    fn run(&self, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked on the line above).
            unsafe { self.run_avx2(out) };
            return;
        }
        self.compute(out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, out: &mut [f32]) {
        self.compute(out);
    }

    #[inline(always)]
    fn compute(&self, out: &mut [f32]) {
        let DepthwisePlane {
            input,
            size: (h, w),
            kernel,
            bias,
            stride,
            activation,
            out_size: (ho, wo),
            zeros,
        } = *self;
        if stride == 2 {
            // Every input row split once into its even and odd columns (each is read by up to
            // two output rows), in one pass over the row.
            let mut split = vec![0f32; h * w];
            for (row, dst) in input.chunks_exact(w).zip(split.chunks_exact_mut(w)) {
                let (even, odd) = dst.split_at_mut(w.div_ceil(2));
                deinterleave(row, even, odd);
            }
            for (oy, row) in out.chunks_exact_mut(wo).take(ho).enumerate() {
                // Input row of kernel rows 0, 1, 2 (None: the zero padding).
                let iy = [0, 1, 2].map(|ky| (oy * 2 + ky).checked_sub(1).filter(|&iy| iy < h));
                let rows = iy.map(|iy| iy.map_or(&zeros[..w], |iy| &input[iy * w..(iy + 1) * w]));
                let split = iy.map(|iy| iy.map_or(&zeros[..w], |iy| &split[iy * w..(iy + 1) * w]));
                depthwise_row_stride2(rows, split, kernel, bias, row);
                activation.apply_all(row);
            }
            return;
        }
        for oy in 0..ho {
            let row_of = |ky: usize| -> &[f32] {
                let iy = (oy * stride + ky) as isize - 1;
                if iy < 0 || iy >= h as isize {
                    zeros
                } else {
                    &input[iy as usize * w..(iy as usize + 1) * w]
                }
            };
            let rows = [row_of(0), row_of(1), row_of(2)];
            let row = &mut out[oy * wo..(oy + 1) * wo];
            depthwise_row_stride1(rows, kernel, bias, row);
            activation.apply_all(row);
        }
    }
}

/// `even[j] = row[2j]`, `odd[j] = row[2j + 1]`, in one pass over the row (two strided passes
/// cost about twice as much). `even` holds at least ⌈len/2⌉ values, `odd` ⌊len/2⌋.
#[inline(always)]
pub(super) fn deinterleave(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
        *e = pair[0];
        *o = pair[1];
    }
    if row.len() % 2 == 1 {
        even[row.len() / 2] = row[row.len() - 1];
    }
}

/// Output column `x` from the three input rows, with zero padding: the border path.
#[inline(always)]
fn depthwise_pixel(
    rows: [&[f32]; 3],
    kernel: &[f32; 9],
    bias: f32,
    stride: usize,
    x: usize,
) -> f32 {
    let mut sum = bias;
    for (ky, row) in rows.iter().enumerate() {
        for kx in 0..3 {
            let ix = (x * stride + kx) as isize - 1;
            if ix >= 0 && (ix as usize) < row.len() {
                sum += kernel[ky * 3 + kx] * row[ix as usize];
            }
        }
    }
    sum
}

#[inline(always)]
fn depthwise_row_stride1(rows: [&[f32]; 3], k: &[f32; 9], bias: f32, out: &mut [f32]) {
    let w = out.len();
    if w < 3 {
        for (x, o) in out.iter_mut().enumerate() {
            *o = depthwise_pixel(rows, k, bias, 1, x);
        }
        return;
    }
    out[0] = depthwise_pixel(rows, k, bias, 1, 0);
    out[w - 1] = depthwise_pixel(rows, k, bias, 1, w - 1);
    // Interior: every tap is inside the row. Equal-length slices let the compiler drop the
    // bounds checks and vectorise.
    let n = w - 2;
    let [r0, r1, r2] = rows;
    let taps = [
        &r0[0..n],
        &r0[1..n + 1],
        &r0[2..n + 2],
        &r1[0..n],
        &r1[1..n + 1],
        &r1[2..n + 2],
        &r2[0..n],
        &r2[1..n + 1],
        &r2[2..n + 2],
    ];
    depthwise_interior(&mut out[1..n + 1], taps, k, bias);
}

/// `out[i] = bias + Σ k[t]·taps[t][i]`: the inside of a row, where every tap is in the image.
/// Equal-length slices let the compiler drop the bounds checks and vectorise.
#[inline(always)]
fn depthwise_interior(out: &mut [f32], taps: [&[f32]; 9], k: &[f32; 9], bias: f32) {
    let n = out.len();
    let [a0, a1, a2, b0, b1, b2, c0, c1, c2] = taps.map(|t| &t[..n]);
    for i in 0..n {
        out[i] = bias
            + k[0] * a0[i]
            + k[1] * a1[i]
            + k[2] * a2[i]
            + k[3] * b0[i]
            + k[4] * b1[i]
            + k[5] * b2[i]
            + k[6] * c0[i]
            + k[7] * c1[i]
            + k[8] * c2[i];
    }
}

/// Stride 2: output x reads input columns 2x−1, 2x, 2x+1 = odd[x−1], even[x], odd[x].
/// `split`: the three rows with their even columns first, then their odd ones.
#[inline(always)]
fn depthwise_row_stride2(
    rows: [&[f32]; 3],
    split: [&[f32]; 3],
    k: &[f32; 9],
    bias: f32,
    out: &mut [f32],
) {
    let w = rows[0].len();
    let wo = out.len();
    let (evens, odds) = (w.div_ceil(2), w / 2);
    // Columns 1.. while all three taps are inside the row.
    let end = wo.min(odds);
    if end < 2 {
        for (x, o) in out.iter_mut().enumerate() {
            *o = depthwise_pixel(rows, k, bias, 2, x);
        }
        return;
    }
    let n = end - 1;
    let part = |r: usize| {
        let (even, odd) = split[r].split_at(evens);
        (&odd[0..n], &even[1..n + 1], &odd[1..n + 1])
    };
    let ((a0, a1, a2), (b0, b1, b2), (c0, c1, c2)) = (part(0), part(1), part(2));
    let taps = [a0, a1, a2, b0, b1, b2, c0, c1, c2];
    depthwise_interior(&mut out[1..n + 1], taps, k, bias);
    out[0] = depthwise_pixel(rows, k, bias, 2, 0);
    for (x, o) in out.iter_mut().enumerate().skip(end) {
        *o = depthwise_pixel(rows, k, bias, 2, x);
    }
}

/// Depthwise 3×3 convolution (padding 1) + bias + activation, on the fast CPU kernel or its CUDA
/// twin. `weight`: (C, 1, 3, 3), `bias`: (C). On Metal it runs as nine shifted multiply-adds:
/// candle's grouped convolution splits into one convolution per channel, which is two orders of
/// magnitude slower on a GPU (see ../shared/gpu/README.md).
pub fn depthwise3x3(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    activation: Activation,
) -> Result<Tensor> {
    if !(1..=2).contains(&stride) {
        candle_core::bail!("depthwise 3x3 with stride {stride} is not supported (1 or 2)");
    }
    if (x.device().is_cpu() || x.device().is_cuda()) && x.dtype() == DType::F32 {
        let op = Depthwise3x3 { stride, activation };
        return x
            .contiguous()?
            .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op);
    }
    depthwise3x3_shifted(x, weight, bias, stride, activation)
}

/// Depthwise 3×3 (padding 1) from whole-tensor ops only: nine shifted slices, each scaled by its
/// per-channel tap and summed; stride 2 keeps every other row and column.
pub fn depthwise3x3_shifted(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    activation: Activation,
) -> Result<Tensor> {
    let (_, channels, h, w) = x.dims4()?;
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let taps = weight.reshape((channels, 9))?;
    let mut sum: Option<Tensor> = None;
    for ky in 0..3 {
        for kx in 0..3 {
            let shifted = padded.narrow(2, ky, h)?.narrow(3, kx, w)?;
            let tap = taps
                .narrow(1, ky * 3 + kx, 1)?
                .reshape((1, channels, 1, 1))?;
            let term = shifted.broadcast_mul(&tap)?;
            sum = Some(match sum {
                None => term,
                Some(s) => (s + term)?,
            });
        }
    }
    let mut y = sum
        .expect("nine taps")
        .broadcast_add(&bias.reshape((1, channels, 1, 1))?)?;
    if stride == 2 {
        let rows = Tensor::arange_step(0u32, h as u32, 2, x.device())?;
        let cols = Tensor::arange_step(0u32, w as u32, 2, x.device())?;
        y = y.index_select(&rows, 2)?.index_select(&cols, 3)?;
    }
    activation.forward(&y)
}
#[cfg(test)]
mod tests {
    use super::super::tests::max_abs_diff;
    use super::*;
    use candle_core::Device;

    #[test]
    fn shifted_depthwise_matches_the_fast_kernel_at_both_strides() {
        let dev = Device::Cpu;
        for (stride, h, w) in [(1, 9, 12), (2, 9, 12), (2, 8, 7)] {
            let x = Tensor::randn(0f32, 1.0, (2, 5, h, w), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (5, 1, 3, 3), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, 5, &dev).unwrap();
            let fast = depthwise3x3(&x, &k, &b, stride, Activation::Relu).unwrap();
            let slow = depthwise3x3_shifted(&x, &k, &b, stride, Activation::Relu).unwrap();
            assert_eq!(fast.dims(), slow.dims());
            let diff: f32 = (fast - slow)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff < 1e-4, "stride {stride}: {diff}");
        }
    }

    fn reference_depthwise(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        stride: usize,
        act: Activation,
    ) -> Tensor {
        let c = x.dim(1).unwrap();
        let y = x.conv2d(w, 1, stride, 1, c).unwrap();
        act.forward(&y.broadcast_add(&b.reshape((1, c, 1, 1)).unwrap()).unwrap())
            .unwrap()
    }

    #[test]
    fn depthwise_matches_candle_grouped_conv_on_odd_and_even_sizes() {
        let dev = Device::Cpu;
        for (n, c, h, w) in [
            (1, 3, 7, 5),
            (2, 8, 16, 16),
            (3, 5, 9, 12),
            (1, 2, 1, 1),
            (1, 4, 2, 3),
            (1, 2, 4, 2),
            (1, 2, 3, 4),
            (1, 2, 5, 6),
            (2, 3, 6, 9),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (c, 1, 3, 3), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
            for stride in [1, 2] {
                for act in [Activation::None, Activation::Relu, Activation::Relu6] {
                    let fast = depthwise3x3(&x, &wt, &b, stride, act).unwrap();
                    let slow = reference_depthwise(&x, &wt, &b, stride, act);
                    assert_eq!(fast.dims(), slow.dims(), "{n}x{c}x{h}x{w} s{stride}");
                    let d = max_abs_diff(&fast, &slow);
                    assert!(d < 1e-5, "{n}x{c}x{h}x{w} stride {stride} {act:?}: {d}");
                }
            }
        }
    }

    #[test]
    fn depthwise_rejects_mismatched_weights() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 1, 3, 3), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let err = depthwise3x3(&x, &w, &b, 1, Activation::None).unwrap_err();
        assert!(err.to_string().contains("4 channels"), "{err}");
    }
}
