//! Face pipelines behind one interface: frame in, every face's observation out, stage timings
//! recorded. [`SfnPipeline`] is the classic design: a detector, then the single-face network on
//! every face in one batch; faces found last frame are followed from their landmarks, so the
//! detector runs only every few frames or when a face is lost (as OpenSeeFace and MediaPipe do).

use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Module};

use super::heatmap::iou;
use super::sfn::{crop_batch, decode, CROP_SCALE};
use super::{CropBox, Detector, FaceObservation, Mfn, Sfn};
use crate::timing::{FrameTimings, Stage};

/// A way to find faces and their expressions in frames.
pub trait FacePipeline: Send {
    /// "sfn" or "mfn".
    fn name(&self) -> &'static str;
    /// Every face in `frame`, recording preprocess / network / postprocess times in `timings`.
    fn process(
        &mut self,
        frame: &image::RgbImage,
        timings: &mut FrameTimings,
    ) -> Result<Vec<FaceObservation>>;
    /// Forgets what was followed from earlier frames (the source changed).
    fn reset(&mut self);
}

/// The two face pipelines (the app's switch, `--pipeline`, the settings file).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum PipelineKind {
    /// Face detector, then the single-face network on every face (batched).
    #[default]
    Sfn,
    /// One multi-face network for the whole frame.
    Mfn,
}

impl PipelineKind {
    /// "sfn" / "mfn", as [`FacePipeline::name`] gives it.
    pub fn name(self) -> &'static str {
        match self {
            PipelineKind::Sfn => "sfn",
            PipelineKind::Mfn => "mfn",
        }
    }

    /// The other pipeline (the app's switch).
    pub fn other(self) -> PipelineKind {
        match self {
            PipelineKind::Sfn => PipelineKind::Mfn,
            PipelineKind::Mfn => PipelineKind::Sfn,
        }
    }
}

/// Loads the `kind` pipeline from the model files in `models`.
pub fn load_pipeline(
    kind: PipelineKind,
    models: &Path,
    device: &Device,
) -> Result<Box<dyn FacePipeline>> {
    Ok(match kind {
        PipelineKind::Sfn => Box::new(SfnPipeline::load(models, device)?),
        PipelineKind::Mfn => Box::new(MfnPipeline::load(models, device)?),
    })
}

/// Detector + single-face network.
pub struct SfnPipeline {
    detector: Detector,
    sfn: Sfn,
    device: Device,
    /// Crops for the faces seen last frame, made from their landmarks.
    followed: Vec<CropBox>,
    frames_since_detection: usize,
    /// Run the detector at least every this many frames (new faces appear within that delay).
    pub detect_every: usize,
    /// Faces whose SFN confidence drops below this are treated as lost.
    pub min_face_score: f32,
}

impl SfnPipeline {
    pub fn new(detector: Detector, sfn: Sfn) -> SfnPipeline {
        let device = sfn.device().clone();
        SfnPipeline {
            detector,
            sfn,
            device,
            followed: Vec::new(),
            frames_since_detection: 0,
            detect_every: 8,
            min_face_score: 0.5,
        }
    }

    /// Loads `detector.safetensors` and `sfn.safetensors` from `models`.
    pub fn load(models: &Path, device: &Device) -> Result<SfnPipeline> {
        let detector = Detector::load(&models.join("detector.safetensors"), device)?;
        let sfn = Sfn::load(&models.join("sfn.safetensors"), device)?;
        Ok(SfnPipeline::new(detector, sfn))
    }

    /// Runs the SFN on `crops` (one batch) and times it.
    fn observe(
        &self,
        frame: &image::RgbImage,
        crops: &[CropBox],
        timings: &mut FrameTimings,
    ) -> Result<Vec<FaceObservation>> {
        if crops.is_empty() {
            return Ok(Vec::new());
        }
        let input = timings.time(Stage::Preprocess, || crop_batch(frame, crops, &self.device))?;
        let raw = timings.time(Stage::Network, || self.sfn.forward(&input))?;
        timings.time(Stage::Postprocess, || decode(&raw, crops))
    }

