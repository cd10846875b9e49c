//! Fast CPU building blocks for the networks, as candle custom ops.
//!
//! candle's grouped convolution runs one convolution per channel, which makes depthwise layers
//! ~60× slower than they should be on CPU. Here: a direct depthwise 3×3 kernel with bias and
//! activation fused ([`depthwise`]), convolutions as blocked matrix products with the bias,
//! activation and a residual fused ([`conv`]), and the small ops between them. The depthwise
//! kernel has a CUDA twin (src/vision/kernels/depthwise.cu, built by build.rs with the `cuda`
//! feature).

mod conv;
mod depthwise;

pub use conv::{conv2d, pointwise, pointwise_residual};
pub use depthwise::{depthwise3x3, depthwise3x3_shifted};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
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
pub(super) fn unwritten(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut out = Vec::with_capacity(len);
    // SAFETY: MaybeUninit values need no initialisation.
    unsafe { out.set_len(len) };
    out
}

/// `out` (one row per bias value) with each row set to its bias, plus that row of `residual`
/// when given, as floats. Row by row, so that the loops vectorise.
pub(super) fn write_bias<'a>(
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
pub(super) fn write_zeros(out: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    out.fill(MaybeUninit::new(0.0));
    // SAFETY: every value written just above; MaybeUninit<f32> has f32's layout.
    unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// The buffer of [`unwritten`] once every part has been written.
///
/// # Safety
/// Every value of `out` must have been written.
pub(super) unsafe fn assume_written(out: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut out = std::mem::ManuallyDrop::new(out);
    // SAFETY: same allocation, layout and length; the values are initialised (the caller's word).
    unsafe { Vec::from_raw_parts(out.as_mut_ptr().cast::<f32>(), out.len(), out.capacity()) }
}

pub(super) fn contiguous<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
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
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;

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

    pub(crate) fn reference_conv(
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
}
