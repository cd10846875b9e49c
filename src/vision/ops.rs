//! Fast CPU building blocks for the networks, as candle custom ops.
//!
//! candle's grouped convolution runs one convolution per channel, which makes depthwise layers
//! ~60× slower than they should be on CPU. Here: a direct depthwise 3×3 kernel with bias and
//! activation fused, and 1×1 convolutions as one batched matrix multiply. The depthwise kernel has
//! a CUDA twin (src/vision/kernels/depthwise.cu, built by build.rs with the `cuda` feature).

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Activation applied after a convolution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Activation {
    #[default]
    None,
    Relu,
    Relu6,
}

impl TryFrom<String> for Activation {
    type Error = String;

    fn try_from(name: String) -> std::result::Result<Self, String> {
        Activation::from_name(&name)
            .ok_or_else(|| format!("unsupported activation {name:?} (relu, relu6 or none)"))
    }
}

impl Activation {
    #[inline(always)]
    fn apply(self, v: f32) -> f32 {
        match self {
            Activation::None => v,
            Activation::Relu => v.max(0.0),
            Activation::Relu6 => v.clamp(0.0, 6.0),
        }
    }

    /// The activation a model file's layer list names ("relu", "relu6", "none" or "").
    pub fn from_name(name: &str) -> Option<Activation> {
        match name {
            "relu" => Some(Activation::Relu),
            "relu6" => Some(Activation::Relu6),
            "" | "none" => Some(Activation::None),
            _ => None,
        }
    }

    /// In place over a row of values.
    #[inline(always)]
    pub(crate) fn apply_all(self, values: &mut [f32]) {
        if self != Activation::None {
            for v in values.iter_mut() {
                *v = self.apply(*v);
            }
        }
    }

    /// The same activation with candle's stock ops (for paths without a fused kernel).
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::None => Ok(x.clone()),
            Activation::Relu => x.relu(),
            Activation::Relu6 => x.clamp(0f32, 6f32),
        }
    }
}

/// Runs `work` on a thread of rayon's pool, or at once when already on one. The kernels here
/// split each layer over the pool; called from outside it, every split wakes the pool and puts
/// the caller to sleep until it is done, dozens of times a network pass (perf: ~20 % of an MFN
/// bench's samples in the kernel's scheduler). From a pool thread a split is plain work
/// stealing: the MFN pass on 2 cores went from 3.2-3.3 to 2.4-2.6 ms.
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        work()
    } else {
        rayon::scope(|_| work())
    }
}

/// A layer's output buffer, not yet written: zeroing megabytes on one thread only to overwrite
/// them cost ~9 % of an MFN pass (perf: memset under `vec![0.0; n]`). Each part is written by
/// [`write_bias`] or [`write_zeros`] on the thread that computes it, then [`assume_written`]
/// hands the whole on.
fn unwritten(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut out = Vec::with_capacity(len);
    // SAFETY: MaybeUninit values need no initialisation.
    unsafe { out.set_len(len) };
    out
}

/// `out` (one row per bias value) with each row set to its bias, plus that row of `residual`
/// when given, as floats. Row by row, so that the loops vectorise.
fn write_bias<'a>(
    out: &'a mut [MaybeUninit<f32>],
    bias: &[f32],
    residual: Option<&[f32]>,
) -> &'a mut [f32] {
    if !out.is_empty() {
        let row = out.len() / bias.len();
        assert_eq!(row * bias.len(), out.len(), "one output row per bias value");
        match residual {
            None => {
                for (out, &b) in out.chunks_exact_mut(row).zip(bias) {
                    out.fill(MaybeUninit::new(b));
                }
            }
            Some(residual) => {
                assert_eq!(residual.len(), out.len(), "residual size");
                for ((out, r), &b) in out
                    .chunks_exact_mut(row)
                    .zip(residual.chunks_exact(row))
                    .zip(bias)
                {
                    for (o, r) in out.iter_mut().zip(r) {
                        o.write(r + b);
                    }
                }
            }
        }
    }
    // SAFETY: the rows above cover `out` exactly (asserted), each value written once;
    // MaybeUninit<f32> has f32's layout.
    unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `out` with every value zero, as floats.
