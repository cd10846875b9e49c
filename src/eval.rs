//! `polyface eval`: accuracy of the face networks on the shared JSON Lines data.
//!
//! Reads three record kinds: one face crop per record (`landmarks68`), one photo per record with
//! a `faces` list (scenes: 68 points per face), and group photos (`groups.jsonl`: faces with a
//! human box or human points, teacher labels where the teacher could read the face).
//! Ground-truth landmarks are `gt_landmarks68` where present (human), else `landmarks68`.
//! Metrics: inter-ocular NME over 68 points (outer eye corners 36–45), failure rate at 10 %,
//! head-pose error in degrees and blendshape MAE against the teacher, detection recall /
//! precision / AP50, and recall and NME by face height (`by_size`).
//!
//! Matching a prediction (the tight box of its 68 points) to a labelled face: on crops and
//! scenes, IoU ≥ 0.5 with the face's tight landmark box; on group photos, the prediction's box
//! centre inside the face's human annotation — MaskON's box, or for faces with only `points4`
//! (eyes, nose tip, mouth centre) a square of [`POINTS4_SIDE`] × the eye–mouth distance centred
//! [`POINTS4_CENTRE`] of that distance from the eye midpoint towards the mouth (fitted to the
//! teacher's boxes on faces that have both: centre p10–p90 0.51–0.70 along, ±0.24 across; box
//! height 2.03 and width 2.09 eye–mouth distances). Either way one-to-one, greedy by score.
//! Faces found only by the teacher (`annotated: false`) and unconfirmed scene faces are ignore
//! regions. `--compare` runs both pipelines and also judges them on the faces both find.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use glam::{Mat3, Vec2};
use serde::{Deserialize, Serialize};

use crate::vision::{CropBox, FaceObservation, Sfn, BLENDSHAPE_NAMES};

/// Side of the square a `points4` face's prediction centre must fall in, in eye–mouth distances.
pub const POINTS4_SIDE: f32 = 2.1;
/// Where that square's centre lies from the eye midpoint towards the mouth, in eye–mouth distances.
pub const POINTS4_CENTRE: f32 = 0.62;
/// Jaw-to-brow height / MaskON box height (forehead to chin), median over faces with both.
const BOX_TO_JAW_BROW: f32 = 0.843;
/// Jaw-to-brow height / eye–mouth distance, median over faces with both.
const EYE_MOUTH_TO_JAW_BROW: f32 = 2.03;
/// The size buckets of `by_size`: face height (jaw to brows) in pixels of the image as stored.
pub const SIZE_BUCKETS: [(f32, f32, &str); 5] = [
    (0.0, 40.0, "<40"),
    (40.0, 60.0, "40-60"),
    (60.0, 90.0, "60-90"),
    (90.0, 140.0, "90-140"),
    (140.0, f32::INFINITY, ">=140"),
];
/// `recall_20px` counts labelled faces at least this tall.
pub const RECALL_MIN_HEIGHT: f32 = 20.0;

/// One labelled face.
#[derive(Clone, Debug)]
pub struct LabelledFace {
    /// 68 points (human where the data has them, else the teacher's); `None` for faces labelled
    /// with a box or a few points only (detection is judged, landmarks are not).
    pub landmarks: Option<Vec<Vec2>>,
    /// Teacher head rotation (canonical face → camera), when the teacher saw the face.
    pub rotation: Option<Mat3>,
    /// Teacher blendshapes in [`BLENDSHAPE_NAMES`] order, when present.
    pub blendshapes: Option<Vec<f32>>,
    /// False for faces that are neither positives nor negatives (unconfirmed scene faces,
    /// teacher-only group faces): a prediction on one is not judged.
    pub confirmed: bool,
    /// Where a prediction's box centre must lie to match this face (group photos); `None`:
    /// matched by the IoU of tight landmark boxes.
    pub region: Option<(Vec2, Vec2)>,
    /// Face height, jaw to brows, in pixels of the stored image (the `by_size` buckets).
    pub height: f32,
}

/// How predictions are matched to an image's faces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matching {
    /// IoU ≥ 0.5 of the tight landmark boxes; predictions shorter than [`MIN_JUDGED_HEIGHT`]
    /// are not judged (small faces are not labelled in crops and scenes).
    TightBoxIou,
    /// The prediction's box centre inside the face's `region`; every prediction is judged.
    CentreInRegion,
}

/// One image with its labelled faces.
#[derive(Clone, Debug)]
pub struct LabelledImage {
    pub path: PathBuf,
    /// The record's `split` ("train" / "test") where the data has one.
    pub split: Option<String>,
    pub faces: Vec<LabelledFace>,
    /// True for whole photos (`faces` records), false for single-face crops.
    pub is_scene: bool,
    /// Every face is labelled, so an unmatched prediction is a false positive (all but the
    /// group photos marked `exhaustive: false`). Precision and AP50 count only these images.
    pub exhaustive: bool,
    pub matching: Matching,
}

type Point = [f32; 2];

/// A record of any kind, as the shared data stores it.
#[derive(Deserialize)]
struct Record {
    image: String,
    #[serde(default)]
    split: Option<String>,
    #[serde(default)]
    faces: Option<Vec<FaceRecord>>,
    #[serde(default)]
    exhaustive: Option<bool>,
    #[serde(default)]
    landmarks68: Option<Vec<Point>>,
    #[serde(default)]
    teacher: Option<TeacherRecord>,
}

#[derive(Deserialize, Default)]
struct TeacherRecord {
    #[serde(default)]
    matrix: Option<Vec<f32>>,
    #[serde(default)]
    blendshapes: Option<std::collections::HashMap<String, f32>>,
}