    /// Detector boxes → SFN crops (the detector box follows the same tight-landmark-box convention).
    fn detect(&self, frame: &image::RgbImage, timings: &mut FrameTimings) -> Result<Vec<CropBox>> {
        let (input, letterbox) =
            timings.time(Stage::Preprocess, || self.detector.prepare(frame))?;
        let output = timings.time(Stage::Network, || self.detector.forward(&input))?;
        let detections = timings.time(Stage::Postprocess, || {
            self.detector.decode(&output, &letterbox)
        })?;
        Ok(detections
            .iter()
            .map(|d| CropBox {
                center: d.center(),
                side: CROP_SCALE * d.width().max(d.height()),
            })
            .collect())
    }
}

fn crop_bounds(crop: &CropBox) -> (glam::Vec2, glam::Vec2) {
    let half = glam::Vec2::splat(crop.side / 2.0);
    (crop.center - half, crop.center + half)
}

impl FacePipeline for SfnPipeline {
    fn name(&self) -> &'static str {
        "sfn"
    }

    fn process(
        &mut self,
        frame: &image::RgbImage,
        timings: &mut FrameTimings,
    ) -> Result<Vec<FaceObservation>> {
        let mut crops = std::mem::take(&mut self.followed);
        let mut fresh = 0;
        if crops.is_empty() || self.frames_since_detection + 1 >= self.detect_every {
            self.frames_since_detection = 0;
            for candidate in self.detect(frame, timings)? {
                // A face already followed keeps its landmark-based crop: it is the better one.
                let known = crops
                    .iter()
                    .any(|c| iou(&crop_bounds(c), &crop_bounds(&candidate)) > 0.3);
                if !known {
                    crops.push(candidate);
                    fresh += 1;
                }
            }
        } else {
            self.frames_since_detection += 1;
        }
        let mut faces = self.observe(frame, &crops, timings)?;
        if fresh > 0 {
            // New faces came from detector boxes; one more pass from their own landmarks
            // centres the crop the way the SFN was trained.
            let start = crops.len() - fresh;
            let refined: Vec<CropBox> = faces[start..]
                .iter()
                .map(|f| CropBox::around_points(&f.landmarks, CROP_SCALE).unwrap_or(crops[start]))
                .collect();
            let again = self.observe(frame, &refined, timings)?;
            faces.splice(start.., again);
        }
        // Drop lost faces and duplicates (two crops that converged on one face).
        faces.retain(|f| {
            f.score >= self.min_face_score && f.landmarks.iter().all(|p| p.is_finite())
        });
        faces.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut kept: Vec<FaceObservation> = Vec::with_capacity(faces.len());
        for face in faces {
            if kept.iter().all(|k| iou(&k.bbox, &face.bbox) < 0.5) {
                kept.push(face);
            }
        }
        self.followed = kept
            .iter()
            .filter_map(|f| CropBox::around_points(&f.landmarks, CROP_SCALE))
            .collect();
        Ok(kept)
    }

    fn reset(&mut self) {
        self.followed.clear();
        self.frames_since_detection = 0;
    }
}

/// One multi-face network pass per frame; every face comes out of the same pass.
pub struct MfnPipeline {
    mfn: Mfn,
}

impl MfnPipeline {
    pub fn new(mfn: Mfn) -> MfnPipeline {
        MfnPipeline { mfn }
    }

    /// Loads `mfn.safetensors` from `models`.
    pub fn load(models: &Path, device: &Device) -> Result<MfnPipeline> {
        let path = models.join("mfn.safetensors");
        let mfn = Mfn::load(&path, device)?;
        Ok(MfnPipeline::new(mfn))
    }
}

impl FacePipeline for MfnPipeline {
    fn name(&self) -> &'static str {
        "mfn"
    }

    fn process(
        &mut self,
        frame: &image::RgbImage,
        timings: &mut FrameTimings,
    ) -> Result<Vec<FaceObservation>> {
        let (input, letterbox) = timings.time(Stage::Preprocess, || self.mfn.prepare(frame))?;
        let output = timings.time(Stage::Network, || self.mfn.forward(&input))?;
        let faces = timings.time(Stage::Postprocess, || self.mfn.decode(&output, &letterbox))?;
        Ok(faces)
    }

    fn reset(&mut self) {}
}
