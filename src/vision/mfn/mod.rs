//! The multi-face network (MFN): one pass over the letterboxed frame gives every face's box,
//! 68 landmarks, head rotation and blendshapes, so its cost does not grow with the number of
//! people (the design of Chaudhuri et al., CVPR 2019). It is the detector's backbone with a
//! stride-8 face trunk; each detected face reads a small grid of trunk features spread over its
//! box into a linear layer plus a small MLP (the grid head, [`head`]); stride-4 features sampled
//! at the 68 landmarks that head gives correct all its values (the refinement, two stages in the
//! shipped net), and the pose fit ([`pose_fit`]) corrects the rotation last. The file's
//! configuration is one typed record ([`MfnConfig`]); `training/mfn/MFN.md` documents the layout.

mod config;
mod dense;
mod head;
mod pose_fit;

use std::path::Path;

use candle_core::{Device, Tensor};
use glam::Vec2;

pub use config::{GridConfig, MfnConfig, PoseFitConfig, RefineConfig, FORMAT_VERSION};
use dense::Dense;
use head::{
    head_feature_count, BilinearTaps, CellProjection, Factored, GridHead, HeadFeatures, Refinement,
    RefinementStage,
};
use pose_fit::{PoseFit, ShapeProducts};

use super::face::tight_box;
use super::heatmap::{detections_from_heatmap, Detection, HeatmapLayout};
use super::letterbox::{letterboxed_input, Letterbox};
use super::model_file::{ModelError, ModelFile};
use super::ops::read_f32;
use super::program::{LayerOp, LayerSpec, Program};
use super::sfn::{rotation_from_6d, sigmoid};
use super::FaceObservation;

/// Channels of the face head: 68 landmark offsets (x, y), a 6D rotation, 51 blendshape logits.
pub const FACE_CHANNELS: usize = 136 + 6 + 51;
const POSE: std::ops::Range<usize> = 136..142;
const BLENDSHAPES: std::ops::Range<usize> = 142..193;
const LANDMARKS: usize = 68;
const DETECTION_OUTPUT: &str = "head.out";
const FACE_FEATURES: &str = "face.pw1";
const GRID_HEAD: &str = "face_roi";
const MLP_HIDDEN: &str = "face_mlp1";
const MLP_OUT: &str = "face_mlp2";
const REFINEMENT: &str = "face_refine";
const POSE_FIT: &str = "face_pose_fit";

pub struct Mfn {
    /// Every layer but the face trunk's last.
    program: Program,
    /// The layer that layer reads (the pass's second output).
    face_trunk: String,
    projection: CellProjection,
    config: MfnConfig,
    /// The letterbox's largest enlargement (the file's `letterbox_max_scale`).
    max_scale: f32,
    head: GridHead,
    refinement: Refinement,
    pose_fit: Option<PoseFit>,
    device: Device,
}

/// The raw outputs of one pass: the detection map, the stride-8 face trunk before its last
/// layer (`face.pw1`, which [`Mfn::decode`] applies only where the grid head reads;
/// [`Mfn::face_features`] gives the whole map) and the map the refinement samples at the
/// landmarks.
pub struct MfnOutput {
    pub detection: Tensor,
    pub face: Tensor,
    pub refinement: Tensor,
}