#[derive(Deserialize)]
struct FaceRecord {
    #[serde(default)]
    landmarks68: Option<Vec<Point>>,
    #[serde(default)]
    gt_landmarks68: Option<Vec<Point>>,
    #[serde(default)]
    matrix: Option<Vec<f32>>,
    #[serde(default)]
    blendshapes: Option<std::collections::HashMap<String, f32>>,
    #[serde(default)]
    confirmed: Option<bool>,
    /// Group photos: false for faces only the teacher found.
    #[serde(default)]
    annotated: Option<bool>,
    #[serde(default)]
    annotated_box: Option<[f32; 4]>,
    #[serde(default)]
    points4: Option<[Point; 4]>,
    #[serde(default, rename = "box")]
    teacher_box: Option<[f32; 4]>,
}

fn landmarks(points: &Option<Vec<Point>>, field: &str) -> Result<Option<Vec<Vec2>>> {
    match points {
        None => Ok(None),
        Some(p) if p.len() == 68 => Ok(Some(p.iter().map(|&[x, y]| Vec2::new(x, y)).collect())),
        Some(p) => bail!("{field} has {} points, not 68", p.len()),
    }
}

fn rotation(matrix: &Option<Vec<f32>>) -> Result<Option<Mat3>> {
    let Some(m) = matrix else {
        return Ok(None);
    };
    if m.len() != 16 {
        bail!("matrix has {} values, not 16", m.len());
    }
    // Row-major 4×4; glam wants columns.
    Ok(Some(Mat3::from_cols(
        glam::Vec3::new(m[0], m[4], m[8]),
        glam::Vec3::new(m[1], m[5], m[9]),
        glam::Vec3::new(m[2], m[6], m[10]),
    )))
}

/// The 51 blendshapes in [`BLENDSHAPE_NAMES`] order; `None` when any is missing.
fn blendshapes(map: &Option<std::collections::HashMap<String, f32>>) -> Option<Vec<f32>> {
    let map = map.as_ref()?;
    BLENDSHAPE_NAMES
        .iter()
        .map(|name| map.get(*name).copied())
        .collect()
}

fn box_of(b: [f32; 4]) -> (Vec2, Vec2) {
    (Vec2::new(b[0], b[1]), Vec2::new(b[2], b[3]))
}

/// The square a `points4` face's prediction must fall in, and the face's jaw-to-brow height.
fn points4_region(p: &[Point; 4]) -> ((Vec2, Vec2), f32) {
    let [a, b, _, mouth] = p.map(|[x, y]| Vec2::new(x, y));
    let eyes = (a + b) / 2.0;
    let eye_mouth = eyes.distance(mouth);
    let centre = eyes + (mouth - eyes) * POINTS4_CENTRE;
    let half = Vec2::splat(POINTS4_SIDE * eye_mouth / 2.0);
    (
        (centre - half, centre + half),
        EYE_MOUTH_TO_JAW_BROW * eye_mouth,
    )
}

fn scene_face(face: &FaceRecord) -> Result<LabelledFace> {
    let landmarks = match landmarks(&face.gt_landmarks68, "gt_landmarks68")? {
        Some(gt) => Some(gt),
        None => landmarks(&face.landmarks68, "landmarks68")?,
    };
    let tight_height = landmarks
        .as_deref()
        .and_then(crate::vision::tight_box)
        .map(|(lo, hi)| hi.y - lo.y);
    let (region, height) = if let Some(annotated) = face.annotated_box {
        let region = box_of(annotated);
        let height = face
            .teacher_box
            .map(|b| b[3] - b[1])
            .unwrap_or(BOX_TO_JAW_BROW * (annotated[3] - annotated[1]));
        (Some(region), height)
    } else if let Some(p) = &face.points4 {
        let (region, height) = points4_region(p);
        (
            Some(region),
            face.teacher_box.map(|b| b[3] - b[1]).unwrap_or(height),
        )
    } else if face.annotated.is_some() {
        // a group face only the teacher found: its box is an ignore region
        let b = face
            .teacher_box
            .context("a face with neither annotation nor teacher box")?;
        (Some(box_of(b)), b[3] - b[1])
    } else {
        let height = tight_height.context("a face without landmarks68")?;
        (None, height)
    };
    Ok(LabelledFace {
        landmarks,
        rotation: rotation(&face.matrix)?,
        blendshapes: blendshapes(&face.blendshapes),
        confirmed: face.confirmed.unwrap_or(true) && face.annotated.unwrap_or(true),
        region,
        height,
    })
}

fn crop_face(record: &Record) -> Result<LabelledFace> {
    let landmarks = landmarks(&record.landmarks68, "landmarks68")?.context("no landmarks68")?;
    let height = crate::vision::tight_box(&landmarks)
        .map(|(lo, hi)| hi.y - lo.y)
        .unwrap_or(0.0);
    let teacher = record.teacher.as_ref();
    Ok(LabelledFace {
        rotation: rotation(&teacher.and_then(|t| t.matrix.clone()))?,
        blendshapes: blendshapes(&teacher.and_then(|t| t.blendshapes.clone())),
        landmarks: Some(landmarks),
        confirmed: true,
        region: None,
        height,
    })
}

fn image_from(record: Record, base: &Path) -> Result<LabelledImage> {
    let (faces, is_scene) = match &record.faces {
        Some(faces) => (
            faces
                .iter()
                .enumerate()
                .map(|(i, f)| scene_face(f).with_context(|| format!("faces[{i}]")))
                .collect::<Result<Vec<_>>>()?,
            true,
        ),
        None => (vec![crop_face(&record)?], false),
    };
    let matching = if faces.iter().any(|f| f.region.is_some()) {
        Matching::CentreInRegion
    } else {
        Matching::TightBoxIou
    };
    Ok(LabelledImage {
        path: base.join(&record.image),
        split: record.split,
        faces,
        is_scene,
        exhaustive: record.exhaustive.unwrap_or(true),
        matching,
    })
}

