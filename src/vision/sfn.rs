//! The single-face network (SFN): an aligned 112×112 face crop → 68 landmarks, head rotation,
//! 51 ARKit blendshapes and a face confidence. A MobileNetV2-style CNN; the layer-by-layer
//! description is in `training/sfn/SFN.md`, and the file's metadata carries the configuration.

use std::path::Path;

use candle_core::{Device, Module, Result as CandleResult, Tensor, D};
use glam::{Mat3, Vec2, Vec3};
use serde::Deserialize;

use super::face::{tight_box, CropBox, FaceObservation};
use super::model_file::{random_values, write_model, ModelError, ModelFile};
use super::ops::{conv2d, depthwise3x3, on_pool, pointwise, pointwise_residual, Activation};
use super::preprocess::resample;

/// Side of the square input crop in pixels.
pub const INPUT_SIZE: usize = 112;
/// Crop side = this × the longer edge of the landmarks' tight box.
pub const CROP_SCALE: f32 = 1.4;
const OUTPUT_DIM: usize = 194;
const LANDMARKS: std::ops::Range<usize> = 0..136;
const POSE: std::ops::Range<usize> = 136..142;
const BLENDSHAPES: std::ops::Range<usize> = 142..193;
const FACE_LOGIT: usize = 193;

/// Architecture, as stored in the model file's `architecture` metadata.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct SfnConfig {
    pub input_size: usize,
    pub stem: StemConfig,
    /// Inverted-residual blocks: [in, out, stride, expand].
    pub blocks: Vec<[usize; 4]>,
    pub last_conv: usize,
    /// Blocks whose globally pooled output joins the head's feature vector.
    pub pool_taps: Vec<usize>,
    pub fc_hidden: usize,
    pub out_dim: usize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct StemConfig {
    pub out: usize,
    pub stride: usize,
}

/// A convolution with its folded batch norm (weight, bias) and activation.
struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    activation: Activation,
    kind: ConvKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ConvKind {
    Full3x3,
    Depthwise3x3,
    Pointwise,
}

impl Conv {
    fn load(
        file: &ModelFile,
        name: &str,
        kind: ConvKind,
        (cin, cout): (usize, usize),
        stride: usize,
        activation: Activation,
    ) -> Result<Conv, ModelError> {
        let shape = match kind {
            ConvKind::Full3x3 => vec![cout, cin, 3, 3],
            ConvKind::Depthwise3x3 => vec![cout, 1, 3, 3],
            ConvKind::Pointwise => vec![cout, cin, 1, 1],
        };
        Ok(Conv {
            weight: file.tensor(&format!("{name}.weight"), &shape)?,
            bias: file.tensor(&format!("{name}.bias"), &[cout])?,
            stride,
            activation,
            kind,
        })
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        match self.kind {
            ConvKind::Full3x3 => {
                conv2d(x, &self.weight, &self.bias, self.stride, 1, self.activation)
            }
            ConvKind::Depthwise3x3 => {
                depthwise3x3(x, &self.weight, &self.bias, self.stride, self.activation)
            }
            ConvKind::Pointwise => pointwise(x, &self.weight, &self.bias, self.activation),
        }
    }
}

struct Block {
    expand: Option<Conv>,
    depthwise: Conv,
    project: Conv,
    residual: bool,
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        let mut y = match &self.expand {
            Some(expand) => expand.forward(x)?,
            None => x.clone(),
        };
        y = self.depthwise.forward(&y)?;
        let project = &self.project;
        if self.residual
            && project.kind == ConvKind::Pointwise
            && project.activation == Activation::None
        {
            // The projection and the skip connection in one pass.
            return pointwise_residual(&y, &project.weight, &project.bias, x, Activation::None);
        }
        y = project.forward(&y)?;
        if self.residual {
            y = (y + x)?;
        }
        Ok(y)
    }
}

pub struct Sfn {
    config: SfnConfig,
    stem: Conv,
    blocks: Vec<Block>,
    last: Conv,
    fc1: candle_nn::Linear,
    out: candle_nn::Linear,
    device: Device,
}

impl Sfn {
    /// Loads `models/sfn.safetensors` (or any file in its format).
    pub fn load(path: &Path, device: &Device) -> Result<Sfn, ModelError> {
        let file = ModelFile::open(path, device)?;
        let config: SfnConfig = file.meta_json("architecture")?;
        Self::new(&config, &file, device)
    }