impl Mfn {
    pub fn load(path: &Path, device: &Device) -> Result<Mfn, ModelError> {
        let file = ModelFile::open(path, device)?;
        let bad = |key: &str, problem: String| ModelError::Metadata {
            path: file.path.clone(),
            key: key.into(),
            problem,
        };
        let format = file.metadata.get("format").map(String::as_str);
        if format != Some("polyface-mfn") {
            return Err(bad(
                "format",
                format!("{format:?} is not a multi-face network (polyface-mfn)"),
            ));
        }
        let version = file.metadata.get("format_version").map(String::as_str);
        if version != Some(FORMAT_VERSION) {
            return Err(bad(
                "format_version",
                format!(
                    "{version:?}: this build reads format {FORMAT_VERSION}; re-export the model \
                     with training/mfn/convert.py"
                ),
            ));
        }
        let config: MfnConfig = file.meta_json("mfn_config")?;
        config
            .check()
            .map_err(|(field, problem)| bad("mfn_config", format!("{field}: {problem}")))?;
        let mut specs: Vec<LayerSpec> = file.meta_json("layers")?;
        let channels = |specs: &[LayerSpec], name: &str| {
            specs
                .iter()
                .find(|l| l.name == name)
                .map(|l| l.out_channels)
        };
        if channels(&specs, DETECTION_OUTPUT) != Some(15) {
            return Err(bad(
                "layers",
                format!("{DETECTION_OUTPUT} must have 15 channels"),
            ));
        }
        let Some(last) = specs.iter().position(|l| l.name == FACE_FEATURES) else {
            return Err(bad("layers", format!("no {FACE_FEATURES} layer")));
        };
        let last = specs.remove(last);
        let (face_trunk, activation) = match (last.input.names().as_slice(), last.op, last.act) {
            ([input], LayerOp::Conv1x1, activation) => (input.to_string(), activation),
            _ => {
                return Err(bad(
                    "layers",
                    format!(
                        "{FACE_FEATURES} must be a 1x1 convolution (+ activation) of one input"
                    ),
                ))
            }
        };
        if specs
            .iter()
            .any(|l| l.input.names().contains(&FACE_FEATURES))
        {
            return Err(bad(
                "layers",
                format!("{FACE_FEATURES} must be an output only"),
            ));
        }
        if channels(&specs, &face_trunk) != Some(last.in_channels) {
            return Err(bad(
                "layers",
                format!(
                    "{FACE_FEATURES} reads {} channels, {face_trunk} must give as many",
                    last.in_channels
                ),
            ));
        }
        let feature_channels = last.out_channels;
        let cpu_tensor = |name: &str, shape: &[usize]| {
            file.tensor(name, shape)?
                .to_device(&Device::Cpu)
                .map_err(|e| ModelError::Tensor {
                    path: file.path.clone(),
                    tensor: name.into(),
                    problem: e.to_string(),
                })
        };
        let tensor_problem = |name: &str| {
            let path = file.path.clone();
            let name = name.to_string();
            move |e: candle_core::Error| ModelError::Tensor {
                path,
                tensor: name,
                problem: e.to_string(),
            }
        };
        let dense = |name: &str, shape: [usize; 2]| -> Result<Dense, ModelError> {
            Dense::new(&cpu_tensor(name, &shape)?).map_err(tensor_problem(name))
        };
        let vector = |name: &str, length: usize| -> Result<Vec<f32>, ModelError> {
            cpu_tensor(name, &[length])?
                .to_vec1()
                .map_err(tensor_problem(name))
        };

        // The grid head: its linear layer and the MLP's first layer read one projection.
        let g = &config.grid;
        let samples = g.size * g.size * feature_channels;
        if g.rank > samples {
            return Err(bad(
                "mfn_config",
                format!("grid: rank {} is more than the {samples} samples", g.rank),
            ));
        }
        let linear = cpu_tensor(&format!("{GRID_HEAD}.weight"), &[FACE_CHANNELS, g.rank])?;
        let mut first_bias = vector(&format!("{GRID_HEAD}.bias"), FACE_CHANNELS)?;
        let (first_weight, mlp_out) = if g.mlp_hidden == 0 {
            (linear, None)
        } else {
            let hidden = g.mlp_hidden;
            let out_bias = vector(&format!("{MLP_OUT}.bias"), FACE_CHANNELS)?;
            for (b, o) in first_bias.iter_mut().zip(out_bias) {
                *b += o;
            }
            first_bias.extend(vector(&format!("{MLP_HIDDEN}.bias"), hidden)?);
            let w1 = cpu_tensor(&format!("{MLP_HIDDEN}.weight"), &[hidden, g.rank])?;
            let both = Tensor::cat(&[&linear, &w1], 0).map_err(tensor_problem(MLP_HIDDEN))?;
            let out = dense(&format!("{MLP_OUT}.weight"), [FACE_CHANNELS, hidden])?;
            (both, Some(out))
        };
        let head = GridHead {
            grid: g.size,
            spacing: g.spacing,
            channels: feature_channels,
            first: Factored {
                basis: dense(&format!("{GRID_HEAD}.basis"), [g.rank, samples])?,
                dense: Dense::new(&first_weight).map_err(tensor_problem(GRID_HEAD))?,
            },
            first_bias,
            mlp_out,
        };
        let projection_weight = cpu_tensor(
            &format!("{FACE_FEATURES}.weight"),
            &[feature_channels, last.in_channels, 1, 1],
        )?
        .reshape((feature_channels, last.in_channels))
        .map_err(tensor_problem(FACE_FEATURES))?;
        let projection = CellProjection {
            dense: Dense::new(&projection_weight).map_err(tensor_problem(FACE_FEATURES))?,
            bias: vector(&format!("{FACE_FEATURES}.bias"), feature_channels)?,
            activation,
        };

        // The refinement: face_refine.*, then face_refine2.*, face_refine3.*, ...
        let r = &config.refine;
        let Some(fine_channels) = channels(&specs, &r.layer).filter(|&c| c > 0) else {
            return Err(bad(
                "mfn_config",
                format!("refine: {:?} is not a layer of the network", r.layer),
            ));
        };
        let fine_samples = LANDMARKS * fine_channels;
        let stages = (1..=r.stages)
            .map(|stage| {
                let prefix = match stage {
                    1 => REFINEMENT.to_string(),
                    _ => format!("{REFINEMENT}{stage}"),
                };
                Ok(RefinementStage {
                    linear: Factored {
                        basis: dense(&format!("{prefix}.basis"), [r.rank, fine_samples])?,
                        dense: dense(&format!("{prefix}.weight"), [FACE_CHANNELS, r.rank])?,
                    },
                    bias: vector(&format!("{prefix}.bias"), FACE_CHANNELS)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let refinement = Refinement {
            layer: r.layer.clone(),
            channels: fine_channels,
            stages,
        };

        // The pose fit reads the geometry, the head's own features, then the shape products.
        let pose_fit = match &config.pose_fit {
            None => None,
            Some(p) => {
                let shape = ShapeProducts {
                    mean: vector(&format!("{POSE_FIT}.shape_mean"), 2 * LANDMARKS)?,
                    basis: cpu_tensor(
                        &format!("{POSE_FIT}.shape_basis"),
                        &[p.shape_components, 2 * LANDMARKS],
                    )?
                    .flatten_all()
                    .and_then(|t| t.to_vec1())
                    .map_err(tensor_problem(POSE_FIT))?,
                    cubic: p.cubic,
                };
                let head_features = head_feature_count(&head, &refinement);
                let inputs = PoseFit::INPUTS + head_features + shape.count();
                Some(PoseFit {
                    weight: dense(&format!("{POSE_FIT}.weight"), [6, inputs])?,
                    bias: vector(&format!("{POSE_FIT}.bias"), 6)?,
                    head_features,
                    shape,
                })
            }
        };
        Ok(Mfn {
            program: Program::new(&specs, &file)?,
            face_trunk,
            projection,
            config,
            head,
            refinement,
            pose_fit,
            max_scale: file.letterbox_max_scale()?,
            device: device.clone(),
        })
    }

    pub fn input_size(&self) -> (usize, usize) {
        (self.config.input_size[0], self.config.input_size[1])
    }

    pub fn config(&self) -> &MfnConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The letterboxed, normalised network input for `frame` (1, 3, H, W).
    pub fn prepare(&self, frame: &image::RgbImage) -> candle_core::Result<(Tensor, Letterbox)> {
        let (width, height) = self.input_size();
        letterboxed_input(frame, width, height, self.max_scale, &self.device)
    }

    pub fn forward(&self, input: &Tensor) -> candle_core::Result<MfnOutput> {
        let names = [
            DETECTION_OUTPUT,
            self.face_trunk.as_str(),
            self.refinement.layer.as_str(),
        ];
        let mut outputs = self.program.forward_outputs(input, &names)?.into_iter();
        let (Some(detection), Some(face), Some(refinement)) =
            (outputs.next(), outputs.next(), outputs.next())
        else {
            return Err(candle_core::Error::Msg("the pass lost an output".into()));
        };
        Ok(MfnOutput {
            detection,
            face,
            refinement,
        })
    }

    /// Each layer's wall time for one pass (`bench --layers`).
    pub fn layer_times(&self, input: &Tensor) -> candle_core::Result<Vec<(String, f64)>> {
        self.program.layer_times(input)
    }

    /// Every face in frame coordinates: detections from the centre heatmap, then the grid head
    /// on each face's feature samples (one matrix product for all faces). O(faces) work on top
    /// of the network pass.
    pub fn decode(
        &self,
        output: &MfnOutput,
        letterbox: &Letterbox,
    ) -> candle_core::Result<Vec<FaceObservation>> {
        // Entered once: each of the decode's products splits over the pool, and entering it
        // from outside wakes it and puts this thread to sleep every time.
        crate::vision::ops::on_pool(|| self.decode_on_pool(output, letterbox))
    }

    fn decode_on_pool(
        &self,
        output: &MfnOutput,
        letterbox: &Letterbox,
    ) -> candle_core::Result<Vec<FaceObservation>> {
        let (rows, columns) = self.detection_map_size();
        let layout = HeatmapLayout {
            stride: self.config.stride as f32,
            rows,
            columns,
        };
        let detections = read_f32(&output.detection, |heat| {
            detections_from_heatmap(
                heat,
                layout,
                letterbox,
                self.config.score_threshold,
                self.config.nms_iou,
            )
        })?;
        if detections.is_empty() {
            return Ok(Vec::new());
        }
        // Face centre and size in network-input pixels, as in training.
        let places: Vec<(Vec2, f32)> = detections
            .iter()
            .map(|d| {
                (
                    d.center() * letterbox.scale,
                    d.width().max(d.height()) * letterbox.scale,
                )
            })
            .collect();
        let (rows, columns) = self.face_map_size();
        let taps: Vec<BilinearTaps> = places
            .iter()
            .flat_map(|&(center, size)| self.head.offsets().map(move |o| center + o * size))
            .map(|p| BilinearTaps::at(p, self.config.face_stride as f32, rows, columns))
            .collect();
        // The cells those taps read, each once, and where its features go.
        let mut slot = vec![usize::MAX; rows * columns];
        let mut cells = Vec::new();
        for cell in taps.iter().flat_map(|t| t.cells) {
            if slot[cell] == usize::MAX {
                slot[cell] = cells.len();
                cells.push(cell);
            }
        }
        let features = read_f32(&output.face, |trunk| {
            self.projection.apply(trunk, rows * columns, &cells)
        })?;
        let channels = self.head.channels;
        let mut samples = Vec::with_capacity(taps.len() * channels);
        for t in &taps {
            t.blend(
                t.cells
                    .map(|cell| &features[slot[cell] * channels..][..channels]),
                &mut samples,
            );
        }
        let mut kept = HeadFeatures::default();
        let mut values = self.head.apply(&samples, places.len(), &mut kept);
        // The refinement's map is sampled on the detection map's grid.
        let refinement = &self.refinement;
        let (rows, columns) = self.detection_map_size();
        if output.refinement.dims() != [1, refinement.channels, rows, columns] {
            return Err(candle_core::Error::Msg(format!(
                "refine: the map is {:?}, the decode reads [1, {}, {rows}, {columns}]",
                output.refinement.dims(),
                refinement.channels
            )));
        }
        read_f32(&output.refinement, |map| {
            self.refine(map, &places, &mut values, &mut kept)
        })?;
        if let Some(fit) = &self.pose_fit {
            fit.correct(&mut values, &kept);
        }
        Ok(detections
            .iter()
            .zip(places)
            .zip(values.chunks_exact(FACE_CHANNELS))
            .map(|((d, (center, size)), v)| observe(d, center, size, v, letterbox))
            .collect())
    }

    /// The face features over the whole map (1, channels, rows, columns), as the training
    /// code's pass ends: the last face layer on every cell (for parity checks and tools; the
    /// decode computes only the cells it reads).
    pub fn face_features(&self, output: &MfnOutput) -> candle_core::Result<Tensor> {
        let (rows, columns) = self.face_map_size();
        let cells: Vec<usize> = (0..rows * columns).collect();
        let features = read_f32(&output.face, |trunk| {
            self.projection.apply(trunk, rows * columns, &cells)
        })?;
        // cells × channels → channels × cells
        let channels = self.head.channels;
        let mut planes = vec![0f32; features.len()];
        for (cell, values) in features.chunks_exact(channels).enumerate() {
            for (c, v) in values.iter().enumerate() {
                planes[c * cells.len() + cell] = *v;
            }
        }
        Tensor::from_vec(planes, (1, channels, rows, columns), &Device::Cpu)
    }

    /// Adds each refinement stage's correction to each face's `values`: `map` (channel-major, at
    /// the detection stride) sampled at the 68 landmarks the values give at that point.
    fn refine(
        &self,
        map: &[f32],
        places: &[(Vec2, f32)],
        values: &mut [f32],
        kept: &mut HeadFeatures,
    ) {
        use rayon::prelude::*;
        let (rows, columns) = self.detection_map_size();
        let channels = self.refinement.channels;
        let mut samples = vec![0f32; places.len() * LANDMARKS * channels];
        crate::vision::ops::on_pool(|| {
            for stage in &self.refinement.stages {
                // One landmark's samples per chunk, on both threads: each reads two cache lines
                // in each of the map's planes (~0.1 ms for 10 faces on one thread).
                samples
                    .par_chunks_mut(channels)
                    .with_min_len(LANDMARKS / 4)
                    .enumerate()
                    .for_each(|(i, out)| {
                        let (face, k) = (i / LANDMARKS, i % LANDMARKS);
                        let (center, size) = places[face];
                        let d = &values[face * FACE_CHANNELS + 2 * k..][..2];
                        let p = center + Vec2::new(d[0], d[1]) * size;
                        BilinearTaps::at(p, self.config.stride as f32, rows, columns).blend_planes(
                            map,
                            rows * columns,
                            out,
                        );
                    });
                stage.correct(&samples, values, kept);
            }
        });
    }

    /// Rows and columns of the detection map (the refinement's map too).
    fn detection_map_size(&self) -> (usize, usize) {
        let [width, height] = self.config.input_size;
        (height / self.config.stride, width / self.config.stride)
    }

    /// Rows and columns of the stride-8 face map.
    fn face_map_size(&self) -> (usize, usize) {
        let [width, height] = self.config.input_size;
        (
            height / self.config.face_stride,
            width / self.config.face_stride,
        )
    }

    /// Every face in `frame`.
    pub fn detect(&self, frame: &image::RgbImage) -> candle_core::Result<Vec<FaceObservation>> {
        let (input, letterbox) = self.prepare(frame)?;
        let output = self.forward(&input)?;
        self.decode(&output, &letterbox)
    }
}

/// One face from its grid-head values `v` (centre and size in network-input pixels).
fn observe(
    detection: &Detection,
    center: Vec2,
    size: f32,
    v: &[f32],
    letterbox: &Letterbox,
) -> FaceObservation {
    let landmarks: Vec<Vec2> = v[..136]
        .chunks_exact(2)
        .map(|d| letterbox.to_frame(center + Vec2::new(d[0], d[1]) * size))
        .collect();
    FaceObservation {
        bbox: tight_box(&landmarks).unwrap_or(detection.bbox),
        score: detection.score,
        landmarks,
        rotation: rotation_from_6d(&v[POSE]),
        blendshapes: v[BLENDSHAPES].iter().map(|&x| sigmoid(x)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MfnConfig {
        serde_json::from_value(serde_json::json!({
            "input_size": [640, 480], "stride": 4, "face_stride": 8,
            "grid": {"size": 5, "spacing": 0.15, "rank": 128, "mlp_hidden": 1},
            "refine": {"layer": "fpn.smooth4.pw", "rank": 96, "stages": 2},
            "pose_fit": {"shape_components": 12, "cubic": 4},
            "score_threshold": 0.35, "nms_iou": 0.4}))
        .unwrap()
    }

    #[test]
    fn the_config_is_one_record_checked_before_loading() {
        let good = config();
        assert_eq!(good.check(), Ok(()));
        let field = |c: MfnConfig| c.check().unwrap_err().0;
        let mut c = config();
        c.stride = 7;
        assert_eq!(field(c), "stride");
        let mut c = config();
        c.grid.rank = 0;
        assert_eq!(field(c), "grid");
        let mut c = config();
        c.refine.stages = 0;
        assert_eq!(field(c), "refine");
        let mut c = config();
        c.pose_fit = Some(PoseFitConfig {
            shape_components: 4,
            cubic: 5,
        });
        assert_eq!(field(c), "pose_fit");
        // switches of earlier formats are not read silently
        let mut json = serde_json::to_value(good).unwrap();
        json["face_refine_mlp"] = serde_json::json!(64);
        let err = serde_json::from_value::<MfnConfig>(json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("face_refine_mlp"), "{err}");
    }
}
