//! Dense layers for the per-face products of the decode, on the CPU: an AVX2/FMA product made
//! for a handful of faces against a large weight, and gemm elsewhere.

use candle_core::Tensor;

/// A dense layer's weight, multiplied on the CPU with the gemm crate on the calling thread:
/// candle's matmul re-packed the weights and woke the thread pool on every call, which cost
/// ~0.25 ms per frame, several times the product itself at a handful of faces.
pub(super) struct Dense {
    /// [outputs, inputs], row-major.
    weight: Vec<f32>,
    pub(super) inputs: usize,
    pub(super) outputs: usize,
}

impl Dense {
    /// From a [outputs, inputs] weight tensor.
    pub(super) fn new(weight: &Tensor) -> candle_core::Result<Dense> {
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
    pub(super) fn accumulate(&self, x: &[f32], out: &mut [f32]) {
        let rows = x.len() / self.inputs;
        assert_eq!(x.len(), rows * self.inputs, "dense input");
        assert_eq!(out.len(), rows * self.outputs, "dense output");
        if rows == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above); sizes checked above.
            crate::vision::ops::on_pool(|| unsafe { self.accumulate_fma(x, rows, out) });
            return;
        }
        self.accumulate_gemm(x, rows, out);
    }

    /// The portable product.
    pub(super) fn accumulate_gemm(&self, x: &[f32], rows: usize, out: &mut [f32]) {
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
pub(super) fn add_to_rows(values: &mut [f32], bias: &[f32]) {
    for row in values.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `rows` copies of `bias`, one after another: the starting values of a dense layer's output.
pub(super) fn repeated(bias: &[f32], rows: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * bias.len());
    for _ in 0..rows {
        out.extend_from_slice(bias);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
}