    pub fn new(config: &SfnConfig, file: &ModelFile, device: &Device) -> Result<Sfn, ModelError> {
        let bad = |problem: String| ModelError::Metadata {
            path: file.path.clone(),
            key: "architecture".into(),
            problem,
        };
        if config.input_size != INPUT_SIZE || config.out_dim != OUTPUT_DIM {
            return Err(bad(format!(
                "for input {} / output {}, this build expects {INPUT_SIZE} / {OUTPUT_DIM}",
                config.input_size, config.out_dim
            )));
        }
        if config.blocks.is_empty() || config.pool_taps.iter().any(|&t| t >= config.blocks.len()) {
            return Err(bad("blocks / pool_taps are inconsistent".into()));
        }
        let relu = Activation::Relu;
        let stem = Conv::load(
            file,
            "stem",
            ConvKind::Full3x3,
            (3, config.stem.out),
            config.stem.stride,
            relu,
        )?;
        let mut blocks = Vec::new();
        let mut channels = config.stem.out;
        for (i, &[cin, cout, stride, expand]) in config.blocks.iter().enumerate() {
            if cin != channels || !(1..=2).contains(&stride) || expand == 0 {
                return Err(bad(format!(
                    "block {i} [{cin}, {cout}, {stride}, {expand}] does not chain"
                )));
            }
            let hidden = cin * expand;
            let name = format!("blocks.{i}");
            blocks.push(Block {
                expand: (expand != 1)
                    .then(|| {
                        Conv::load(
                            file,
                            &format!("{name}.expand"),
                            ConvKind::Pointwise,
                            (cin, hidden),
                            1,
                            relu,
                        )
                    })
                    .transpose()?,
                depthwise: Conv::load(
                    file,
                    &format!("{name}.dw"),
                    ConvKind::Depthwise3x3,
                    (hidden, hidden),
                    stride,
                    relu,
                )?,
                project: Conv::load(
                    file,
                    &format!("{name}.project"),
                    ConvKind::Pointwise,
                    (hidden, cout),
                    1,
                    Activation::None,
                )?,
                residual: stride == 1 && cin == cout,
            });
            channels = cout;
        }
        let last = Conv::load(
            file,
            "last",
            ConvKind::Pointwise,
            (channels, config.last_conv),
            1,
            relu,
        )?;
        let features: usize = config
            .pool_taps
            .iter()
            .map(|&t| config.blocks[t][1])
            .sum::<usize>()
            + config.last_conv;
        let linear =
            |name: &str, cin: usize, cout: usize| -> Result<candle_nn::Linear, ModelError> {
                Ok(candle_nn::Linear::new(
                    file.tensor(&format!("{name}.weight"), &[cout, cin])?,
                    Some(file.tensor(&format!("{name}.bias"), &[cout])?),
                ))
            };
        Ok(Sfn {
            config: config.clone(),
            stem,
            blocks,
            last,
            fc1: linear("fc1", features, config.fc_hidden)?,
            out: linear("out", config.fc_hidden, config.out_dim)?,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &SfnConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the network on a batch of crops and returns one observation per crop.
    pub fn observe(
        &self,
        frame: &image::RgbImage,
        crops: &[CropBox],
    ) -> anyhow::Result<Vec<FaceObservation>> {
        if crops.is_empty() {
            return Ok(Vec::new());
        }
        let input = crop_batch(frame, crops, &self.device)?;
        let raw = self.forward(&input)?;
        decode(&raw, crops)
    }
}

impl Module for Sfn {
    /// (N, 3, 112, 112) normalised crops → (N, 194) raw outputs (see `training/sfn/SFN.md`). On the
    /// CPU, on rayon's pool (see `on_pool`).
    fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        if x.device().is_cpu() {
            on_pool(|| self.forward_layers(x))
        } else {
            self.forward_layers(x)
        }
    }
}

impl Sfn {
    fn forward_layers(&self, x: &Tensor) -> CandleResult<Tensor> {
        let mut x = self.stem.forward(x)?;
        let mut pooled = Vec::with_capacity(self.config.pool_taps.len() + 1);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x)?;
            if self.config.pool_taps.contains(&i) {
                pooled.push(x.mean((D::Minus2, D::Minus1))?);
            }
        }
        x = self.last.forward(&x)?;
        pooled.push(x.mean((D::Minus2, D::Minus1))?);
        let features = Tensor::cat(&pooled, 1)?;
        let hidden = self.fc1.forward(&features)?.relu()?;
        self.out.forward(&hidden)
    }
}