/// Reads a JSONL file of any record kind. Image paths are relative to the file's folder. A
/// malformed record is an error naming the line and what is wrong with it.
pub fn read_jsonl(path: &Path) -> Result<Vec<LabelledImage>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut images = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = || format!("{}:{}", path.display(), number + 1);
        let record: Record =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(line))
                .with_context(|| format!("{}: not a record", at()))?;
        images.push(image_from(record, base).with_context(at)?);
    }
    Ok(images)
}

/// Inter-ocular normalised mean error of 68 points (fraction, not %).
pub fn nme(predicted: &[Vec2], truth: &[Vec2]) -> f32 {
    let norm = truth[36].distance(truth[45]).max(1e-6);
    predicted
        .iter()
        .zip(truth)
        .map(|(p, t)| p.distance(*t))
        .sum::<f32>()
        / truth.len() as f32
        / norm
}

/// Angle of the rotation between two rotations, in degrees.
pub fn rotation_error_degrees(a: &Mat3, b: &Mat3) -> f32 {
    let relative = a.transpose() * *b;
    let trace = relative.x_axis.x + relative.y_axis.y + relative.z_axis.z;
    ((trace - 1.0) / 2.0).clamp(-1.0, 1.0).acos().to_degrees()
}

/// The metrics `eval --json` prints (NME and failure rate in %, pose in degrees).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct EvalReport {
    /// Found faces with labelled landmarks (the NME is over these).
    pub faces: usize,
    pub nme: f32,
    pub fr10: f32,
    pub pose_deg: Option<f32>,
    pub blend_mae: Option<f32>,
    /// Eye gaze from the predicted eyeLook weights against the teacher's, degrees (mean of both
    /// eyes; [`crate::retarget::EyeGaze`]).
    pub gaze_deg: Option<f32>,
    pub recall: Option<f32>,
    /// Recall over the labelled faces at least [`RECALL_MIN_HEIGHT`] px tall.
    pub recall_20px: Option<f32>,
    pub precision: Option<f32>,
    pub ap50: Option<f32>,
    /// Recall and NME by face height ([`SIZE_BUCKETS`]); empty where no detection was run.
    pub by_size: Vec<SizeBucket>,
}

/// Recall and NME of the labelled faces whose height is in one bucket.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SizeBucket {
    /// Face height, jaw to brows, px: "<40", "40-60", "60-90", "90-140", ">=140".
    pub height: &'static str,
    /// Labelled faces (ignore regions left out).
    pub faces: usize,
    pub found: usize,
    pub recall: Option<f32>,
    /// NME (%) over the found faces with labelled landmarks.
    pub nme: Option<f32>,
}

/// The errors of one prediction against its labelled face (NME a fraction, pose in degrees).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaceErrors {
    /// `None` where the face has no labelled landmarks.
    pub nme: Option<f32>,
    pub pose_deg: Option<f32>,
    pub blend_mae: Option<f32>,
    pub gaze_deg: Option<f32>,
}

impl FaceErrors {
    fn of(predicted: &FaceObservation, truth: &LabelledFace) -> Self {
        let blend_mae = truth.blendshapes.as_ref().map(|b| {
            predicted
                .blendshapes
                .iter()
                .zip(b)
                .map(|(p, t)| (p - t).abs())
                .sum::<f32>()
                / b.len() as f32
        });
        let gaze =
            |b: &[f32]| crate::retarget::EyeGaze::from_arkit(&crate::retarget::arkit_weights(b));
        let gaze_deg = truth
            .blendshapes
            .as_deref()
            .map(|b| gaze(&predicted.blendshapes).error_degrees(&gaze(b)));
        Self {
            gaze_deg,
            nme: truth
                .landmarks
                .as_deref()
                .map(|t| nme(&predicted.landmarks, t)),
            pose_deg: truth
                .rotation
                .as_ref()
                .map(|r| rotation_error_degrees(&predicted.rotation, r)),
            blend_mae,
        }
    }
}

fn mean(v: &[f32]) -> Option<f32> {
    (!v.is_empty()).then(|| v.iter().sum::<f32>() / v.len() as f32)
}

#[derive(Default)]
struct Accumulator {
    nmes: Vec<f32>,
    pose: Vec<f32>,
    blend: Vec<f32>,
    gaze: Vec<f32>,
}

impl Accumulator {
    fn add(&mut self, errors: &FaceErrors) {
        self.nmes.extend(errors.nme);
        self.pose.extend(errors.pose_deg);
        self.blend.extend(errors.blend_mae);
        self.gaze.extend(errors.gaze_deg);
    }

    fn report(&self) -> EvalReport {
        EvalReport {
            faces: self.nmes.len(),
            nme: mean(&self.nmes).unwrap_or(f32::NAN) * 100.0,
            fr10: if self.nmes.is_empty() {
                f32::NAN
            } else {
                self.nmes.iter().filter(|&&e| e > 0.10).count() as f32 / self.nmes.len() as f32
                    * 100.0
            },
            pose_deg: mean(&self.pose),
            blend_mae: mean(&self.blend),
            gaze_deg: mean(&self.gaze),
            ..Default::default()
        }
    }
}

