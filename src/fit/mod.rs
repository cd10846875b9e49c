//! Fit: a 3D head pose (rotation + translation in camera space) from the 68 landmarks against
//! the mean face, fused with the network's rotation; expression weights refined where the
//! landmarks clearly disagree with the network (blinks, mouth opening).
//!
//! Camera convention: MediaPipe's (x right, y up, looking down −z, centimetres), the same as the
//! networks' rotation, so poses from the network and from the fit can be compared directly.

// Small dense matrix code reads best with explicit indices.
#![allow(clippy::needless_range_loop)]

mod mean_face;

use glam::{Mat3, Vec2, Vec3};

pub use mean_face::{INTER_OCULAR_CM, MEAN_FACE_68};

/// A pinhole camera: focal length and principal point in pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Camera {
    pub focal: f32,
    pub center: Vec2,
}

impl Camera {
    /// A camera with vertical field of view `vfov_deg` for a `width` × `height` frame, principal
    /// point at the centre (webcams rarely say their intrinsics; 63° is MediaPipe's default).
    pub fn assumed(width: u32, height: u32, vfov_deg: f32) -> Camera {
        Camera {
            focal: (height as f32 / 2.0) / (vfov_deg.to_radians() / 2.0).tan(),
            center: Vec2::new(width as f32 / 2.0, height as f32 / 2.0),
        }
    }

    /// Pixel position of a camera-space point (continuous pixel convention).
    pub fn project(&self, p: Vec3) -> Vec2 {
        let depth = (-p.z).max(1e-6);
        Vec2::new(
            self.center.x + self.focal * p.x / depth,
            self.center.y - self.focal * p.y / depth,
        )
    }
}

/// Head pose: camera-space point = rotation · face point + translation (cm).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadPose {
    pub rotation: Mat3,
    pub translation: Vec3,
}

/// What a fit found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoseFit {
    pub pose: HeadPose,
    /// Root-mean-square reprojection error of the 68 points, pixels.
    pub rms_px: f32,
    pub iterations: usize,
}

/// How the fit trusts the network's rotation relative to the landmarks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FitOptions {
    /// Weight of the network's rotation: 0 = landmarks only; 1 = a 1-radian disagreement costs as
    /// much as every point being off by 10 % of the inter-ocular distance.
    pub prior_strength: f32,
    /// Residuals beyond this fraction of the inter-ocular distance are down-weighted (Huber).
    pub huber: f32,
    pub max_iterations: usize,
    /// Stop once a step turns the head by less than this (radians) and moves it by less than this
    /// fraction of its distance. Huber weights and the prior make the convergence linear near the
    /// end, and below ~1e-5 the f32 projections are noise, so a tight cost test alone would spend
    /// every iteration there.
    pub step_tolerance: f32,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            prior_strength: 0.3,
            huber: 0.05,
            max_iterations: 20,
            step_tolerance: 1e-4,
        }
    }
}

fn skew(v: Vec3) -> Mat3 {
    Mat3::from_cols(
        Vec3::new(0.0, v.z, -v.y),
        Vec3::new(-v.z, 0.0, v.x),
        Vec3::new(v.y, -v.x, 0.0),
    )
}

/// Rotation matrix of a rotation vector (Rodrigues).
pub fn exp_so3(w: Vec3) -> Mat3 {
    let angle = w.length();
    if angle < 1e-12 {
        return Mat3::IDENTITY + skew(w);
    }
    Mat3::from_axis_angle(w / angle, angle)
}

/// Rotation vector of a rotation matrix.
pub fn log_so3(r: &Mat3) -> Vec3 {
    let q = glam::Quat::from_mat3(r);
    let (axis, angle) = q.to_axis_angle();
    let angle = if angle > std::f32::consts::PI {
        angle - 2.0 * std::f32::consts::PI
    } else {
        angle
    };
    axis * angle
}

/// Solves a 6×6 symmetric positive system by Gaussian elimination with partial pivoting.
fn solve6(mut a: [[f64; 6]; 6], mut b: [f64; 6]) -> Option<[f64; 6]> {
    for col in 0..6 {
        let pivot = (col..6).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-15 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..6 {
            let factor = a[row][col] / a[col][col];
            for k in col..6 {
                a[row][k] -= factor * a[col][k];
            }
            b[row] -= factor * b[col];
        }
    }
    let mut x = [0f64; 6];
    for row in (0..6).rev() {
        let sum: f64 = (row + 1..6).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - sum) / a[row][row];
    }
    Some(x)
}

