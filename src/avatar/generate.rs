//! The project's default avatars: stylised heads built from parametric parts (head, eyes with
//! lids and lashes, brows, nose, ears, lips, mouth interior, teeth, tongue, hair, neck and
//! shoulders), carrying all 52 ARKit morph targets by name. Deterministic: the same code writes
//! the same bytes, so `assets/avatars/*.glb` can be checked against a fresh build.
//!
//! Every morph target is *the same parametric build with one expression weight at 1, minus the
//! neutral build*; so each part only has to say how an expression changes its shape.

use glam::{Mat3, Vec3};
use serde_json::json;

use super::glb::{srgb_to_linear, GlbBuilder};
use crate::retarget::ARKIT_52;

/// What makes one default character look like itself.
#[derive(Clone, Debug)]
pub struct Style {
    pub name: &'static str,
    /// Head ellipsoid radii (m).
    pub head: Vec3,
    /// How much the lower face narrows towards the chin (0 = egg, 0.4 = pointed).
    pub jaw_taper: f32,
    pub eye_radius: f32,
    pub eye_spacing: f32,
    pub mouth_width: f32,
    pub nose_size: f32,
    pub brow_thickness: f32,
    /// Hairline: polar angle of the hair edge at the front and at the back (degrees from the top).
    pub hair_front_deg: f32,
    pub hair_back_deg: f32,
    pub skin: [f32; 3],
    pub hair: [f32; 3],
    pub iris: [f32; 3],
    pub lips: [f32; 3],
    pub shirt: [f32; 3],
}

/// The three shipped characters.
pub fn styles() -> Vec<Style> {
    vec![
        Style {
            name: "mika",
            head: Vec3::new(0.080, 0.104, 0.092),
            jaw_taper: 0.30,
            eye_radius: 0.0135,
            eye_spacing: 0.031,
            mouth_width: 0.040,
            nose_size: 0.8,
            brow_thickness: 0.0032,
            hair_front_deg: 58.0,
            hair_back_deg: 125.0,
            skin: [0.98, 0.80, 0.70],
            hair: [0.30, 0.18, 0.12],
            iris: [0.25, 0.45, 0.75],
            lips: [0.86, 0.45, 0.45],
            shirt: [0.30, 0.55, 0.85],
        },
        Style {
            name: "bram",
            head: Vec3::new(0.086, 0.112, 0.096),
            jaw_taper: 0.12,
            eye_radius: 0.0115,
            eye_spacing: 0.033,
            mouth_width: 0.048,
            nose_size: 1.15,
            brow_thickness: 0.0050,
            hair_front_deg: 45.0,
            hair_back_deg: 100.0,
            skin: [0.62, 0.42, 0.30],
            hair: [0.08, 0.07, 0.07],
            iris: [0.35, 0.22, 0.12],
            lips: [0.55, 0.30, 0.27],
            shirt: [0.35, 0.62, 0.35],
        },
        Style {
            name: "juno",
            head: Vec3::new(0.077, 0.118, 0.094),
            jaw_taper: 0.24,
            eye_radius: 0.0125,
            eye_spacing: 0.030,
            mouth_width: 0.042,
            nose_size: 0.95,
            brow_thickness: 0.0036,
            hair_front_deg: 50.0,
            hair_back_deg: 165.0,
            skin: [0.96, 0.85, 0.78],
            hair: [0.80, 0.36, 0.14],
            iris: [0.30, 0.60, 0.35],
            lips: [0.80, 0.38, 0.40],
            shirt: [0.55, 0.30, 0.60],
        },
    ]
}

/// Materials, in glTF material order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mat {
    Skin,
    EyeWhite,
    Iris,
    Dark,
    Lips,
    MouthInside,
    Teeth,
    Tongue,
    Hair,
    Shirt,
}

const MATERIALS: [Mat; 10] = [
    Mat::Skin,
    Mat::EyeWhite,
    Mat::Iris,
    Mat::Dark,
    Mat::Lips,
    Mat::MouthInside,
    Mat::Teeth,
    Mat::Tongue,
    Mat::Hair,
    Mat::Shirt,
];