/// SFN accuracy with the crop made from the tight box of the ground-truth landmarks
/// (`--given-boxes`, as 300-W evaluation does). Faces without labelled landmarks are skipped.
pub fn eval_sfn_given_boxes(
    sfn: &Sfn,
    images: &[LabelledImage],
    limit: Option<usize>,
) -> Result<EvalReport> {
    let mut acc = Accumulator::default();
    let mut seen = 0;
    for image in images {
        if limit.is_some_and(|l| seen >= l) {
            break;
        }
        let faces: Vec<(&LabelledFace, CropBox)> = image
            .faces
            .iter()
            .filter(|f| f.confirmed)
            .filter_map(|f| {
                let crop = CropBox::around_points(
                    f.landmarks.as_deref()?,
                    crate::vision::sfn::CROP_SCALE,
                )?;
                Some((f, crop))
            })
            .collect();
        if faces.is_empty() {
            continue;
        }
        let frame = image::open(&image.path)
            .with_context(|| format!("{}: cannot read image", image.path.display()))?
            .into_rgb8();
        let crops: Vec<CropBox> = faces.iter().map(|(_, c)| *c).collect();
        let predictions = sfn.observe(&frame, &crops)?;
        for (prediction, (truth, _)) in predictions.iter().zip(&faces) {
            acc.add(&FaceErrors::of(prediction, truth));
            seen += 1;
        }
    }
    Ok(acc.report())
}

/// Predictions whose landmark box is shorter than this are not judged on crops and scenes
/// (small faces are not labelled there).
pub const MIN_JUDGED_HEIGHT: f32 = 30.0;

/// Detection bookkeeping: matches, misses, false positives, and scored hits for AP.
#[derive(Default)]
struct DetectionCounts {
    truths: usize,
    matched: usize,
    /// Labelled faces on exhaustively labelled images: AP's denominator.
    exhaustive_truths: usize,
    exhaustive_matched: usize,
    false_positives: usize,
    /// (score, is true positive) of every judged prediction on exhaustively labelled images.
    scored: Vec<(f32, bool)>,
}

impl DetectionCounts {
    fn precision(&self) -> Option<f32> {
        let judged = self.exhaustive_matched + self.false_positives;
        (judged > 0).then(|| self.exhaustive_matched as f32 / judged as f32)
    }

    fn recall(&self) -> Option<f32> {
        (self.truths > 0).then(|| self.matched as f32 / self.truths as f32)
    }

    /// Area under the precision–recall curve (all-point interpolation, as VOC 2010+).
    fn average_precision(&self) -> Option<f32> {
        if self.exhaustive_truths == 0 {
            return None;
        }
        let mut scored = self.scored.clone();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut points = Vec::with_capacity(scored.len());
        let (mut tp, mut fp) = (0usize, 0usize);
        for (_, hit) in scored {
            if hit {
                tp += 1;
            } else {
                fp += 1;
            }
            points.push((
                tp as f32 / self.exhaustive_truths as f32,
                tp as f32 / (tp + fp) as f32,
            ));
        }
        let mut ap = 0.0;
        let mut previous_recall = 0.0;
        for i in 0..points.len() {
            let best_precision = points[i..].iter().map(|p| p.1).fold(0.0, f32::max);
            ap += (points[i].0 - previous_recall) * best_precision;
            previous_recall = points[i].0;
        }
        Some(ap)
    }
}

/// One labelled face as a pipeline saw it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Judged {
    height: f32,
    /// A positive (not an ignore region).
    counted: bool,
    /// The matched prediction's errors; `None` where the pipeline missed the face.
    errors: Option<FaceErrors>,
}

/// What one pipeline found in every image: each labelled face as judged, and the detection
/// counts.
struct PipelineRun {
    per_face: Vec<Vec<Judged>>,
    counts: DetectionCounts,
}

impl PipelineRun {
    fn report(&self) -> EvalReport {
        let mut report = self.report_where(|_, _| true);
        report.recall = self.counts.recall();
        report.precision = self.counts.precision();
        report.ap50 = self.counts.average_precision();
        let faces = || self.per_face.iter().flatten().filter(|j| j.counted);
        let tall = faces().filter(|j| j.height >= RECALL_MIN_HEIGHT).count();
        let tall_found = faces()
            .filter(|j| j.height >= RECALL_MIN_HEIGHT && j.errors.is_some())
            .count();
        report.recall_20px = (tall > 0).then(|| tall_found as f32 / tall as f32);
        report.by_size = SIZE_BUCKETS
            .iter()
            .map(|&(lo, hi, name)| {
                let in_bucket: Vec<&Judged> = faces()
                    .filter(|j| j.height >= lo && j.height < hi)
                    .collect();
                let found: Vec<FaceErrors> = in_bucket.iter().filter_map(|j| j.errors).collect();
                let nmes: Vec<f32> = found.iter().filter_map(|e| e.nme).collect();
                SizeBucket {
                    height: name,
                    faces: in_bucket.len(),
                    found: found.len(),
                    recall: (!in_bucket.is_empty())
                        .then(|| found.len() as f32 / in_bucket.len() as f32),
                    nme: mean(&nmes).map(|m| m * 100.0),
                }
            })
            .collect();
        report
    }

    /// Landmark, pose and blendshape errors over the found faces that `keep(image, face)` keeps
    /// (no detection figures: those are the whole run's).
    fn report_where(&self, keep: impl Fn(usize, usize) -> bool) -> EvalReport {
        let mut acc = Accumulator::default();
        for (i, faces) in self.per_face.iter().enumerate() {
            for (f, judged) in faces.iter().enumerate() {
                if let Some(errors) = judged.errors.as_ref().filter(|_| keep(i, f)) {
                    acc.add(errors);
                }
            }
        }
        acc.report()
    }

    fn found(&self, image: usize, face: usize) -> bool {
        self.per_face[image][face].errors.is_some()
    }
}

