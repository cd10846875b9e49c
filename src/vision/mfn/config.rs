//! The MFN file's configuration: one typed record (`mfn_config` in the metadata), read once and
//! checked before any tensor is loaded.

use serde::{Deserialize, Serialize};

/// The model file format this build reads (`format_version`).
pub const FORMAT_VERSION: &str = "3";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MfnConfig {
    /// Network input, width and height (the frame is letterboxed into it).
    pub input_size: [usize; 2],
    /// Stride of the detection map (and of the map the refinement samples).
    pub stride: usize,
    /// Stride of the face trunk the grid head samples.
    pub face_stride: usize,
    pub grid: GridConfig,
    pub refine: RefineConfig,
    /// The rotation correction fitted after training; `None` in a net fresh from training.
    pub pose_fit: Option<PoseFitConfig>,
    pub score_threshold: f32,
    pub nms_iou: f32,
}

/// The grid head: `size` × `size` samples `spacing` face sizes apart, projected on `rank`
/// values, read by a linear layer and a residual MLP of `mlp_hidden` units (0: none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridConfig {
    pub size: usize,
    pub spacing: f32,
    pub rank: usize,
    pub mlp_hidden: usize,
}

/// The landmark-indexed refinement: `stages` steps, each sampling `layer` at the landmarks and
/// projecting the samples on `rank` values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefineConfig {
    pub layer: String,
    pub rank: usize,
    pub stages: usize,
}

/// The pose fit's inputs besides the geometry and the head's features: products of the first
/// `shape_components` principal shape values, and cubic products of the first `cubic` of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoseFitConfig {
    pub shape_components: usize,
    pub cubic: usize,
}

impl MfnConfig {
    /// The first value out of range, as (field, problem).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let [width, height] = self.input_size;
        if !(16..=4096).contains(&width) || !(16..=4096).contains(&height) {
            return Err(("input_size", format!("{width}x{height} is out of range")));
        }
        for (field, stride) in [("stride", self.stride), ("face_stride", self.face_stride)] {
            if stride == 0 || width % stride != 0 || height % stride != 0 {
                return Err((field, format!("{stride} must divide the input size")));
            }
        }
        let g = &self.grid;
        if !(1..=7).contains(&g.size) || !(0.0..=1.0).contains(&g.spacing) {
            return Err((
                "grid",
                format!("size {} / spacing {} out of range", g.size, g.spacing),
            ));
        }
        if g.rank == 0 || g.rank > 4096 || g.mlp_hidden > 4096 {
            return Err((
                "grid",
                format!("rank {} / mlp_hidden {} out of range", g.rank, g.mlp_hidden),
            ));
        }
        let r = &self.refine;
        if !(1..=8).contains(&r.stages) || r.rank == 0 || r.rank > 4096 || r.layer.is_empty() {
            return Err((
                "refine",
                format!(
                    "layer {:?}, rank {}, {} stages: out of range",
                    r.layer, r.rank, r.stages
                ),
            ));
        }
        if let Some(p) = &self.pose_fit {
            if !(1..=64).contains(&p.shape_components) || p.cubic > p.shape_components {
                return Err((
                    "pose_fit",
                    format!(
                        "{} shape components, cubic {}: out of range",
                        p.shape_components, p.cubic
                    ),
                ));
            }
        }
        if !(0.0..1.0).contains(&self.score_threshold) || !(0.0..=1.0).contains(&self.nms_iou) {
            return Err((
                "score_threshold",
                format!(
                    "threshold {} / nms {} out of range",
                    self.score_threshold, self.nms_iou
                ),
            ));
        }
        Ok(())
    }
}