fn write_zeros(out: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    out.fill(MaybeUninit::new(0.0));
    // SAFETY: every value written just above; MaybeUninit<f32> has f32's layout.
    unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// The buffer of [`unwritten`] once every part has been written.
///
/// # Safety
/// Every value of `out` must have been written.
unsafe fn assume_written(out: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut out = std::mem::ManuallyDrop::new(out);
    // SAFETY: same allocation, layout and length; the values are initialised (the caller's word).
    unsafe { Vec::from_raw_parts(out.as_mut_ptr().cast::<f32>(), out.len(), out.capacity()) }
}

/// Depthwise 3×3 convolution, padding 1, stride 1 or 2, with bias and activation fused.
struct Depthwise3x3 {
    stride: usize,
    activation: Activation,
}

fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("depthwise conv: {what} must be f32");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("depthwise conv: {what} must be contiguous");
    };
    Ok(&data[start..end])
}

/// Calls `read` with a tensor's f32 values in row-major order: borrowed in place when the tensor
/// is contiguous f32 on the CPU (a network output read once per frame: copying the MFN's two
/// maps cost ~50 us of its decode), copied otherwise (GPU tensors, views).
pub fn read_f32<R>(tensor: &Tensor, read: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = tensor.storage_and_layout();
        if let candle_core::Storage::Cpu(CpuStorage::F32(data)) = &*storage {
            if let Some((start, end)) = layout.contiguous_offsets() {
                return Ok(read(&data[start..end]));
            }
        }
    }
    let values: Vec<f32> = tensor
        .to_device(&candle_core::Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    Ok(read(&values))
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

fn conv_out_size(h: usize, w: usize, stride: usize) -> (usize, usize) {
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
fn deinterleave(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
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

/// Nearest-neighbour 2× upsampling (N, C, H, W) → (N, C, 2H, 2W): each input row is widened
/// once and written twice. candle's general `upsample_nearest2d` gathers every output pixel
/// through an index computation and took ~10× longer on the FPN's maps.
struct Upsample2x;

impl CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "upsample2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let input = contiguous(storage, layout, "input")?;
        let (ho, wo) = (2 * h, 2 * w);
        let mut out = vec![0f32; n * c * ho * wo];
        if !out.is_empty() {
            out.par_chunks_mut(ho * wo)
                .zip(input.par_chunks(h * w))
                .for_each(|(out, plane)| {
                    for (y, row) in plane.chunks_exact(w).enumerate() {
                        let (top, bottom) = out[2 * y * wo..(2 * y + 2) * wo].split_at_mut(wo);
                        for (pair, v) in top.chunks_exact_mut(2).zip(row) {
                            pair[0] = *v;
                            pair[1] = *v;
                        }
                        bottom.copy_from_slice(top);
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&[n, c, ho, wo])))
    }
}

/// Nearest-neighbour 2× upsampling of an (N, C, H, W) tensor.
pub fn upsample2x(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1_no_bwd(&Upsample2x);
    }
    let (_, _, h, w) = x.dims4()?;
    x.upsample_nearest2d(2 * h, 2 * w)
}

/// Elementwise `activation(a + b)` for two tensors of one shape, in one pass.
struct AddActivate(Activation);

impl CustomOp2 for AddActivate {
    fn name(&self) -> &'static str {
        "add-activate"
    }

    fn cpu_fwd(
        &self,
        s_a: &CpuStorage,
        l_a: &Layout,
        s_b: &CpuStorage,
        l_b: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l_a.shape() != l_b.shape() {
            candle_core::bail!("add: shapes {:?} and {:?} differ", l_a.shape(), l_b.shape());
        }
        let (a, b) = (contiguous(s_a, l_a, "lhs")?, contiguous(s_b, l_b, "rhs")?);
        let activation = self.0;
        let out: Vec<f32> = a
            .iter()
            .zip(b)
            .map(|(a, b)| activation.apply(a + b))
            .collect();
        Ok((CpuStorage::F32(out), l_a.shape().clone()))
    }
}