/// Runs whole pipelines (detection included) on every image, each image read once for all of
/// them, and matches their predictions to the labelled faces (module docs: the two rules).
fn run_pipelines(
    pipelines: &mut [&mut dyn crate::vision::FacePipeline],
    images: &[LabelledImage],
    limit: Option<usize>,
) -> Result<Vec<PipelineRun>> {
    let mut runs: Vec<PipelineRun> = (0..pipelines.len())
        .map(|_| PipelineRun {
            per_face: Vec::new(),
            counts: DetectionCounts::default(),
        })
        .collect();
    for image in images.iter().take(limit.unwrap_or(usize::MAX)) {
        let frame = image::open(&image.path)
            .with_context(|| format!("{}: cannot read image", image.path.display()))?
            .into_rgb8();
        for (pipeline, run) in pipelines.iter_mut().zip(&mut runs) {
            pipeline.reset();
            let mut timings = crate::timing::FrameTimings::new(0);
            let predictions = pipeline.process(&frame, &mut timings)?;
            let judged = judge_image(&predictions, image, &mut run.counts);
            run.per_face.push(judged);
        }
    }
    Ok(runs)
}

/// What became of one prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionOutcome {
    /// It matched a labelled face.
    Hit,
    /// A false positive (unmatched on an exhaustively labelled image).
    FalsePositive,
    /// Neither: on an ignore region, on an image not labelled exhaustively, or too small to judge.
    Unjudged,
}

/// The predictions on one image against its labelled faces, greedy by score.
fn judge_image(
    predictions: &[FaceObservation],
    image: &LabelledImage,
    counts: &mut DetectionCounts,
) -> Vec<Judged> {
    judge_predictions(predictions, image, counts).0
}

/// [`judge_image`], also returning each prediction's outcome (in `predictions`' order).
fn judge_predictions(
    predictions: &[FaceObservation],
    image: &LabelledImage,
    counts: &mut DetectionCounts,
) -> (Vec<Judged>, Vec<PredictionOutcome>) {
    use crate::vision::iou;
    use crate::vision::tight_box;
    let mut order: Vec<usize> = (0..predictions.len()).collect();
    order.sort_by(|&a, &b| predictions[b].score.total_cmp(&predictions[a].score));
    let mut outcomes = vec![PredictionOutcome::Unjudged; predictions.len()];
    let truth_boxes: Vec<(Vec2, Vec2)> = image
        .faces
        .iter()
        .map(|f| {
            f.landmarks
                .as_deref()
                .and_then(tight_box)
                .unwrap_or((Vec2::ZERO, Vec2::ZERO))
        })
        .collect();
    let mut taken = vec![false; image.faces.len()];
    let mut judged: Vec<Judged> = image
        .faces
        .iter()
        .map(|f| Judged {
            height: f.height,
            counted: f.confirmed,
            errors: None,
        })
        .collect();
    let positives = image.faces.iter().filter(|f| f.confirmed).count();
    counts.truths += positives;
    if image.exhaustive {
        counts.exhaustive_truths += positives;
    }
    let inside = |region: &Option<(Vec2, Vec2)>, p: Vec2| {
        region.is_some_and(|(lo, hi)| p.cmpge(lo).all() && p.cmple(hi).all())
    };
    for index in order {
        let prediction = &predictions[index];
        let centre = (prediction.bbox.0 + prediction.bbox.1) / 2.0;
        let (best, judge_miss) = match image.matching {
            Matching::TightBoxIou => (
                truth_boxes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !taken[*i])
                    .map(|(i, b)| (i, iou(&prediction.bbox, b)))
                    .filter(|(_, overlap)| *overlap >= 0.5)
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(i, _)| i),
                prediction.bbox.1.y - prediction.bbox.0.y >= MIN_JUDGED_HEIGHT,
            ),
            Matching::CentreInRegion => {
                // the labelled face whose region holds the centre; the nearest region centre wins
                let hit = image
                    .faces
                    .iter()
                    .enumerate()
                    .filter(|(i, f)| !taken[*i] && f.confirmed && inside(&f.region, centre))
                    .min_by(|(_, a), (_, b)| {
                        let d = |f: &LabelledFace| {
                            f.region
                                .map_or(f32::INFINITY, |(lo, hi)| centre.distance((lo + hi) / 2.0))
                        };
                        d(a).total_cmp(&d(b))
                    })
                    .map(|(i, _)| i);
                let ignored = image
                    .faces
                    .iter()
                    .any(|f| !f.confirmed && inside(&f.region, centre));
                (hit, !ignored)
            }
        };
        match best {
            Some(i) => {
                taken[i] = true;
                if image.faces[i].confirmed {
                    outcomes[index] = PredictionOutcome::Hit;
                    counts.matched += 1;
                    if image.exhaustive {
                        counts.exhaustive_matched += 1;
                        counts.scored.push((prediction.score, true));
                    }
                    judged[i].errors = Some(FaceErrors::of(prediction, &image.faces[i]));
                }
            }
            None if judge_miss && image.exhaustive => {
                outcomes[index] = PredictionOutcome::FalsePositive;
                counts.false_positives += 1;
                counts.scored.push((prediction.score, false));
            }
            None => {}
        }
    }
    (judged, outcomes)
}

/// One face candidate as the pipeline judged it: training data for the SFN's face confidence
/// (`training/sfn/face_head.py`).
#[derive(Serialize)]
struct Candidate<'a> {
    image: &'a Path,
    split: Option<&'a str>,
    score: f32,
    /// The SFN crop around the candidate's landmarks: centre x, y and side, in image pixels.
    crop: [f32; 3],
    outcome: PredictionOutcome,
}