/// A starting pose: the given rotation, depth from the landmarks' inter-ocular distance.
pub fn initial_pose(points: &[Vec2], camera: &Camera, rotation: Mat3) -> HeadPose {
    let iod_px = points[36].distance(points[45]).max(1.0);
    let depth = camera.focal * INTER_OCULAR_CM / iod_px;
    let centroid_px = points.iter().copied().sum::<Vec2>() / points.len() as f32;
    let centroid_model = MEAN_FACE_68
        .iter()
        .map(|p| Vec3::from_array(*p))
        .sum::<Vec3>()
        / 68.0;
    let ray = Vec3::new(
        (centroid_px.x - camera.center.x) * depth / camera.focal,
        -(centroid_px.y - camera.center.y) * depth / camera.focal,
        -depth,
    );
    HeadPose {
        rotation,
        translation: ray - rotation * centroid_model,
    }
}

/// Levenberg–Marquardt fit of the mean face to `points` (68, pixels), robust to outliers
/// (Huber), starting from and pulled towards `network_rotation` when given.
pub fn fit_pose(
    points: &[Vec2],
    camera: &Camera,
    network_rotation: Option<Mat3>,
    options: &FitOptions,
) -> Option<PoseFit> {
    if points.len() != 68 {
        return None;
    }
    let start = initial_pose(points, camera, network_rotation.unwrap_or(Mat3::IDENTITY));
    fit_pose_from(points, camera, network_rotation, start, options)
}