/// Expression weights by ARKit name (0 unless set).
#[derive(Clone)]
struct Weights([f32; 52]);

impl Weights {
    fn neutral() -> Weights {
        Weights([0.0; 52])
    }
    fn one(index: usize) -> Weights {
        let mut w = [0.0; 52];
        w[index] = 1.0;
        Weights(w)
    }
    fn get(&self, name: &str) -> f32 {
        ARKIT_52
            .iter()
            .position(|n| *n == name)
            .map_or(0.0, |i| self.0[i])
    }
    /// `name` with "Left"/"Right" appended by side (+1 = subject's left = +x).
    fn side(&self, name: &str, side: f32) -> f32 {
        self.get(&format!(
            "{name}{}",
            if side > 0.0 { "Left" } else { "Right" }
        ))
    }
}

/// One primitive: a grid of vertices and its triangles.
struct Part {
    material: Mat,
    positions: Vec<Vec3>,
    indices: Vec<u32>,
    /// Which way is "out" at a point (orients the smooth normals).
    outward: Outward,
}

#[derive(Clone, Copy)]
enum Outward {
    From(Vec3),
    Toward(Vec3),
}

/// A (columns × rows) grid over u, v in [0, 1]; `wrap` joins the last column to the first.
fn grid(
    material: Mat,
    outward: Outward,
    nu: usize,
    nv: usize,
    wrap: bool,
    f: impl Fn(f32, f32) -> Vec3,
) -> Part {
    let cols = if wrap { nu } else { nu + 1 };
    let mut positions = Vec::with_capacity(cols * (nv + 1));
    for j in 0..=nv {
        for i in 0..cols {
            positions.push(f(i as f32 / nu as f32, j as f32 / nv as f32));
        }
    }
    let mut indices = Vec::with_capacity(nu * nv * 6);
    for j in 0..nv {
        for i in 0..nu {
            let i1 = if wrap { (i + 1) % nu } else { i + 1 };
            let a = (j * cols + i) as u32;
            let b = (j * cols + i1) as u32;
            let c = ((j + 1) * cols + i) as u32;
            let d = ((j + 1) * cols + i1) as u32;
            indices.extend_from_slice(&[a, c, b, b, c, d]);
        }
    }
    Part {
        material,
        positions,
        indices,
        outward,
    }
}

/// A filled ellipse-like disc: centre vertex + rim, as a fan.
fn disc(material: Mat, normal: Vec3, n: usize, center: Vec3, rim: impl Fn(f32) -> Vec3) -> Part {
    let mut positions = vec![center];
    positions.extend((0..n).map(|i| rim(i as f32 / n as f32)));
    let mut indices = Vec::with_capacity(3 * n);
    for i in 0..n {
        indices.extend_from_slice(&[0, 1 + i as u32, 1 + ((i + 1) % n) as u32]);
    }
    Part {
        material,
        positions,
        indices,
        outward: Outward::Toward(normal),
    }
}

fn ellipsoid(material: Mat, center: Vec3, radii: Vec3, nu: usize, nv: usize) -> Part {
    grid(material, Outward::From(center), nu, nv, true, |u, v| {
        let (phi, theta) = (u * std::f32::consts::TAU, v * std::f32::consts::PI);
        center
            + radii
                * Vec3::new(
                    theta.sin() * phi.sin(),
                    theta.cos(),
                    theta.sin() * phi.cos(),
                )
    })
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

fn gauss(p: Vec3, c: Vec3, sigma: f32) -> f32 {
    (-(p - c).length_squared() / (2.0 * sigma * sigma)).exp()
}

/// Face layout derived from the style (Head-node coordinates: y up, the face looks along +z).
struct Face<'a> {
    s: &'a Style,
    center: Vec3,
    eye_y: f32,
    brow_y: f32,
    nose_y: f32,
    mouth_y: f32,
}

