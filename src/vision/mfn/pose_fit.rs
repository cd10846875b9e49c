//! The pose fit (`training/mfn/pose_fit.py`): a linear correction of the 6 rotation values from
//! each face's own landmarks (centred and scaled), its rotation, their products, the head's own
//! per-face features and products of the landmarks' principal shape values, fitted to the
//! teacher's rotation on training faces. The net places the landmarks as well as the SFN but
//! its rotation output uses their geometry only in part.

use glam::Vec2;

use super::dense::{repeated, Dense};
use super::head::HeadFeatures;
use super::{FACE_CHANNELS, LANDMARKS};

/// The fit: [`PoseFit::INPUTS`] geometry values, then `head_features` of the head's own
/// ([`HeadFeatures`]), then the shape products → 6 rotation corrections.
pub(super) struct PoseFit {
    pub(super) weight: Dense,
    pub(super) bias: Vec<f32>,
    pub(super) head_features: usize,
    pub(super) shape: ShapeProducts,
}

/// The landmarks' geometry to second order in few values: z = basis · (scaled landmarks −
/// mean), the first k principal shape values of the training faces (the basis holds the
/// principal directions divided by their spread), then z_i z_j for i ≤ j (i outer).
/// Those are followed by z_i z_j z_l for i ≤ j ≤ l < `cubic` and the rotation values' pairs
/// r_i r_j, i ≤ j.
pub(super) struct ShapeProducts {
    pub(super) mean: Vec<f32>,
    /// [k, 136], row-major.
    pub(super) basis: Vec<f32>,
    /// c: the cubic products of the first c shape values follow the pairs.
    pub(super) cubic: usize,
}

impl ShapeProducts {
    pub(super) fn count(&self) -> usize {
        let k = self.basis.len() / (2 * LANDMARKS);
        let c = self.cubic;
        k * (k + 1) / 2 + c * (c + 1) * (c + 2) / 6 + 21
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
        let c = self.cubic;
        for i in 0..c {
            for j in i..c {
                out.extend(z[j..c].iter().map(|zl| z[i] * z[j] * zl));
            }
        }
        out.extend(pairs(rotation));
        out
    }
}

impl PoseFit {
    /// 136 landmark values, 6 rotation values and their 816 products.
    pub(super) const INPUTS: usize = 2 * LANDMARKS + 6 + 2 * LANDMARKS * 6;

    /// Adds the correction to each face's rotation values (`values`: rows × FACE_CHANNELS;
    /// `head`: the head's features of the same rows, read when the fit has `head_features`).
    pub(super) fn correct(&self, values: &mut [f32], head: &HeadFeatures) {
        let rows = values.len() / FACE_CHANNELS;
        let products = self.shape.count();
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
                .of(&features[start..start + 2 * LANDMARKS], rotation);
            head.extend_row(row, &mut features);
            features.extend(shape);
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

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

    /// Shape products that read nothing (a zero basis): for tests of the other inputs.
    fn unread_shape() -> ShapeProducts {
        ShapeProducts {
            mean: vec![0.0; 2 * LANDMARKS],
            basis: vec![0.0; 2 * LANDMARKS],
            cubic: 0,
        }
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
        let shape = unread_shape();
        let inputs = PoseFit::INPUTS + shape.count();
        let mut weight = vec![0f32; 6 * inputs];
        weight[3] = 2.0;
        weight[inputs + 2 * LANDMARKS + 4] = -1.0;
        weight[2 * inputs + 2 * LANDMARKS + 6 + 1] = 4.0;
        let fit = PoseFit {
            weight: Dense::new(&Tensor::from_vec(weight, (6, inputs), &Device::Cpu).unwrap())
                .unwrap(),
            bias: vec![0.5, 0.0, 0.0, 0.0, 0.0, -0.25],
            head_features: 0,
            shape,
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
        let shape = unread_shape();
        let inputs = PoseFit::INPUTS + 3 + shape.count();
        let mut weight = vec![0f32; 6 * inputs];
        weight[3 * inputs + PoseFit::INPUTS + 2] = 0.5;
        weight[PoseFit::INPUTS] = 1.0; // first block, first value, into rotation value 0
        let fit = PoseFit {
            weight: Dense::new(&Tensor::from_vec(weight, (6, inputs), &Device::Cpu).unwrap())
                .unwrap(),
            bias: vec![0.0; 6],
            head_features: 3,
            shape,
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
            cubic: 0,
        };
        // the pairs, then the rotation values' 21 pairs
        assert_eq!(shape.count(), 3 + 21);
        let inputs = PoseFit::INPUTS + 1 + shape.count();
        let mut weight = vec![0f32; 6 * inputs];
        weight[2 * inputs + PoseFit::INPUTS + 1 + 1] = 2.0; // z0 z1 into rotation value 2
        weight[4 * inputs + PoseFit::INPUTS + 1 + 2] = -1.0; // z1² into rotation value 4
        weight[5 * inputs + PoseFit::INPUTS] = 0.1; // the head's feature into value 5
        let fit = PoseFit {
            weight: Dense::new(&Tensor::from_vec(weight, (6, inputs), &Device::Cpu).unwrap())
                .unwrap(),
            bias: vec![0.0; 6],
            head_features: 1,
            shape,
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
            cubic: 2,
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
}