/// Runs `pipeline` on every image and writes each face it returns as a JSON line (image,
/// split, score, crop, outcome); returns how many were written. With the SFN pipeline's face
/// confidence cut at 0, these are all the candidates the detector proposed.
pub fn write_candidates(
    pipeline: &mut dyn crate::vision::FacePipeline,
    images: &[LabelledImage],
    limit: Option<usize>,
    path: &Path,
) -> Result<usize> {
    use std::io::Write;
    let file = std::fs::File::create(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut counts = DetectionCounts::default();
    let mut written = 0;
    for image in images.iter().take(limit.unwrap_or(usize::MAX)) {
        let frame = image::open(&image.path)
            .with_context(|| format!("{}: cannot read image", image.path.display()))?
            .into_rgb8();
        pipeline.reset();
        let mut timings = crate::timing::FrameTimings::new(0);
        let predictions = pipeline.process(&frame, &mut timings)?;
        let (_, outcomes) = judge_predictions(&predictions, image, &mut counts);
        for (prediction, outcome) in predictions.iter().zip(outcomes) {
            let Some(crop) =
                CropBox::around_points(&prediction.landmarks, crate::vision::sfn::CROP_SCALE)
            else {
                continue;
            };
            let line = Candidate {
                image: &image.path,
                split: image.split.as_deref(),
                score: prediction.score,
                crop: [crop.center.x, crop.center.y, crop.side],
                outcome,
            };
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
            written += 1;
        }
    }
    out.flush()
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(written)
}

/// Accuracy of a whole pipeline (detection included) on every image of `images`; landmark,
/// pose and blendshape errors are over the labelled faces it found.
pub fn eval_pipeline(
    pipeline: &mut dyn crate::vision::FacePipeline,
    images: &[LabelledImage],
    limit: Option<usize>,
) -> Result<EvalReport> {
    let runs = run_pipelines(&mut [pipeline], images, limit)?;
    Ok(runs[0].report())
}

/// `eval --compare`: both pipelines on the same images. Each one finds a slightly different set
/// of faces (a face only one of them finds is often a hard one), so their errors are compared
/// fairly on the faces both find.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Comparison {
    /// Each pipeline over every face it found.
    pub sfn: EvalReport,
    pub mfn: EvalReport,
    /// Both pipelines over the faces both found.
    pub both: JointReport,
    /// Every confirmed labelled face, with each pipeline's errors where it found the face.
    #[serde(skip)]
    pub per_face: Vec<FacePair>,
}

/// One labelled face under both pipelines.
#[derive(Clone, Debug, PartialEq)]
pub struct FacePair {
    pub image: PathBuf,
    /// The face's place in its record's list.
    pub face: usize,
    pub sfn: Option<FaceErrors>,
    pub mfn: Option<FaceErrors>,
}

