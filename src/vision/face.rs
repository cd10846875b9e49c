//! What the networks say about one face, the same type whichever pipeline produced it.

use glam::{Mat3, Vec2};

/// The 51 ARKit blendshapes the networks output, in output order (MediaPipe's order).
pub const BLENDSHAPE_NAMES: [&str; 51] = [
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "eyeLookDownLeft",
    "eyeLookDownRight",
    "eyeLookInLeft",
    "eyeLookInRight",
    "eyeLookOutLeft",
    "eyeLookOutRight",
    "eyeLookUpLeft",
    "eyeLookUpRight",
    "eyeSquintLeft",
    "eyeSquintRight",
    "eyeWideLeft",
    "eyeWideRight",
    "jawForward",
    "jawLeft",
    "jawOpen",
    "jawRight",
    "mouthClose",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthFunnel",
    "mouthLeft",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthPucker",
    "mouthRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "noseSneerLeft",
    "noseSneerRight",
];

/// ARKit blendshapes no network of ours estimates (the teacher data has no labels for them):
/// reported as unsupported rather than faked.
pub const UNSUPPORTED_BLENDSHAPES: [&str; 1] = ["tongueOut"];

/// A square region of a frame that a face network looks at (frame pixels, continuous convention).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropBox {
    pub center: Vec2,
    pub side: f32,
}

impl CropBox {
    /// The SFN's crop rule: centred on the tight box of the landmarks, side `scale` × its longer edge.
    pub fn around_points(points: &[Vec2], scale: f32) -> Option<CropBox> {
        let (min, max) = tight_box(points)?;
        let size = max - min;
        Some(CropBox {
            center: (min + max) / 2.0,
            side: scale * size.x.max(size.y),
        })
    }

    /// Crop-normalised (0..1) coordinates to frame pixels.
    pub fn to_frame(&self, normalized: Vec2) -> Vec2 {
        self.center - Vec2::splat(self.side / 2.0) + normalized * self.side
    }
}

/// Smallest and largest coordinates of `points`; `None` when empty or not finite.
pub fn tight_box(points: &[Vec2]) -> Option<(Vec2, Vec2)> {
    let mut min = Vec2::splat(f32::INFINITY);
    let mut max = Vec2::splat(f32::NEG_INFINITY);
    for p in points {
        min = min.min(*p);
        max = max.max(*p);
    }
    (min.is_finite() && max.is_finite()).then_some((min, max))
}

/// One face in one frame.
#[derive(Clone, Debug, PartialEq)]
pub struct FaceObservation {
    /// Tight box around the 68 landmarks: min and max corner, frame pixels.
    pub bbox: (Vec2, Vec2),
    /// Face confidence in [0, 1].
    pub score: f32,
    /// The 68 iBUG landmarks in frame pixels (continuous convention: pixel centres at +0.5).
    pub landmarks: Vec<Vec2>,
    /// Head rotation: canonical face (x subject's left, y up, z out of the face) to camera
    /// (x right, y up, looking down -z), as MediaPipe's facial transformation matrix.
    pub rotation: Mat3,
    /// ARKit blendshape weights in [0, 1], in [`BLENDSHAPE_NAMES`] order.
    pub blendshapes: Vec<f32>,
}

impl FaceObservation {
    /// (yaw, pitch, roll) in degrees for R = Rz(roll) · Ry(yaw) · Rx(pitch): yaw > 0 turns the face
    /// to the image right, pitch > 0 looks down, roll > 0 tilts counter-clockwise in the image.
    pub fn yaw_pitch_roll(&self) -> (f32, f32, f32) {
        euler_degrees(&self.rotation)
    }

    /// Distance between the outer eye corners (points 36 and 45), the usual NME normaliser.
    pub fn inter_ocular(&self) -> f32 {
        self.landmarks[36].distance(self.landmarks[45])
    }

    pub fn blendshape(&self, name: &str) -> Option<f32> {
        let index = BLENDSHAPE_NAMES.iter().position(|n| *n == name)?;
        self.blendshapes.get(index).copied()
    }
}

pub fn euler_degrees(r: &Mat3) -> (f32, f32, f32) {
    // glam is column-major: r.col(j)[i] = R[i][j].
    let (r00, r10, r20) = (r.x_axis.x, r.x_axis.y, r.x_axis.z);
    let (r21, r22) = (r.y_axis.z, r.z_axis.z);
    let yaw = (-r20).clamp(-1.0, 1.0).asin();
    let pitch = r21.atan2(r22);
    let roll = r10.atan2(r00);
    (yaw.to_degrees(), pitch.to_degrees(), roll.to_degrees())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn euler_angles_round_trip_through_the_documented_convention() {
        let (yaw, pitch, roll) = (20f32, -10f32, 5f32);
        let r = Mat3::from_rotation_z(roll.to_radians())
            * Mat3::from_rotation_y(yaw.to_radians())
            * Mat3::from_rotation_x(pitch.to_radians());
        let (y, p, rr) = euler_degrees(&r);
        assert!((y - yaw).abs() < 1e-3 && (p - pitch).abs() < 1e-3 && (rr - roll).abs() < 1e-3);
    }

    #[test]
    fn crop_box_follows_the_sfn_rule() {
        let points = [Vec2::new(10.0, 20.0), Vec2::new(50.0, 40.0)];
        let crop = CropBox::around_points(&points, 1.4).unwrap();
        assert_eq!(crop.center, Vec2::new(30.0, 30.0));
        assert!((crop.side - 56.0).abs() < 1e-4);
        assert_eq!(crop.to_frame(Vec2::new(0.5, 0.5)), crop.center);
        assert!(CropBox::around_points(&[], 1.4).is_none());
    }
}