/// Cuts, resamples (bilinear, black outside the frame) and normalises crops into one batch
/// tensor (N, 3, 112, 112) with values (u8 / 255 − 0.5) / 0.5.
pub fn crop_batch(
    frame: &image::RgbImage,
    crops: &[CropBox],
    device: &Device,
) -> CandleResult<Tensor> {
    let n = INPUT_SIZE;
    let mut data = vec![0f32; crops.len() * 3 * n * n];
    for (crop, out) in crops.iter().zip(data.chunks_exact_mut(3 * n * n)) {
        let origin = crop.center - Vec2::splat(crop.side / 2.0);
        resample(frame, origin, crop.side / n as f32, (n, n), out);
    }
    Tensor::from_vec(data, (crops.len(), 3, n, n), device)
}
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The 6D rotation (first two columns of R) back to a rotation matrix by Gram–Schmidt.
pub fn rotation_from_6d(d: &[f32]) -> Mat3 {
    let a1 = Vec3::new(d[0], d[1], d[2]);
    let a2 = Vec3::new(d[3], d[4], d[5]);
    let b1 = a1.normalize_or(Vec3::X);
    let b2 = (a2 - b1 * b1.dot(a2)).normalize_or(Vec3::Y);
    Mat3::from_cols(b1, b2, b1.cross(b2))
}

/// Raw network outputs (N, 194) → observations in frame coordinates.
pub fn decode(raw: &Tensor, crops: &[CropBox]) -> anyhow::Result<Vec<FaceObservation>> {
    let rows: Vec<Vec<f32>> = raw.to_device(&Device::Cpu)?.to_vec2()?;
    anyhow::ensure!(
        rows.len() == crops.len(),
        "SFN returned {} rows for {} crops",
        rows.len(),
        crops.len()
    );
    rows.iter()
        .zip(crops)
        .map(|(row, crop)| {
            anyhow::ensure!(
                row.len() == OUTPUT_DIM,
                "SFN output has {} values, expected {OUTPUT_DIM}",
                row.len()
            );
            let landmarks: Vec<Vec2> = row[LANDMARKS]
                .chunks_exact(2)
                .map(|p| crop.to_frame(Vec2::new(p[0], p[1])))
                .collect();
            let bbox = tight_box(&landmarks).unwrap_or((crop.center, crop.center));
            Ok(FaceObservation {
                bbox,
                score: sigmoid(row[FACE_LOGIT]),
                landmarks,
                rotation: rotation_from_6d(&row[POSE]),
                blendshapes: row[BLENDSHAPES].iter().map(|&v| sigmoid(v)).collect(),
            })
        })
        .collect()
}

/// The tensor names and shapes of an SFN with `config`, in file order.
pub fn tensor_shapes(config: &SfnConfig) -> Vec<(String, Vec<usize>)> {
    let mut shapes = vec![
        ("stem.weight".to_string(), vec![config.stem.out, 3, 3, 3]),
        ("stem.bias".to_string(), vec![config.stem.out]),
    ];
    for (i, &[cin, cout, _, expand]) in config.blocks.iter().enumerate() {
        let hidden = cin * expand;
        if expand != 1 {
            shapes.push((format!("blocks.{i}.expand.weight"), vec![hidden, cin, 1, 1]));
            shapes.push((format!("blocks.{i}.expand.bias"), vec![hidden]));
        }
        shapes.push((format!("blocks.{i}.dw.weight"), vec![hidden, 1, 3, 3]));
        shapes.push((format!("blocks.{i}.dw.bias"), vec![hidden]));
        shapes.push((
            format!("blocks.{i}.project.weight"),
            vec![cout, hidden, 1, 1],
        ));
        shapes.push((format!("blocks.{i}.project.bias"), vec![cout]));
    }
    let channels = config.blocks.last().map_or(config.stem.out, |b| b[1]);
    shapes.push(("last.weight".into(), vec![config.last_conv, channels, 1, 1]));
    shapes.push(("last.bias".into(), vec![config.last_conv]));
    let features: usize = config
        .pool_taps
        .iter()
        .map(|&t| config.blocks[t][1])
        .sum::<usize>()
        + config.last_conv;
    shapes.push(("fc1.weight".into(), vec![config.fc_hidden, features]));
    shapes.push(("fc1.bias".into(), vec![config.fc_hidden]));
    shapes.push(("out.weight".into(), vec![config.out_dim, config.fc_hidden]));
    shapes.push(("out.bias".into(), vec![config.out_dim]));
    shapes
}