impl<'a> Face<'a> {
    fn new(s: &'a Style) -> Face<'a> {
        let center = Vec3::new(0.0, 0.11, 0.0);
        Face {
            s,
            center,
            eye_y: center.y + 0.010,
            brow_y: center.y + 0.031,
            nose_y: center.y - 0.020,
            mouth_y: center.y - 0.052,
        }
    }

    /// Half width of the head at height y (the lower face narrows).
    fn taper(&self, y_rel: f32) -> f32 {
        let t = (-y_rel / self.s.head.y).max(0.0);
        1.0 - self.s.jaw_taper * t * t
    }

    /// Neutral head surface point for longitude u and latitude v.
    fn head_point(&self, u: f32, v: f32) -> Vec3 {
        let (phi, theta) = (u * std::f32::consts::TAU, v * std::f32::consts::PI);
        let r = self.s.head;
        let y = r.y * theta.cos();
        let mut p = Vec3::new(
            r.x * theta.sin() * phi.sin() * self.taper(y),
            y,
            r.z * theta.sin() * phi.cos(),
        );
        // a slightly flatter face and a rounder back of the head
        if p.z > 0.0 {
            p.z *= 0.96;
        }
        self.center + p
    }

    /// z of the neutral face surface at (x, y) (front half).
    fn surface_z(&self, x: f32, y: f32) -> f32 {
        let r = self.s.head;
        let y_rel = y - self.center.y;
        let rx = r.x * self.taper(y_rel);
        let q = 1.0 - (x / rx).powi(2) - (y_rel / r.y).powi(2);
        self.center.z + 0.96 * r.z * q.max(0.0).sqrt()
    }

    fn on_face(&self, x: f32, y: f32, lift: f32) -> Vec3 {
        Vec3::new(x, y, self.surface_z(x, y) + lift)
    }

    /// Jaw motion of a point: rotation about the jaw hinge and sideways / forward shifts.
    fn jaw(&self, p: Vec3, w: &Weights, follow: f32) -> Vec3 {
        if follow <= 0.0 {
            return p;
        }
        let pivot = Vec3::new(0.0, self.mouth_y + 0.012, self.center.z - 0.035);
        let angle = 18f32.to_radians() * w.get("jawOpen");
        let rotated = pivot + Mat3::from_rotation_x(angle) * (p - pivot);
        let shift = Vec3::new(
            0.010 * (w.get("jawLeft") - w.get("jawRight")),
            0.0,
            0.008 * w.get("jawForward"),
        );
        p + (rotated + shift - p) * follow
    }

    /// How much of a skin point belongs to the jaw (below the mouth, at the front).
    fn jaw_follow(&self, p: Vec3) -> f32 {
        smoothstep(self.mouth_y + 0.002, self.mouth_y - 0.016, p.y)
            * smoothstep(self.center.z - 0.04, self.center.z + 0.02, p.z)
    }

    /// Expression displacement of the skin.
    fn skin(&self, p: Vec3, w: &Weights) -> Vec3 {
        let mut q = self.jaw(p, w, self.jaw_follow(p));
        for side in [1.0f32, -1.0] {
            let cheek = Vec3::new(
                side * 0.047,
                self.mouth_y + 0.022,
                self.surface_z(side * 0.047, self.mouth_y + 0.022),
            );
            let g = gauss(p, cheek, 0.016);
            q += (p - self.center).normalize_or_zero() * 0.009 * w.get("cheekPuff") * g;
            q.y += 0.004 * w.side("cheekSquint", side) * g;
            let corner = self.on_face(side * self.s.mouth_width / 2.0, self.mouth_y, 0.0);
            let gc = gauss(p, corner, 0.010);
            q += gc
                * (Vec3::new(side * 0.005, 0.009, 0.002) * w.side("mouthSmile", side)
                    + Vec3::new(0.0, -0.005, 0.0) * w.side("mouthFrown", side)
                    + Vec3::new(side * 0.005, -0.002, 0.0) * w.side("mouthStretch", side)
                    + Vec3::new(0.0, 0.0, -0.003) * w.side("mouthDimple", side));
            let sneer = self.on_face(side * 0.012, self.nose_y, 0.0);
            q.y += 0.004 * w.side("noseSneer", side) * gauss(p, sneer, 0.008);
        }
        let mouth = self.on_face(0.0, self.mouth_y, 0.0);
        q.x += 0.008 * (w.get("mouthLeft") - w.get("mouthRight")) * gauss(p, mouth, 0.014);
        q
    }

    /// The mouth opening's outline at angle t (0 = subject's left corner, π/2 = top).
    fn mouth_outline(&self, t: f32, w: &Weights) -> Vec3 {
        let half = self.s.mouth_width / 2.0;
        let (c, s) = (t.cos(), t.sin());
        let side = if c >= 0.0 { 1.0 } else { -1.0 };
        let dx = 0.007 * w.side("mouthSmile", side) + 0.007 * w.side("mouthStretch", side)
            - 0.013 * w.get("mouthPucker")
            - 0.010 * w.get("mouthFunnel")
            - 0.002 * w.side("mouthPress", side);
        let dy = 0.010 * w.side("mouthSmile", side)
            - 0.005 * w.side("mouthFrown", side)
            - 0.002 * w.side("mouthStretch", side);
        let open_up = 0.0006
            + 0.004 * 0.5 * (w.get("mouthUpperUpLeft") + w.get("mouthUpperUpRight"))
            + 0.004 * w.get("mouthFunnel")
            - 0.0004 * w.get("mouthShrugUpper");
        let jaw_drop = 0.024 * w.get("jawOpen") * (1.0 - 0.95 * w.get("mouthClose"));
        let open_down = 0.0006
            + jaw_drop
            + 0.004 * 0.5 * (w.get("mouthLowerDownLeft") + w.get("mouthLowerDownRight"))
            + 0.005 * w.get("mouthFunnel")
            - 0.0004 * w.get("mouthShrugLower");
        let x = c * (half + dx) + 0.008 * (w.get("mouthLeft") - w.get("mouthRight"));
        let y = self.mouth_y
            + if s >= 0.0 { open_up } else { -open_down } * s.abs().powf(0.8)
            + dy * c * c
            + 0.002 * (w.get("mouthShrugUpper") + w.get("mouthShrugLower"));
        let side_x = 0.010 * (w.get("jawLeft") - w.get("jawRight")) * smoothstep(0.0, -1.0, s);
        let forward = 0.008 * w.get("mouthPucker")
            + 0.004 * w.get("mouthFunnel")
            + 0.006 * w.get("jawForward") * smoothstep(0.0, -1.0, s);
        self.on_face(x + side_x, y, 0.0006 + forward)
    }

    fn parts(&self, w: &Weights) -> Vec<Part> {
        let mut parts = Vec::new();
        let s = self.s;
        // skin of the head
        let mut head = grid(
            Mat::Skin,
            Outward::From(self.center),
            72,
            48,
            true,
            |u, v| self.head_point(u, v),
        );
        for p in &mut head.positions {
            *p = self.skin(*p, w);
        }
        parts.push(head);
        // nose
        let nose_c = Vec3::new(0.0, self.nose_y, self.surface_z(0.0, self.nose_y) - 0.003);
        let mut nose = ellipsoid(
            Mat::Skin,
            nose_c,
            Vec3::new(0.010, 0.016, 0.013) * s.nose_size,
            20,
            14,
        );
        for p in &mut nose.positions {
            for side in [1.0f32, -1.0] {
                let k = smoothstep(0.0, 0.008, side * p.x);
                p.y += 0.003 * w.side("noseSneer", side) * k;
            }
        }
        parts.push(nose);
        // ears
        for side in [1.0f32, -1.0] {
            let ear_x = side * s.head.x * self.taper(-0.005) * 0.97;
            parts.push(ellipsoid(
                Mat::Skin,
                self.center + Vec3::new(ear_x, -0.006, -0.012),
                Vec3::new(0.009, 0.022, 0.013),
                14,
                10,
            ));
        }
        self.eyes(w, &mut parts);
        self.brows(w, &mut parts);
        self.mouth(w, &mut parts);
        // hair cap: a shell around the head, its edge lower at the back
        let (front, back) = (s.hair_front_deg.to_radians(), s.hair_back_deg.to_radians());
        parts.push(grid(
            Mat::Hair,
            Outward::From(self.center),
            64,
            20,
            true,
            |u, v| {
                let phi = u * std::f32::consts::TAU;
                let edge = front + (back - front) * (1.0 - phi.cos()) / 2.0;
                let theta = v * edge;
                let r = s.head * Vec3::new(1.07, 1.06, 1.07);
                // long hair falls outward below the ears
                let fall = 1.0 + 0.25 * smoothstep(1.6, 2.8, theta);
                self.center
                    + Vec3::new(0.0, 0.004, -0.004)
                    + r * Vec3::new(
                        theta.sin() * phi.sin() * fall,
                        theta.cos(),
                        theta.sin() * phi.cos() * fall,
                    )
            },
        ));
        parts
    }

    fn eyes(&self, w: &Weights, parts: &mut Vec<Part>) {
        let s = self.s;
        let er = s.eye_radius;
        for side in [1.0f32, -1.0] {
            let x = side * s.eye_spacing;
            let e = Vec3::new(x, self.eye_y, self.surface_z(x, self.eye_y) - 0.55 * er);
            parts.push(ellipsoid(Mat::EyeWhite, e, Vec3::splat(er), 24, 16));
            // gaze: look in = towards the nose
            let look = Vec3::new(
                0.35 * (w.side("eyeLookOut", side) - w.side("eyeLookIn", side)) * side,
                0.35 * (w.side("eyeLookUp", side) - w.side("eyeLookDown", side)),
                1.0,
            )
            .normalize();
            let right = Vec3::Y.cross(look).normalize();
            let up = look.cross(right);
            for (radius, lift, mat) in
                [(0.60 * er, 1.004, Mat::Iris), (0.27 * er, 1.010, Mat::Dark)]
            {
                let center = e + look * er * lift;
                parts.push(disc(mat, look, 24, center + look * 0.0002, |t| {
                    let a = t * std::f32::consts::TAU;
                    let rim = right * a.cos() + up * a.sin();
                    // the rim sits on the eyeball
                    let d = (er * er - radius * radius).max(0.0).sqrt() * (lift - 0.002);
                    e + look * d + rim * radius
                }));
            }
            // upper lid: a shell over the eye whose edge comes down to blink
            let upper_edge = (68.0 + 104.0 * w.side("eyeBlink", side)
                - 17.0 * w.side("eyeWide", side)
                + 10.0 * w.side("eyeSquint", side)
                + 14.0 * w.side("eyeLookDown", side)
                - 8.0 * w.side("eyeLookUp", side))
            .to_radians();
            let lid = |a: f32, b: f32, r: f32, top: bool, edge: f32| {
                let theta = a * edge;
                let phi = (b - 0.5) * 200f32.to_radians();
                let y = if top { theta.cos() } else { -theta.cos() };
                e + r * Vec3::new(theta.sin() * phi.sin(), y, theta.sin() * phi.cos())
            };
            parts.push(grid(Mat::Skin, Outward::From(e), 20, 10, false, |b, a| {
                lid(a, b, er * 1.07, true, upper_edge)
            }));
            // lashes along the upper lid's edge
            parts.push(grid(Mat::Dark, Outward::From(e), 20, 2, false, |b, a| {
                lid(0.94 + 0.06 * a, b, er * 1.085, true, upper_edge)
            }));
            let lower_edge = (48.0
                + 14.0 * w.side("eyeBlink", side)
                + 26.0 * w.side("eyeSquint", side)
                + 12.0 * w.side("cheekSquint", side))
            .to_radians();
            parts.push(grid(Mat::Skin, Outward::From(e), 20, 8, false, |b, a| {
                lid(a, b, er * 1.06, false, lower_edge)
            }));
        }
    }

    fn brows(&self, w: &Weights, parts: &mut Vec<Part>) {
        let s = self.s;
        for side in [1.0f32, -1.0] {
            parts.push(grid(
                Mat::Hair,
                Outward::Toward(Vec3::Z),
                16,
                1,
                false,
                |b, a| {
                    let x = side * (0.011 + 0.040 * b);
                    let y = self.brow_y
                        + 0.004 * (std::f32::consts::PI * b).sin()
                        + 0.007 * w.get("browInnerUp") * (1.0 - b).powf(1.5)
                        - w.side("browDown", side) * (0.004 + 0.003 * (1.0 - b))
                        + 0.007 * w.side("browOuterUp", side) * b.powf(1.5);
                    let t = s.brow_thickness * (1.0 - 0.45 * b);
                    self.on_face(x, y + (a - 0.5) * t, 0.0018)
                },
            ));
        }
    }

    fn mouth(&self, w: &Weights, parts: &mut Vec<Part>) {
        let tau = std::f32::consts::TAU;
        let n = 40;
        let outline = |t: f32| self.mouth_outline(t, w);
        let top = outline(tau / 4.0);
        let bottom = outline(3.0 * tau / 4.0);
        let center = (top + bottom) / 2.0 - Vec3::new(0.0, 0.0, 0.0004);
        parts.push(disc(Mat::MouthInside, Vec3::Z, n, center, |t| {
            outline(t * tau)
        }));
        // teeth: bands under the upper lip and over the lower lip, as tall as the opening allows
        let open = (top.y - bottom.y).max(0.0);
        let half = 0.7 * self.s.mouth_width / 2.0;
        let band = |upper: bool, height: f32| {
            grid(
                Mat::Teeth,
                Outward::Toward(Vec3::Z),
                14,
                1,
                false,
                move |u, v| {
                    let x = (u - 0.5) * 2.0 * half;
                    let k = 1.0 - (x / (self.s.mouth_width / 2.0)).powi(2) * 0.6;
                    let t = if upper { tau / 4.0 } else { 3.0 * tau / 4.0 };
                    let edge = self.mouth_outline(t, w);
                    let y_edge = self.mouth_y + (edge.y - self.mouth_y) * k;
                    let y = if upper {
                        y_edge - 0.0004 - v * height
                    } else {
                        y_edge + 0.0004 + v * height
                    };
                    Vec3::new(x + edge.x, y, edge.z + 0.0004)
                },
            )
        };
        parts.push(band(true, (0.42 * open).min(0.0055)));
        parts.push(band(false, (0.28 * open).min(0.0040)));
        // tongue: low in the mouth; tongueOut brings it forward and down
        let out = w.get("tongueOut");
        let tc = Vec3::new(
            bottom.x,
            bottom.y + 0.25 * open - 0.008 * out,
            bottom.z + 0.0006 + 0.016 * out,
        );
        let (rx, ry) = (0.011, 0.22 * open + 0.0002 + 0.008 * out);
        parts.push(disc(Mat::Tongue, Vec3::Z, 24, tc, |t| {
            let a = t * tau;
            tc + Vec3::new(rx * a.cos(), ry * a.sin(), 0.0)
        }));
        // lips: a ring around the opening, bulging forward in the middle
        let (rw, uw) = (w.get("mouthRollUpper"), w.get("mouthRollLower"));
        // mouthClose on its own presses the lips together and forward
        let press =
            0.5 * (w.get("mouthPressLeft") + w.get("mouthPressRight")) + 0.3 * w.get("mouthClose");
        let pout = 0.008 * w.get("mouthPucker")
            + 0.004 * w.get("mouthFunnel")
            + 0.0015 * w.get("mouthClose");
        parts.push(grid(
            Mat::Lips,
            Outward::Toward(Vec3::Z),
            n,
            2,
            true,
            |u, v| {
                let t = u * tau;
                let p = self.mouth_outline(t, w);
                let upper = t.sin() >= 0.0;
                let thick = if upper {
                    0.0055 * (1.0 - 0.8 * rw)
                } else {
                    0.0065 * (1.0 - 0.8 * uw)
                } * (1.0 - 0.4 * press);
                let dir = Vec3::new(0.35 * t.cos(), t.sin(), 0.0).normalize_or_zero();
                let bulge = (std::f32::consts::PI * v).sin() * (0.0025 + pout);
                p + dir * thick * v + Vec3::new(0.0, 0.0, 0.0008 + bulge - 0.0006 * v)
            },
        ));
    }
}

/// Neck and shoulders (not part of the head: they stay still while the head turns).
fn body(s: &Style) -> Vec<Part> {
    let neck = grid(
        Mat::Skin,
        Outward::From(Vec3::new(0.0, 1.38, -0.01)),
        24,
        4,
        true,
        |u, v| {
            let phi = u * std::f32::consts::TAU;
            Vec3::new(
                0.050 * phi.sin(),
                1.33 + 0.15 * v,
                -0.012 + 0.045 * phi.cos(),
            )
        },
    );
    let mut shoulders = ellipsoid(
        Mat::Shirt,
        Vec3::new(0.0, 1.30, -0.015),
        Vec3::new(0.19, 0.075, 0.10),
        40,
        20,
    );
    let _ = s;
    for p in &mut shoulders.positions {
        // flat bottom: the bust ends at the frame's edge
        p.y = p.y.max(1.26);
    }
    vec![neck, shoulders]
}

/// Winds every triangle counter-clockwise seen from outside (glTF's front face), using the
/// part's outward hint.
fn orient(part: &mut Part) {
    for tri in part.indices.chunks_exact_mut(3) {
        let [a, b, c] = [tri[0] as usize, tri[1] as usize, tri[2] as usize];
        let (pa, pb, pc) = (part.positions[a], part.positions[b], part.positions[c]);
        let n = (pb - pa).cross(pc - pa);
        let hint = match part.outward {
            Outward::From(center) => (pa + pb + pc) / 3.0 - center,
            Outward::Toward(d) => d,
        };
        if n.dot(hint) < 0.0 {
            tri.swap(1, 2);
        }
    }
}

/// Smooth vertex normals from the triangles, oriented by the part's outward hint.
fn normals(part: &Part) -> Vec<[f32; 3]> {
    let mut acc = vec![Vec3::ZERO; part.positions.len()];
    for tri in part.indices.chunks_exact(3) {
        let [a, b, c] = [tri[0] as usize, tri[1] as usize, tri[2] as usize];
        let n =
            (part.positions[b] - part.positions[a]).cross(part.positions[c] - part.positions[a]);
        for i in [a, b, c] {
            acc[i] += n;
        }
    }
    acc.iter()
        .zip(&part.positions)
        .map(|(n, p)| {
            let hint = match part.outward {
                Outward::From(c) => *p - c,
                Outward::Toward(d) => d,
            };
            let n = n.normalize_or(hint.normalize_or(Vec3::Z));
            let n = if n.dot(hint) < 0.0 { -n } else { n };
            n.to_array()
        })
        .collect()
}

fn material_json(s: &Style, m: Mat) -> serde_json::Value {
    let (rgb, rough) = match m {
        Mat::Skin => (s.skin, 0.65),
        Mat::EyeWhite => ([0.95, 0.95, 0.93], 0.3),
        Mat::Iris => (s.iris, 0.3),
        Mat::Dark => ([0.05, 0.04, 0.04], 0.5),
        Mat::Lips => (s.lips, 0.5),
        Mat::MouthInside => ([0.28, 0.08, 0.09], 0.8),
        Mat::Teeth => ([0.96, 0.95, 0.90], 0.35),
        Mat::Tongue => ([0.85, 0.42, 0.45], 0.6),
        Mat::Hair => (s.hair, 0.75),
        Mat::Shirt => (s.shirt, 0.8),
    };
    let lin: Vec<f32> = rgb
        .iter()
        .map(|c| srgb_to_linear(*c))
        .chain([1.0])
        .collect();
    json!({"name": format!("{m:?}"), "doubleSided": true,
           "pbrMetallicRoughness": {"baseColorFactor": lin, "metallicFactor": 0.0, "roughnessFactor": rough}})
}

fn round_delta(d: Vec3) -> [f32; 3] {
    // exact zeros keep the sparse targets small; sub-micrometre motion is noise
    let f = |v: f32| if v.abs() < 1e-7 { 0.0 } else { v };
    [f(d.x), f(d.y), f(d.z)]
}

/// One default avatar as .glb bytes: a `Body` mesh and a `Head` node whose mesh carries the 52
/// ARKit morph targets (names in `mesh.extras.targetNames`).
pub fn build_glb(style: &Style) -> Vec<u8> {
    build(style).0.to_glb()
}

/// The avatar document before it is written, and the index of its `Head` node (recorded takes
/// add an animation to it).
pub fn build(style: &Style) -> (GlbBuilder, usize) {
    let face = Face::new(style);
    let mut neutral = face.parts(&Weights::neutral());
    neutral.iter_mut().for_each(orient);
    let posed: Vec<Vec<Part>> = (0..ARKIT_52.len())
        .map(|k| face.parts(&Weights::one(k)))
        .collect();
    let mut b = GlbBuilder::new();
    b.materials = MATERIALS.iter().map(|m| material_json(style, *m)).collect();
    let mat_index = |m: Mat| MATERIALS.iter().position(|x| *x == m).expect("listed");
    let mut head_prims = Vec::new();
    for (i, part) in neutral.iter().enumerate() {
        let pos: Vec<[f32; 3]> = part.positions.iter().map(|p| p.to_array()).collect();
        let p = b.vec3(&pos, true);
        let n = b.vec3(&normals(part), false);
        let idx = b.indices(&part.indices);
        let targets: Vec<serde_json::Value> = posed
            .iter()
            .map(|parts| {
                let deltas: Vec<[f32; 3]> = parts[i]
                    .positions
                    .iter()
                    .zip(&part.positions)
                    .map(|(a, b)| round_delta(*a - *b))
                    .collect();
                json!({"POSITION": b.sparse_deltas(&deltas)})
            })
            .collect();
        head_prims.push(
            json!({"attributes": {"POSITION": p, "NORMAL": n}, "indices": idx,
                               "material": mat_index(part.material), "targets": targets}),
        );
    }
    b.meshes.push(
        json!({"name": "Head", "primitives": head_prims, "weights": vec![0.0; 52],
                         "extras": {"targetNames": ARKIT_52.to_vec()}}),
    );
    let mut body_prims = Vec::new();
    for mut part in body(style) {
        orient(&mut part);
        let pos: Vec<[f32; 3]> = part.positions.iter().map(|p| p.to_array()).collect();
        let p = b.vec3(&pos, true);
        let n = b.vec3(&normals(&part), false);
        let idx = b.indices(&part.indices);
        body_prims.push(
            json!({"attributes": {"POSITION": p, "NORMAL": n}, "indices": idx,
                               "material": mat_index(part.material)}),
        );
    }
    b.meshes
        .push(json!({"name": "Body", "primitives": body_prims}));
    let body_node = b.add_node(json!({"name": "Body", "mesh": 1}));
    let head_node = b.add_node(json!({"name": "Head", "mesh": 0, "translation": [0.0, 1.45, 0.0]}));
    let root = b.add_node(
        json!({"name": format!("polyface_{}", style.name), "children": [body_node, head_node]}),
    );
    b.scene_nodes.push(root);
    (b, head_node)
}

/// Writes every default avatar into `dir` as `<name>.glb`; returns the paths.
pub fn write_all(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    styles()
        .iter()
        .map(|s| {
            let path = dir.join(format!("{}.glb", s.name));
            std::fs::write(&path, build_glb(s))?;
            Ok(path)
        })
        .collect()
}
