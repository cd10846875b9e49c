//! The avatar data model: what the loader produces and the renderer consumes. Kept free of
//! the rest of the crate so the loader can be fuzzed on its own (see fuzz/).

use glam::Vec3;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AlphaMode {
    Opaque,
    Mask(f32),
    Blend,
}

/// One morph target of one primitive.
#[derive(Clone, Debug)]
pub struct Target {
    /// Index into [`Avatar::morph_names`].
    pub morph: usize,
    pub position_deltas: Vec<[f32; 3]>,
}

/// One draw: vertices, triangles, one material.
#[derive(Clone, Debug)]
pub struct Primitive {
    pub positions: Vec<[f32; 3]>,
    pub normals: Vec<[f32; 3]>,
    pub uvs: Vec<[f32; 2]>,
    /// How much each vertex follows the head (1 = head, 0 = body).
    pub head_weight: Vec<f32>,
    pub indices: Vec<u32>,
    /// Linear RGBA.
    pub base_color: [f32; 4],
    pub texture: Option<image::RgbaImage>,
    pub alpha: AlphaMode,
    pub targets: Vec<Target>,
}

/// A named expression (VRM presets such as `aa`, `blink`, `happy`, or custom ones) made of
/// weighted morph targets.
#[derive(Clone, Debug)]
pub struct Expression {
    pub name: String,
    pub binds: Vec<(usize, f32)>,
}

#[derive(Clone, Debug)]
pub struct Avatar {
    pub name: String,
    pub primitives: Vec<Primitive>,
    pub morph_names: Vec<String>,
    pub expressions: Vec<Expression>,
    /// The head (or neck) joint the head pose turns about, avatar space.
    pub head_pivot: Vec3,
    /// Whether a head node/bone was found (otherwise the whole avatar turns).
    pub has_head: bool,
    /// Axis-aligned bounds of the rest pose.
    pub bounds: (Vec3, Vec3),
    /// Bounds of the vertices that follow the head (what the stage frames).
    pub head_bounds: (Vec3, Vec3),
}

impl Avatar {
    /// Reads `.glb`, `.gltf` (with its side files) or `.vrm`.
    pub fn load(path: &std::path::Path) -> Result<Avatar, super::AvatarError> {
        super::load::load(path)
    }

    /// Parses avatar bytes (glb/vrm, or glTF JSON whose resources are data URIs or next to
    /// `base`).
    pub fn from_bytes(
        bytes: &[u8],
        base: Option<&std::path::Path>,
        name: &str,
    ) -> Result<Avatar, super::AvatarError> {
        super::load::from_bytes(bytes, base, name)
    }

    /// The names a retargeter can drive: expressions first (VRM), then morph targets.
    pub fn control_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.expressions.iter().map(|e| e.name.clone()).collect();
        for m in &self.morph_names {
            if !names.iter().any(|n| n == m) {
                names.push(m.clone());
            }
        }
        names
    }

    /// Morph weights (one per [`Avatar::morph_names`]) for named controls: an expression adds its
    /// binds, a morph name sets that morph. Unknown names are ignored; results clamp to [0, 1].
    pub fn morph_weights(&self, controls: &[(String, f32)]) -> Vec<f32> {
        let mut weights = vec![0f32; self.morph_names.len()];
        for (name, value) in controls {
            if let Some(e) = self.expressions.iter().find(|e| &e.name == name) {
                for &(morph, w) in &e.binds {
                    weights[morph] += value * w;
                }
            } else if let Some(i) = self.morph_names.iter().position(|m| m == name) {
                weights[i] += value;
            }
        }
        for w in &mut weights {
            *w = if w.is_finite() {
                w.clamp(0.0, 1.0)
            } else {
                0.0
            };
        }
        weights
    }

    pub fn vertex_count(&self) -> usize {
        self.primitives.iter().map(|p| p.positions.len()).sum()
    }
}