/// Writes an SFN file with random (He-scaled) weights: for benchmarks, which do not depend on
/// trained values, and for tests of the loader. Never shipped as a model.
pub fn write_random_weights(
    config: &SfnConfig,
    config_json: &str,
    path: &Path,
    seed: u64,
) -> anyhow::Result<()> {
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = tensor_shapes(config)
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let count = shape.iter().product();
            let fan_in = shape.iter().skip(1).product::<usize>();
            let mut values = random_values(count, fan_in, seed + i as u64);
            if name.ends_with(".bias") {
                values.iter_mut().for_each(|v| *v *= 0.01);
            }
            (name, shape, values)
        })
        .collect();
    let metadata = std::collections::HashMap::from([
        ("format".to_string(), "polyface-sfn".to_string()),
        ("architecture".to_string(), config_json.to_string()),
        (
            "note".to_string(),
            "random weights for benchmarks and tests".to_string(),
        ),
    ]);
    write_model(path, &tensors, metadata)
}

/// The architecture the training code uses by default (`training/sfn/model.py`), as JSON.
pub const DEFAULT_CONFIG_JSON: &str = r#"{"input_size": 112, "stem": {"out": 16, "stride": 2},
 "blocks": [[16, 16, 1, 1], [16, 24, 2, 3], [24, 24, 1, 3], [24, 40, 2, 4], [40, 40, 1, 4],
            [40, 40, 1, 4], [40, 80, 2, 4], [80, 80, 1, 4], [80, 80, 1, 4], [80, 96, 1, 4]],
 "last_conv": 384, "pool_taps": [5, 9], "fc_hidden": 512, "out_dim": 194}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_resampling_reproduces_an_axis_aligned_region() {
        // A frame whose pixel value encodes its column; a crop exactly 112 px wide samples
        // pixel centres, so values come back unchanged.
        let frame = image::RgbImage::from_fn(200, 150, |x, _| image::Rgb([x as u8, 0, 255]));
        let crop = CropBox {
            center: Vec2::new(100.0, 75.0),
            side: 112.0,
        };
        let flat: Vec<f32> = crop_batch(&frame, &[crop], &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let at = |channel: usize, i: usize, j: usize| flat[(channel * 112 + i) * 112 + j];
        // Column j samples frame x = 100 - 56 + j + 0.5, i.e. pixel 44 + j.
        assert!((at(0, 10, 0) - (44.0 / 127.5 - 1.0)).abs() < 1e-5);
        assert!((at(0, 10, 111) - (155.0 / 127.5 - 1.0)).abs() < 1e-5);
        assert!((at(2, 50, 50) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn outside_the_frame_is_black() {
        let frame = image::RgbImage::from_pixel(20, 20, image::Rgb([255, 255, 255]));
        let crop = CropBox {
            center: Vec2::new(0.0, 0.0),
            side: 40.0,
        };
        let flat: Vec<f32> = crop_batch(&frame, &[crop], &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            (flat[0] + 1.0).abs() < 1e-6,
            "top-left lies outside: black = -1"
        );
        assert!(
            (flat[100 * 112 + 100] - 1.0).abs() < 1e-6,
            "near the bottom-right lies inside: white = +1"
        );
    }

    #[test]
    fn rotation_from_6d_is_orthonormal() {
        let r = rotation_from_6d(&[0.9, 0.1, -0.2, 0.05, 1.1, 0.3]);
        assert!((r.determinant() - 1.0).abs() < 1e-5);
        assert!((r * r.transpose() - Mat3::IDENTITY).abs_diff_eq(Mat3::ZERO, 1e-5));
    }
}