/// `activation(a + b)` for two tensors of the same shape (the FPN's merges).
pub fn add_activate(a: &Tensor, b: &Tensor, activation: Activation) -> Result<Tensor> {
    if a.device().is_cpu() && a.dtype() == DType::F32 && b.dtype() == DType::F32 {
        return a
            .contiguous()?
            .apply_op2_no_bwd(&b.contiguous()?, &AddActivate(activation));
    }
    activation.forward(&(a + b)?)
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
pub(crate) mod tests {
    use super::*;

    #[test]
    fn read_f32_gives_row_major_values_of_views_too() {
        let t = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let whole = read_f32(&t, |v| v.to_vec()).unwrap();
        assert_eq!(whole, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        // a transposed view is not contiguous: copied in its own row-major order
        let transposed = read_f32(&t.t().unwrap(), |v| v.to_vec()).unwrap();
        assert_eq!(transposed, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        // a slice of rows is contiguous at an offset: borrowed
        let second_row = read_f32(&t.narrow(0, 1, 1).unwrap(), |v| v.to_vec()).unwrap();
        assert_eq!(second_row, [3.0, 4.0, 5.0]);
    }

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
    use candle_core::Device;

    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
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

    fn reference_conv(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        stride: usize,
        padding: usize,
        act: Activation,
    ) -> Tensor {
        let cout = w.dim(0).unwrap();
        let y = x.conv2d(w, padding, stride, 1, 1).unwrap();
        act.forward(
            &y.broadcast_add(&b.reshape((1, cout, 1, 1)).unwrap())
                .unwrap(),
        )
        .unwrap()
    }

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
    fn upsampling_matches_candle_nearest() {
        let dev = Device::Cpu;
        for (n, c, h, w) in [(1, 3, 4, 5), (2, 2, 1, 1), (1, 1, 3, 2)] {
            let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
            let fast = upsample2x(&x).unwrap();
            let slow = x.upsample_nearest2d(2 * h, 2 * w).unwrap();
            assert_eq!(fast.dims(), slow.dims());
            assert_eq!(max_abs_diff(&fast, &slow), 0.0, "{n}x{c}x{h}x{w}");
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
    fn add_activate_matches_candle_add_then_activation() {
        let dev = Device::Cpu;
        // The FPN's largest merge (above candle's parallel elementwise threshold) and a small one;
        // a transposed operand takes the copy-to-contiguous path.
        for dims in [(1, 32, 60, 80), (2, 3, 4, 5)] {
            let a = Tensor::randn(0f32, 1.0, dims, &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, dims, &dev).unwrap();
            let b_t = b.transpose(2, 3).unwrap().contiguous().unwrap();
            for act in [Activation::None, Activation::Relu, Activation::Relu6] {
                let got = add_activate(&a, &b, act).unwrap();
                let want = act.forward(&(&a + &b).unwrap()).unwrap();
                assert_eq!(got.dims(), want.dims());
                assert_eq!(max_abs_diff(&got, &want), 0.0, "{dims:?} {act:?}");
                let got_t = add_activate(&a.transpose(2, 3).unwrap(), &b_t, act).unwrap();
                let want_t = act.forward(&want.transpose(2, 3).unwrap()).unwrap();
                assert!(max_abs_diff(&got_t, &want_t) < 1e-6);
            }
        }
        let a = Tensor::zeros((1, 2, 3, 4), DType::F32, &dev).unwrap();
        let b = Tensor::zeros((1, 2, 4, 3), DType::F32, &dev).unwrap();
        assert!(add_activate(&a, &b, Activation::None).is_err());
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