/// [`fit_pose`] started from `start`: a tracked face's pose in the previous frame is a few
/// hundredths of a degree from this frame's answer, so the solve takes one or two steps.
pub fn fit_pose_from(
    points: &[Vec2],
    camera: &Camera,
    network_rotation: Option<Mat3>,
    start: HeadPose,
    options: &FitOptions,
) -> Option<PoseFit> {
    if points.len() != 68
        || points.iter().any(|p| !p.is_finite())
        || !start.translation.is_finite()
        || !start.rotation.is_finite()
    {
        return None;
    }
    let model: Vec<Vec3> = MEAN_FACE_68.iter().map(|p| Vec3::from_array(*p)).collect();
    let iod_px = points[36].distance(points[45]).max(1.0);
    let huber = (options.huber * iod_px).max(0.5) as f64;
    let prior_weight = network_rotation
        .map(|_| options.prior_strength as f64 * 68.0 * (0.1 * iod_px as f64).powi(2))
        .unwrap_or(0.0);
    let mut pose = start;

    // Cost, gradient and Gauss–Newton matrix at a pose.
    let evaluate = |pose: &HeadPose, with_jacobian: bool| -> (f64, [[f64; 6]; 6], [f64; 6]) {
        let mut cost = 0f64;
        let mut jtj = [[0f64; 6]; 6];
        let mut jtr = [0f64; 6];
        for (x, target) in model.iter().zip(points) {
            let rotated = pose.rotation * *x;
            let p = rotated + pose.translation;
            let depth = (-p.z).max(1e-3) as f64;
            let projected = camera.project(p);
            let r = [
                (projected.x - target.x) as f64,
                (projected.y - target.y) as f64,
            ];
            let norm = (r[0] * r[0] + r[1] * r[1]).sqrt();
            let w = if norm <= huber { 1.0 } else { huber / norm };
            cost += if norm <= huber {
                norm * norm
            } else {
                2.0 * huber * norm - huber * huber
            };
            if !with_jacobian {
                continue;
            }
            let f = camera.focal as f64;
            let (px, py) = (p.x as f64, p.y as f64);
            // d(u, v)/dP for u = cx + f·x/d, v = cy − f·y/d, d = −z.
            let du = [f / depth, 0.0, f * px / (depth * depth)];
            let dv = [0.0, -f / depth, -f * py / (depth * depth)];
            // dP/dδ (rotation perturbation exp([δ]×)·R) = −[R·X]×; dP/dt = I.
            let s = -skew(rotated);
            let mut jrow = [[0f64; 6]; 2];
            for (k, d) in [du, dv].iter().enumerate() {
                for c in 0..3 {
                    let col = s.col(c);
                    jrow[k][c] = d[0] * col.x as f64 + d[1] * col.y as f64 + d[2] * col.z as f64;
                    jrow[k][3 + c] = d[c];
                }
            }
            for k in 0..2 {
                for a in 0..6 {
                    let wa = w * jrow[k][a];
                    jtr[a] += wa * r[k];
                    // Upper triangle only; mirrored below.
                    for b in a..6 {
                        jtj[a][b] += wa * jrow[k][b];
                    }
                }
            }
        }
        for a in 0..6 {
            for b in 0..a {
                jtj[a][b] = jtj[b][a];
            }
        }
        if let Some(prior) = network_rotation {
            // log(R_netᵀ·R) ≈ log(R_netᵀ·R0) + R0ᵀ·δ for small steps.
            let e = log_so3(&(prior.transpose() * pose.rotation));
            let e = [e.x as f64, e.y as f64, e.z as f64];
            cost += prior_weight * (e[0] * e[0] + e[1] * e[1] + e[2] * e[2]);
            if with_jacobian {
                let rt = pose.rotation.transpose();
                let j = |row: usize, col: usize| rt.col(col)[row] as f64;
                for a in 0..3 {
                    for k in 0..3 {
                        jtr[a] += prior_weight * j(k, a) * e[k];
                        for b in 0..3 {
                            jtj[a][b] += prior_weight * j(k, a) * j(k, b);
                        }
                    }
                }
            }
        }
        (cost, jtj, jtr)
    };

    let mut lambda = 1e-3;
    let mut iterations = 0;
    let (mut cost, mut jtj, mut jtr) = evaluate(&pose, true);
    while iterations < options.max_iterations {
        iterations += 1;
        let mut a = jtj;
        for (i, row) in a.iter_mut().enumerate() {
            row[i] += lambda * (jtj[i][i] + 1e-9);
        }
        let Some(step) = solve6(a, jtr.map(|g| -g)) else {
            break;
        };
        let delta = Vec3::new(step[0] as f32, step[1] as f32, step[2] as f32);
        let shift = Vec3::new(step[3] as f32, step[4] as f32, step[5] as f32);
        let small_step = delta.length() < options.step_tolerance
            && shift.length() < options.step_tolerance * pose.translation.length().max(1.0);
        let candidate = HeadPose {
            rotation: exp_so3(delta) * pose.rotation,
            translation: pose.translation + shift,
        };
        // Accepted steps are the common case: evaluate with the Jacobian straight away.
        let (new_cost, new_jtj, new_jtr) = evaluate(&candidate, true);
        if new_cost < cost {
            let converged = (cost - new_cost) < 1e-7 * cost.max(1e-3) || delta.length() < 1e-6;
            pose = candidate;
            (cost, jtj, jtr) = (new_cost, new_jtj, new_jtr);
            lambda = (lambda * 0.3).max(1e-9);
            if converged || small_step {
                break;
            }
        } else {
            lambda *= 10.0;
            if lambda > 1e8 || small_step {
                break;
            }
        }
    }
    // Re-orthonormalise against float drift.
    let q = glam::Quat::from_mat3(&pose.rotation).normalize();
    pose.rotation = Mat3::from_quat(q);
    let rms = (model
        .iter()
        .zip(points)
        .map(|(x, t)| {
            camera
                .project(pose.rotation * *x + pose.translation)
                .distance_squared(*t)
        })
        .sum::<f32>()
        / 68.0)
        .sqrt();
    Some(PoseFit {
        pose,
        rms_px: rms,
        iterations,
    })
}

/// The networks estimate rotation as seen along the ray to the face (their crop is centred on
/// it); in the frame's camera the same head is rotated by the turn from the optical axis to that
/// ray. `at` is the face's position in the frame (pixels).
pub fn rotation_in_camera(rotation_along_ray: Mat3, at: Vec2, camera: &Camera) -> Mat3 {
    let ray = Vec3::new(
        (at.x - camera.center.x) / camera.focal,
        -(at.y - camera.center.y) / camera.focal,
        -1.0,
    )
    .normalize();
    Mat3::from_quat(glam::Quat::from_rotation_arc(Vec3::NEG_Z, ray)) * rotation_along_ray
}

