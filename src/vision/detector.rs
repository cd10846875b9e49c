//! The face detector: a small anchor-free network on a 320×240 letterboxed frame that marks face
//! centres on a stride-4 heatmap with box size, offset and 5 keypoints per cell. The layer list is
//! in the model file (`layers` metadata); `training/detector/DETECTOR.md` documents it.

use std::path::Path;

use candle_core::{Device, Module, Tensor};

use super::heatmap::{detections_from_heatmap, Detection, HeatmapLayout};
use super::letterbox::{letterboxed_input, Letterbox};
use super::model_file::{ModelError, ModelFile};
use super::program::{LayerSpec, Program};

/// Detections below this probability are dropped (the model file may set its own).
pub const DEFAULT_SCORE_THRESHOLD: f32 = 0.5;
pub const DEFAULT_NMS_IOU: f32 = 0.4;

pub struct Detector {
    program: Program,
    input_width: usize,
    input_height: usize,
    max_scale: f32,
    stride: usize,
    output_channels: usize,
    pub score_threshold: f32,
    pub nms_iou: f32,
    device: Device,
}

impl Detector {
    pub fn load(path: &Path, device: &Device) -> Result<Detector, ModelError> {
        let file = ModelFile::open(path, device)?;
        let specs: Vec<LayerSpec> = file.meta_json("layers")?;
        let [_, _, input_height, input_width]: [usize; 4] = file.meta_json("input_size")?;
        let stride: usize = file.meta_json("stride")?;
        let bad = |key: &str, problem: &str| ModelError::Metadata {
            path: file.path.clone(),
            key: key.into(),
            problem: problem.into(),
        };
        if stride == 0 || input_width % stride != 0 || input_height % stride != 0 {
            return Err(bad("stride", "must divide the input size"));
        }
        let output_channels = specs.last().map_or(0, |l| l.out_channels);
        if output_channels != 15 {
            return Err(bad("program", "the last layer must output 15 channels"));
        }
        let score_threshold = file
            .metadata
            .get("score_threshold")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_SCORE_THRESHOLD);
        let nms_iou = file
            .metadata
            .get("nms_iou")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_NMS_IOU);
        Ok(Detector {
            program: Program::new(&specs, &file)?,
            input_width,
            input_height,
            max_scale: file.letterbox_max_scale()?,
            stride,
            output_channels,
            score_threshold,
            nms_iou,
            device: device.clone(),
        })
    }

    pub fn input_size(&self) -> (usize, usize) {
        (self.input_width, self.input_height)
    }

    /// The letterboxed, normalised network input for `frame` (1, 3, H, W).
    pub fn prepare(&self, frame: &image::RgbImage) -> candle_core::Result<(Tensor, Letterbox)> {
        letterboxed_input(
            frame,
            self.input_width,
            self.input_height,
            self.max_scale,
            &self.device,
        )
    }

    /// Raw output (1, 15, H/stride, W/stride) for a prepared input.
    pub fn forward(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        self.program.forward(input)
    }

    /// Each layer's wall time for one pass (`bench --layers`).
    pub fn layer_times(&self, input: &Tensor) -> candle_core::Result<Vec<(String, f64)>> {
        self.program.layer_times(input)
    }

    /// Decodes a raw output into frame-space detections (thresholded, NMS applied).
    pub fn decode(
        &self,
        output: &Tensor,
        letterbox: &Letterbox,
    ) -> candle_core::Result<Vec<Detection>> {
        let values: Vec<f32> = output.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        let layout = HeatmapLayout {
            stride: self.stride as f32,
            rows: self.input_height / self.stride,
            columns: self.input_width / self.stride,
        };
        debug_assert_eq!(
            values.len(),
            self.output_channels * layout.rows * layout.columns
        );
        Ok(detections_from_heatmap(
            &values,
            layout,
            letterbox,
            self.score_threshold,
            self.nms_iou,
        ))
    }

    /// Every face in `frame`.
    pub fn detect(&self, frame: &image::RgbImage) -> candle_core::Result<Vec<Detection>> {
        let (input, letterbox) = self.prepare(frame)?;
        let output = self.forward(&input)?;
        self.decode(&output, &letterbox)
    }
}