impl Comparison {
    /// `eval --compare --per-face FILE.csv`: a row per labelled face, NME in %, empty cells
    /// where a pipeline did not find the face.
    pub fn write_per_face_csv(&self, path: &Path) -> Result<()> {
        use std::fmt::Write as _;
        let mut csv = String::from(
            "image,face,sfn_nme,sfn_pose_deg,sfn_blend_mae,mfn_nme,mfn_pose_deg,mfn_blend_mae\n",
        );
        let cell = |v: Option<f32>| v.map(|v| v.to_string()).unwrap_or_default();
        for pair in &self.per_face {
            let image = pair.image.display().to_string();
            // Paths are written as CSV fields: quoted, with quotes doubled.
            let _ = write!(csv, "\"{}\",{}", image.replace('"', "\"\""), pair.face);
            for errors in [&pair.sfn, &pair.mfn] {
                let _ = write!(
                    csv,
                    ",{},{},{}",
                    cell(errors.and_then(|e| e.nme).map(|n| n * 100.0)),
                    cell(errors.and_then(|e| e.pose_deg)),
                    cell(errors.and_then(|e| e.blend_mae)),
                );
            }
            csv.push('\n');
        }
        std::fs::write(path, csv).with_context(|| format!("{}: cannot write", path.display()))
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct JointReport {
    pub faces: usize,
    pub sfn: EvalReport,
    pub mfn: EvalReport,
    /// MFN error / SFN error on these faces, per metric.
    pub mfn_over_sfn: ErrorRatios,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ErrorRatios {
    pub nme: f32,
    pub pose_deg: Option<f32>,
    pub blend_mae: Option<f32>,
}

/// Evaluates both pipelines on `images` and compares them on the faces both find.
pub fn compare_pipelines(
    sfn: &mut dyn crate::vision::FacePipeline,
    mfn: &mut dyn crate::vision::FacePipeline,
    images: &[LabelledImage],
    limit: Option<usize>,
) -> Result<Comparison> {
    let runs = run_pipelines(&mut [sfn, mfn], images, limit)?;
    let (sfn_run, mfn_run) = (&runs[0], &runs[1]);
    let mut comparison = compare_runs(sfn_run, mfn_run);
    for (i, image) in images.iter().take(sfn_run.per_face.len()).enumerate() {
        for (f, face) in image.faces.iter().enumerate() {
            if face.confirmed {
                comparison.per_face.push(FacePair {
                    image: image.path.clone(),
                    face: f,
                    sfn: sfn_run.per_face[i][f].errors,
                    mfn: mfn_run.per_face[i][f].errors,
                });
            }
        }
    }
    Ok(comparison)
}

fn compare_runs(sfn: &PipelineRun, mfn: &PipelineRun) -> Comparison {
    let both = |i: usize, f: usize| sfn.found(i, f) && mfn.found(i, f);
    let (sfn_joint, mfn_joint) = (sfn.report_where(both), mfn.report_where(both));
    let ratio = |m: Option<f32>, s: Option<f32>| m.zip(s).map(|(m, s)| m / s);
    Comparison {
        sfn: sfn.report(),
        mfn: mfn.report(),
        both: JointReport {
            faces: sfn_joint.faces,
            mfn_over_sfn: ErrorRatios {
                nme: mfn_joint.nme / sfn_joint.nme,
                pose_deg: ratio(mfn_joint.pose_deg, sfn_joint.pose_deg),
                blend_mae: ratio(mfn_joint.blend_mae, sfn_joint.blend_mae),
            },
            sfn: sfn_joint,
            mfn: mfn_joint,
        },
        per_face: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nme_is_mean_error_over_inter_ocular_distance() {
        let mut truth = vec![Vec2::ZERO; 68];
        truth[36] = Vec2::new(0.0, 0.0);
        truth[45] = Vec2::new(50.0, 0.0);
        let predicted: Vec<Vec2> = truth.iter().map(|p| *p + Vec2::new(3.0, 4.0)).collect();
        assert!((nme(&predicted, &truth) - 0.1).abs() < 1e-6);
    }

    #[test]
    fn average_precision_of_a_known_ranking() {
        let counts = DetectionCounts {
            truths: 2,
            matched: 2,
            exhaustive_truths: 2,
            exhaustive_matched: 2,
            false_positives: 1,
            scored: vec![(0.9, true), (0.8, false), (0.7, true)],
        };
        // PR points: (0.5, 1), (0.5, 0.5), (1, 2/3) → AP = 0.5·1 + 0.5·2/3.
        assert!((counts.average_precision().unwrap() - (0.5 + 1.0 / 3.0)).abs() < 1e-6);
        assert!((counts.precision().unwrap() - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(counts.recall(), Some(1.0));
    }

    #[test]
    fn comparison_judges_both_pipelines_on_the_faces_both_found() {
        let errors = |nme: f32, pose: f32| Judged {
            height: 100.0,
            counted: true,
            errors: Some(FaceErrors {
                nme: Some(nme),
                pose_deg: Some(pose),
                blend_mae: None,
                gaze_deg: None,
            }),
        };
        let missed = Judged {
            height: 100.0,
            counted: true,
            errors: None,
        };
        let counts = || DetectionCounts {
            truths: 3,
            ..Default::default()
        };
        // The MFN alone finds a hard third face; on the two both find it is 1.5× the SFN.
        let sfn = PipelineRun {
            per_face: vec![vec![errors(0.02, 2.0), errors(0.04, 2.0), missed]],
            counts: counts(),
        };
        let mfn = PipelineRun {
            per_face: vec![vec![
                errors(0.03, 3.0),
                errors(0.06, 3.0),
                errors(0.20, 9.0),
            ]],
            counts: counts(),
        };
        let c = compare_runs(&sfn, &mfn);
        assert_eq!((c.sfn.faces, c.mfn.faces, c.both.faces), (2, 3, 2));
        assert!((c.mfn.pose_deg.unwrap() - 5.0).abs() < 1e-5);
        assert!((c.both.mfn.pose_deg.unwrap() - 3.0).abs() < 1e-5);
        assert!((c.both.sfn.nme - 3.0).abs() < 1e-4);
        assert!((c.both.mfn_over_sfn.nme - 1.5).abs() < 1e-5);
        assert!((c.both.mfn_over_sfn.pose_deg.unwrap() - 1.5).abs() < 1e-5);
        assert_eq!(c.both.mfn_over_sfn.blend_mae, None);
        assert_eq!((c.mfn.recall, c.both.mfn.recall), (Some(0.0), None));

        let mut c = c;
        c.per_face = vec![FacePair {
            image: PathBuf::from("a \"b\".jpg"),
            face: 2,
            sfn: None,
            mfn: mfn.per_face[0][2].errors,
        }];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faces.csv");
        c.write_per_face_csv(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().nth(1), Some("\"a \"\"b\"\".jpg\",2,,,,20,9,"));
        let err = c.write_per_face_csv(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("cannot write"), "{err:#}");
    }

    fn observation(centre: Vec2, side: f32, score: f32) -> FaceObservation {
        let half = Vec2::splat(side / 2.0);
        FaceObservation {
            bbox: (centre - half, centre + half),
            score,
            landmarks: vec![centre; 68],
            rotation: Mat3::IDENTITY,
            blendshapes: vec![0.0; 51],
        }
    }

    /// A group photo: a human box, a points4 face, a teacher-only face, matched by centres.
    fn group_record(exhaustive: bool) -> String {
        let pts: Vec<[f32; 2]> = (0..68)
            .map(|i| [100.0 + (i % 10) as f32, 50.0 + (i / 10) as f32 * 5.0])
            .collect();
        serde_json::json!({"image": "g.jpg", "split": "test", "exhaustive": exhaustive, "faces": [
            {"annotated": true, "annotated_box": [90.0, 40.0, 120.0, 90.0], "landmarks68": pts,
             "box": [100.0, 50.0, 109.0, 80.0]},
            {"annotated": true, "points4": [[300.0, 100.0], [320.0, 100.0], [310.0, 110.0], [310.0, 120.0]],
             "box": null},
            {"annotated": false, "box": [400.0, 100.0, 430.0, 140.0]}]})
        .to_string()
    }

    #[test]
    fn group_faces_match_by_centre_with_ignore_regions_and_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups.jsonl");
        std::fs::write(
            &path,
            format!("{}\n{}\n", group_record(true), group_record(false)),
        )
        .unwrap();
        let images = read_jsonl(&path).unwrap();
        let g = &images[0];
        assert_eq!(g.matching, Matching::CentreInRegion);
        // teacher box height 30; points4: eye-mouth 20 px -> 2.03 x 20; MaskON-only would be 0.843 x box
        assert!((g.faces[0].height - 30.0).abs() < 1e-4);
        assert!((g.faces[1].height - 40.6).abs() < 1e-3);
        assert!(g.faces[1].landmarks.is_none() && !g.faces[2].confirmed);
        let (lo, hi) = g.faces[1].region.unwrap();
        // centred 0.62 x 20 px below the eye midpoint, 2.1 x 20 px wide
        assert!(((lo + hi) / 2.0 - Vec2::new(310.0, 112.4)).length() < 1e-3);
        assert!((hi.x - lo.x - 42.0).abs() < 1e-3);

        let predictions = [
            observation(Vec2::new(104.0, 60.0), 20.0, 0.9), // face 0
            observation(Vec2::new(106.0, 62.0), 20.0, 0.8), // face 0 again: a false positive
            observation(Vec2::new(312.0, 115.0), 30.0, 0.7), // face 1 (no landmarks: no NME)
            observation(Vec2::new(415.0, 120.0), 30.0, 0.95), // teacher-only: ignored
            observation(Vec2::new(600.0, 300.0), 10.0, 0.6), // nothing: a false positive
        ];
        let mut counts = DetectionCounts::default();
        let judged = judge_image(&predictions, g, &mut counts);
        assert!(judged[0].errors.unwrap().nme.is_some());
        assert!(judged[1].errors.is_some() && judged[1].errors.unwrap().nme.is_none());
        assert!(judged[2].errors.is_none() && !judged[2].counted);
        assert_eq!(
            (counts.truths, counts.matched, counts.false_positives),
            (2, 2, 2)
        );
        assert_eq!(
            counts.scored.len(),
            4,
            "the ignored prediction is not scored"
        );
        // each prediction's outcome, in the predictions' order
        use PredictionOutcome::{FalsePositive, Hit, Unjudged};
        let (_, outcomes) = judge_predictions(&predictions, g, &mut DetectionCounts::default());
        assert_eq!(outcomes, [Hit, FalsePositive, Hit, Unjudged, FalsePositive]);
        // a photo not labelled exhaustively: recall counts, false positives do not
        let mut loose = DetectionCounts::default();
        let (_, outcomes) = judge_predictions(&predictions, &images[1], &mut loose);
        assert_eq!(outcomes, [Hit, Unjudged, Hit, Unjudged, Unjudged]);
        assert_eq!(
            (loose.matched, loose.false_positives, loose.scored.len()),
            (2, 0, 0)
        );
        assert_eq!((loose.exhaustive_truths, loose.truths), (0, 2));

        let run = PipelineRun {
            per_face: vec![judged],
            counts,
        };
        let report = run.report();
        assert_eq!(report.faces, 1, "NME only where landmarks are labelled");
        assert_eq!(report.recall, Some(1.0));
        assert_eq!(report.recall_20px, Some(1.0));
        let under_40 = &report.by_size[0];
        assert_eq!(
            (under_40.height, under_40.faces, under_40.found),
            ("<40", 1, 1)
        );
        let forty = &report.by_size[1];
        assert_eq!((forty.faces, forty.found, forty.nme), (1, 1, None));
        assert!(report.by_size[2..]
            .iter()
            .all(|b| b.faces == 0 && b.recall.is_none()));
    }

    #[test]
    fn malformed_records_name_the_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(
            &path,
            "{\"image\": \"a.jpg\", \"faces\": [{\"landmarks68\": [[1, 2]]}]}\n",
        )
        .unwrap();
        let err = format!("{:#}", read_jsonl(&path).unwrap_err());
        assert!(
            err.contains("d.jsonl:1") && err.contains("faces[0]") && err.contains("68"),
            "{err}"
        );
        std::fs::write(&path, "{\"image\": 3}\n").unwrap();
        let err = format!("{:#}", read_jsonl(&path).unwrap_err());
        assert!(err.contains("d.jsonl:1") && err.contains("image"), "{err}");
    }

    #[test]
    fn rotation_error_of_a_known_turn() {
        let a = Mat3::from_rotation_y(0.3);
        let b = Mat3::from_rotation_y(0.3) * Mat3::from_rotation_x(10f32.to_radians());
        assert!((rotation_error_degrees(&a, &b) - 10.0).abs() < 1e-3);
        assert!(rotation_error_degrees(&a, &a) < 0.05);
    }

    #[test]
    fn reads_both_record_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let pts: Vec<[f32; 2]> = (0..68).map(|i| [i as f32, 2.0 * i as f32]).collect();
        let matrix: Vec<f32> = vec![
            1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1., -30., 0., 0., 0., 1.,
        ];
        let crop = serde_json::json!({"image": "a.jpg", "landmarks68": pts,
            "teacher": {"detected": true, "matrix": matrix, "blendshapes": {"jawOpen": 0.5}}});
        let scene = serde_json::json!({"image": "s.jpg", "faces": [
            {"landmarks68": pts, "confirmed": true, "matrix": matrix},
            {"landmarks68": pts, "gt_landmarks68": pts, "confirmed": false}]});
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, format!("{crop}\n{scene}\n")).unwrap();
        let images = read_jsonl(&path).unwrap();
        assert_eq!(images.len(), 2);
        assert!(!images[0].is_scene && images[1].is_scene);
        assert_eq!(images[0].path, dir.path().join("a.jpg"));
        assert_eq!(images[0].faces[0].rotation, Some(Mat3::IDENTITY));
        // Blendshapes with names missing are treated as absent, not as zeros.
        assert!(images[0].faces[0].blendshapes.is_none());
        assert_eq!(images[1].faces.len(), 2);
        assert!(!images[1].faces[1].confirmed);
        std::fs::write(&path, "{\"image\": \"x.jpg\"}\n").unwrap();
        let err = read_jsonl(&path).unwrap_err().to_string();
        assert!(err.contains("d.jsonl:1"), "{err}");
    }
}