/// Eye openness: mean of the two lid distances over the eye width (the eye aspect ratio).
pub fn eye_aspect_ratio(points: &[Vec2], eye: std::ops::Range<usize>) -> f32 {
    let p: Vec<Vec2> = points[eye].to_vec();
    let width = p[0].distance(p[3]).max(1e-6);
    (p[1].distance(p[5]) + p[2].distance(p[4])) / (2.0 * width)
}

/// Mouth opening: inner-lip gap (points 62–66) over the mouth width (48–54).
pub fn mouth_open_ratio(points: &[Vec2]) -> f32 {
    points[62].distance(points[66]) / points[48].distance(points[54]).max(1e-6)
}

/// Eye aspect ratio of an open / a closed eye (typical adult values).
pub const EAR_OPEN: f32 = 0.28;
pub const EAR_CLOSED: f32 = 0.08;
/// Mouth open ratio at jawOpen = 1.
pub const MOUTH_WIDE_OPEN: f32 = 0.6;

/// Refines the network's blendshapes where the landmarks disagree strongly. Rule: for
/// eyeBlinkLeft/Right (from the eye aspect ratio) and jawOpen (from the inner-lip gap), a
/// geometric estimate is computed; where it differs from the network by more than 0.25, the
/// weight becomes the mean of both. Elsewhere the network's value stands: landmarks alone are
/// too noisy to replace it, but a large disagreement usually means the network missed a blink.
pub fn refine_blendshapes(points: &[Vec2], blendshapes: &mut [f32]) {
    use crate::vision::BLENDSHAPE_NAMES;
    if points.len() != 68 || blendshapes.len() != BLENDSHAPE_NAMES.len() {
        return;
    }
    let index = |name: &str| {
        BLENDSHAPE_NAMES
            .iter()
            .position(|n| *n == name)
            .expect("known name")
    };
    let blink = |ear: f32| ((EAR_OPEN - ear) / (EAR_OPEN - EAR_CLOSED)).clamp(0.0, 1.0);
    // Subject's right eye is 36–41 (image left) and drives eyeBlinkRight.
    let estimates = [
        (
            index("eyeBlinkRight"),
            blink(eye_aspect_ratio(points, 36..42)),
        ),
        (
            index("eyeBlinkLeft"),
            blink(eye_aspect_ratio(points, 42..48)),
        ),
        (
            index("jawOpen"),
            (mouth_open_ratio(points) / MOUTH_WIDE_OPEN).clamp(0.0, 1.0),
        ),
    ];
    for (i, geometric) in estimates {
        if (blendshapes[i] - geometric).abs() > 0.25 {
            blendshapes[i] = 0.5 * (blendshapes[i] + geometric);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project_mean_face(pose: &HeadPose, camera: &Camera) -> Vec<Vec2> {
        MEAN_FACE_68
            .iter()
            .map(|p| camera.project(pose.rotation * Vec3::from_array(*p) + pose.translation))
            .collect()
    }

    fn pose(yaw: f32, pitch: f32, roll: f32, t: Vec3) -> HeadPose {
        HeadPose {
            rotation: Mat3::from_rotation_z(roll.to_radians())
                * Mat3::from_rotation_y(yaw.to_radians())
                * Mat3::from_rotation_x(pitch.to_radians()),
            translation: t,
        }
    }

    /// Moves every point by a seeded uniform offset in ±amplitude/2 along x and y.
    fn jitter(points: &mut [Vec2], seed: u32, amplitude: f32) {
        let mut state = seed;
        let mut uniform = || {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            (state >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for p in points.iter_mut() {
            let (a, b) = (uniform(), uniform());
            *p += Vec2::new(a, b) * amplitude;
        }
    }

    fn angle_between(a: &Mat3, b: &Mat3) -> f32 {
        log_so3(&(a.transpose() * *b)).length().to_degrees()
    }

    #[test]
    fn recovers_known_poses_from_exact_projections() {
        let camera = Camera::assumed(640, 480, 63.0);
        for (yaw, pitch, roll, t) in [
            (0.0, 0.0, 0.0, Vec3::new(0.0, 0.0, -50.0)),
            (30.0, -10.0, 5.0, Vec3::new(8.0, -3.0, -60.0)),
            (-45.0, 20.0, -15.0, Vec3::new(-12.0, 6.0, -90.0)),
            (10.0, 35.0, 25.0, Vec3::new(3.0, 2.0, -35.0)),
        ] {
            let truth = pose(yaw, pitch, roll, t);
            let points = project_mean_face(&truth, &camera);
            let options = FitOptions {
                prior_strength: 0.0,
                ..Default::default()
            };
            let fit = fit_pose(&points, &camera, None, &options).unwrap();
            let err = angle_between(&fit.pose.rotation, &truth.rotation);
            assert!(err < 0.5, "yaw {yaw} pitch {pitch} roll {roll}: {err}°");
            assert!(
                fit.pose.translation.distance(t) < 0.5,
                "{:?} vs {t:?}",
                fit.pose.translation
            );
            assert!(fit.rms_px < 0.05, "rms {}", fit.rms_px);
        }
    }

    #[test]
    fn stays_within_half_a_degree_with_pixel_noise_and_an_outlier() {
        let camera = Camera::assumed(640, 480, 63.0);
        let truth = pose(25.0, 10.0, -8.0, Vec3::new(4.0, 1.0, -45.0));
        let mut points = project_mean_face(&truth, &camera);
        jitter(&mut points, 12345, 1.0); // ±0.5 px
        points[8] += Vec2::new(40.0, 25.0); // a wild chin point
        let options = FitOptions {
            prior_strength: 0.0,
            ..Default::default()
        };
        let fit = fit_pose(&points, &camera, None, &options).unwrap();
        let err = angle_between(&fit.pose.rotation, &truth.rotation);
        assert!(err < 0.5, "{err}°");
    }

    #[test]
    fn stops_early_on_a_real_looking_face_without_losing_accuracy() {
        // Someone who is not the mean face (wider mouth, raised brows, ±2 px noise), with a
        // network rotation 4° off: the Huber weights and the prior are both active, which is
        // when a cost-only stopping rule ran all 20 iterations.
        let camera = Camera::assumed(640, 480, 63.0);
        let truth = pose(-20.0, 8.0, 4.0, Vec3::new(-5.0, 2.0, -55.0));
        let mut points = project_mean_face(&truth, &camera);
        let iod = points[36].distance(points[45]);
        let mouth_centre = (points[48] + points[54]) / 2.0;
        for p in &mut points[48..68] {
            *p = mouth_centre + (*p - mouth_centre) * 1.15;
        }
        for p in &mut points[17..27] {
            p.y -= 0.06 * iod;
        }
        jitter(&mut points, 777, 4.0);
        let network = pose(-16.0, 8.0, 4.0, Vec3::ZERO).rotation;
        let quick = fit_pose(&points, &camera, Some(network), &FitOptions::default()).unwrap();
        let tight_options = FitOptions {
            step_tolerance: 0.0,
            max_iterations: 200,
            ..Default::default()
        };
        let tight = fit_pose(&points, &camera, Some(network), &tight_options).unwrap();
        assert!(quick.iterations <= 10, "{} iterations", quick.iterations);
        assert!(tight.iterations > quick.iterations, "{}", tight.iterations);
        let apart = angle_between(&quick.pose.rotation, &tight.pose.rotation);
        assert!(apart < 0.02, "{apart}° from the tight solution");
        let moved = quick.pose.translation.distance(tight.pose.translation);
        assert!(moved < 0.01 * tight.pose.translation.length(), "{moved}");
        // and both are near the truth the points came from
        assert!(angle_between(&quick.pose.rotation, &truth.rotation) < 3.0);
    }

    #[test]
    fn a_warm_start_from_the_last_frame_takes_a_step_or_two() {
        let camera = Camera::assumed(640, 480, 63.0);
        let network = pose(12.0, -6.0, 3.0, Vec3::ZERO).rotation;
        let first = project_mean_face(&pose(10.0, -5.0, 2.0, Vec3::new(3.0, 1.0, -50.0)), &camera);
        let previous = fit_pose(&first, &camera, Some(network), &FitOptions::default()).unwrap();
        // the head has turned by 0.3° since
        let now = project_mean_face(&pose(10.3, -5.0, 2.0, Vec3::new(3.05, 1.0, -50.0)), &camera);
        let options = FitOptions::default();
        let cold = fit_pose(&now, &camera, Some(network), &options).unwrap();
        let warm = fit_pose_from(&now, &camera, Some(network), previous.pose, &options).unwrap();
        assert!(warm.iterations <= 3, "{} iterations", warm.iterations);
        assert!(cold.iterations > warm.iterations, "{}", cold.iterations);
        let apart = angle_between(&warm.pose.rotation, &cold.pose.rotation);
        assert!(apart < 0.02, "{apart}°");
        assert!(warm.pose.translation.distance(cold.pose.translation) < 0.05);
        // a non-finite start is refused, not solved from
        let broken = HeadPose {
            translation: Vec3::NAN,
            ..previous.pose
        };
        assert!(fit_pose_from(&now, &camera, Some(network), broken, &options).is_none());
    }

    #[test]
    fn network_rotation_pulls_the_fit_in_proportion_to_its_strength() {
        let camera = Camera::assumed(640, 480, 63.0);
        let truth = pose(20.0, 0.0, 0.0, Vec3::new(0.0, 0.0, -50.0));
        let points = project_mean_face(&truth, &camera);
        let network = pose(30.0, 0.0, 0.0, Vec3::ZERO).rotation;
        let weak = fit_pose(
            &points,
            &camera,
            Some(network),
            &FitOptions {
                prior_strength: 0.05,
                ..Default::default()
            },
        );
        let strong = fit_pose(
            &points,
            &camera,
            Some(network),
            &FitOptions {
                prior_strength: 5.0,
                ..Default::default()
            },
        );
        let (weak, strong) = (weak.unwrap(), strong.unwrap());
        let weak_err = angle_between(&weak.pose.rotation, &truth.rotation);
        let strong_err = angle_between(&strong.pose.rotation, &truth.rotation);
        assert!(
            weak_err < 1.0,
            "weak prior stays with the landmarks: {weak_err}"
        );
        assert!(
            strong_err > weak_err && strong_err < 10.0,
            "strong prior moves towards the network: {strong_err}"
        );
    }

    #[test]
    fn off_centre_faces_get_the_ray_turn_added() {
        let camera = Camera::assumed(640, 480, 63.0);
        // A frontal face (identity along its ray) at the image's right edge is, in camera space,
        // turned towards the camera by the ray's angle: the fit of its projection agrees.
        let at = Vec2::new(600.0, 240.0);
        let along_ray = Mat3::IDENTITY;
        let in_camera = rotation_in_camera(along_ray, at, &camera);
        let angle = ((600.0 - 320.0) / camera.focal).atan().to_degrees();
        assert!((log_so3(&in_camera).length().to_degrees() - angle).abs() < 0.01);
        assert!(
            rotation_in_camera(along_ray, camera.center, &camera).abs_diff_eq(Mat3::IDENTITY, 1e-6)
        );
    }

    #[test]
    fn rejects_bad_input() {
        let camera = Camera::assumed(640, 480, 63.0);
        assert!(fit_pose(&[Vec2::ZERO; 10], &camera, None, &FitOptions::default()).is_none());
        let mut points = vec![Vec2::new(1.0, 1.0); 68];
        points[3] = Vec2::new(f32::NAN, 0.0);
        assert!(fit_pose(&points, &camera, None, &FitOptions::default()).is_none());
    }

    #[test]
    fn a_closed_eye_the_network_missed_is_refined() {
        let camera = Camera::assumed(640, 480, 63.0);
        let mut points =
            project_mean_face(&pose(0.0, 0.0, 0.0, Vec3::new(0.0, 0.0, -40.0)), &camera);
        let ear_open = eye_aspect_ratio(&points, 42..48);
        assert!(ear_open > 0.15, "mean face eyes are open: {ear_open}");
        // Close the left eye: the lower lid points meet the upper ones.
        points[47] = points[43];
        points[46] = points[44];
        let mut blend = vec![0.0; 51];
        refine_blendshapes(&points, &mut blend);
        let left = crate::vision::BLENDSHAPE_NAMES
            .iter()
            .position(|n| *n == "eyeBlinkLeft")
            .unwrap();
        let right = crate::vision::BLENDSHAPE_NAMES
            .iter()
            .position(|n| *n == "eyeBlinkRight")
            .unwrap();
        assert!(
            (blend[left] - 0.5).abs() < 1e-6,
            "mean of network 0 and geometry 1: {}",
            blend[left]
        );
        assert!(blend[right] < 0.25);
    }
}
