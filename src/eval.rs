//! `polyface eval`: accuracy of the face networks on the shared JSON Lines data.
//!
//! Reads both record kinds: one face crop per record (`landmarks68`), and one photo per record
//! with a `faces` list. Ground truth landmarks are `gt_landmarks68` where present (human), else
//! `landmarks68`. Metrics: inter-ocular NME over 68 points (outer eye corners 36–45), failure
//! rate at 10 %, head-pose error in degrees and blendshape MAE against the teacher.
//! `--compare` runs both pipelines and also judges them on the faces both find.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use glam::{Mat3, Vec2};
use serde::Serialize;

use crate::vision::{CropBox, FaceObservation, Sfn, BLENDSHAPE_NAMES};

/// One labelled face.
#[derive(Clone, Debug)]
pub struct LabelledFace {
    pub landmarks: Vec<Vec2>,
    /// Teacher head rotation (canonical face → camera), when the teacher saw the face.
    pub rotation: Option<Mat3>,
    /// Teacher blendshapes in [`BLENDSHAPE_NAMES`] order, when present.
    pub blendshapes: Option<Vec<f32>>,
    /// False for faces the data marks as unconfirmed: neither positives nor negatives.
    pub confirmed: bool,
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
}

fn points(value: &serde_json::Value) -> Option<Vec<Vec2>> {
    let list = value.as_array()?;
    let pts: Option<Vec<Vec2>> = list
        .iter()
        .map(|p| {
            Some(Vec2::new(
                p.get(0)?.as_f64()? as f32,
                p.get(1)?.as_f64()? as f32,
            ))
        })
        .collect();
    pts.filter(|p| p.len() == 68)
}

fn rotation(matrix: &serde_json::Value) -> Option<Mat3> {
    let m: Vec<f32> = matrix
        .as_array()?
        .iter()
        .map(|v| v.as_f64().map(|f| f as f32))
        .collect::<Option<_>>()?;
    if m.len() != 16 {
        return None;
    }
    // Row-major 4×4; glam wants columns.
    Some(Mat3::from_cols(
        glam::Vec3::new(m[0], m[4], m[8]),
        glam::Vec3::new(m[1], m[5], m[9]),
        glam::Vec3::new(m[2], m[6], m[10]),
    ))
}

fn blendshapes(map: &serde_json::Value) -> Option<Vec<f32>> {
    let map = map.as_object()?;
    BLENDSHAPE_NAMES
        .iter()
        .map(|name| map.get(*name).and_then(|v| v.as_f64()).map(|v| v as f32))
        .collect()
}

fn face_from(record: &serde_json::Value, teacher: &serde_json::Value) -> Option<LabelledFace> {
    let landmarks = points(&record["gt_landmarks68"]).or_else(|| points(&record["landmarks68"]))?;
    Some(LabelledFace {
        landmarks,
        rotation: rotation(&teacher["matrix"]),
        blendshapes: blendshapes(&teacher["blendshapes"]),
        confirmed: record["confirmed"].as_bool().unwrap_or(true),
    })
}

/// Reads a JSONL file of either record kind. Image paths are relative to the file's folder.
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
        let record: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not valid JSON", path.display(), number + 1))?;
        let Some(image) = record["image"].as_str() else {
            bail!("{}:{}: record has no \"image\"", path.display(), number + 1);
        };
        let (faces, is_scene) = if let Some(faces) = record["faces"].as_array() {
            (faces.iter().filter_map(|f| face_from(f, f)).collect(), true)
        } else {
            let face = face_from(&record, &record["teacher"])
                .with_context(|| format!("{}:{}: no 68 landmarks", path.display(), number + 1))?;
            (vec![face], false)
        };
        images.push(LabelledImage {
            path: base.join(image),
            split: record["split"].as_str().map(str::to_string),
            faces,
            is_scene,
        });
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
    pub faces: usize,
    pub nme: f32,
    pub fr10: f32,
    pub pose_deg: Option<f32>,
    pub blend_mae: Option<f32>,
    pub recall: Option<f32>,
    pub precision: Option<f32>,
    pub ap50: Option<f32>,
}

/// The errors of one prediction against its labelled face (NME a fraction, pose in degrees).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaceErrors {
    pub nme: f32,
    pub pose_deg: Option<f32>,
    pub blend_mae: Option<f32>,
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
        Self {
            nme: nme(&predicted.landmarks, &truth.landmarks),
            pose_deg: truth
                .rotation
                .as_ref()
                .map(|r| rotation_error_degrees(&predicted.rotation, r)),
            blend_mae,
        }
    }
}

#[derive(Default)]
struct Accumulator {
    nmes: Vec<f32>,
    pose: Vec<f32>,
    blend: Vec<f32>,
}

impl Accumulator {
    fn add(&mut self, errors: &FaceErrors) {
        self.nmes.push(errors.nme);
        self.pose.extend(errors.pose_deg);
        self.blend.extend(errors.blend_mae);
    }

    fn report(&self) -> EvalReport {
        let mean = |v: &[f32]| (!v.is_empty()).then(|| v.iter().sum::<f32>() / v.len() as f32);
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
            recall: None,
            precision: None,
            ap50: None,
        }
    }
}

/// SFN accuracy with the crop made from the tight box of the ground-truth landmarks
/// (`--given-boxes`, as 300-W evaluation does).
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
        let faces: Vec<&LabelledFace> = image.faces.iter().filter(|f| f.confirmed).collect();
        if faces.is_empty() {
            continue;
        }
        let frame = image::open(&image.path)
            .with_context(|| format!("{}: cannot read image", image.path.display()))?
            .into_rgb8();
        let crops: Vec<CropBox> = faces
            .iter()
            .filter_map(|f| CropBox::around_points(&f.landmarks, crate::vision::sfn::CROP_SCALE))
            .collect();
        let predictions = sfn.observe(&frame, &crops)?;
        for (prediction, truth) in predictions.iter().zip(&faces) {
            acc.add(&FaceErrors::of(prediction, truth));
            seen += 1;
        }
    }
    Ok(acc.report())
}

/// Predictions whose landmark box is shorter than this are not judged (small faces are not
/// labelled in the data).
pub const MIN_JUDGED_HEIGHT: f32 = 30.0;

/// Detection bookkeeping at IoU 0.5: matches, misses, false positives, and scored hits for AP.
#[derive(Default)]
struct DetectionCounts {
    truths: usize,
    matched: usize,
    false_positives: usize,
    /// (score, is true positive) of every judged prediction.
    scored: Vec<(f32, bool)>,
}

impl DetectionCounts {
    fn precision(&self) -> Option<f32> {
        let judged = self.matched + self.false_positives;
        (judged > 0).then(|| self.matched as f32 / judged as f32)
    }

    fn recall(&self) -> Option<f32> {
        (self.truths > 0).then(|| self.matched as f32 / self.truths as f32)
    }

    /// Area under the precision–recall curve (all-point interpolation, as VOC 2010+).
    fn average_precision(&self) -> Option<f32> {
        if self.truths == 0 {
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
            points.push((tp as f32 / self.truths as f32, tp as f32 / (tp + fp) as f32));
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

/// What one pipeline found in every image: the errors of the prediction matched to each
/// confirmed labelled face (`None` where it found none), and the detection counts.
struct PipelineRun {
    per_face: Vec<Vec<Option<FaceErrors>>>,
    counts: DetectionCounts,
}

impl PipelineRun {
    fn report(&self) -> EvalReport {
        let mut report = self.report_where(|_, _| true);
        report.recall = self.counts.recall();
        report.precision = self.counts.precision();
        report.ap50 = self.counts.average_precision();
        report
    }

    /// Landmark, pose and blendshape errors over the found faces that `keep(image, face)` keeps
    /// (no detection figures: those are the whole run's).
    fn report_where(&self, keep: impl Fn(usize, usize) -> bool) -> EvalReport {
        let mut acc = Accumulator::default();
        for (i, faces) in self.per_face.iter().enumerate() {
            for (f, errors) in faces.iter().enumerate() {
                if let Some(errors) = errors.as_ref().filter(|_| keep(i, f)) {
                    acc.add(errors);
                }
            }
        }
        acc.report()
    }

    fn found(&self, image: usize, face: usize) -> bool {
        self.per_face[image][face].is_some()
    }
}

/// Runs whole pipelines (detection included) on every image, each image read once for all of
/// them. Each prediction is matched to a labelled face by the IoU (≥ 0.5) of the tight boxes of
/// the predicted and labelled 68 points.
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
            let found = judge_image(&mut **pipeline, &frame, image, &mut run.counts)?;
            run.per_face.push(found);
        }
    }
    Ok(runs)
}

/// One pipeline on one image: the errors of the prediction matched to each labelled face.
fn judge_image(
    pipeline: &mut dyn crate::vision::FacePipeline,
    frame: &image::RgbImage,
    image: &LabelledImage,
    counts: &mut DetectionCounts,
) -> Result<Vec<Option<FaceErrors>>> {
    use crate::vision::detect::iou;
    use crate::vision::tight_box;
    pipeline.reset();
    let mut timings = crate::timing::FrameTimings::new(0);
    let mut predictions = pipeline.process(frame, &mut timings)?;
    predictions.sort_by(|a, b| b.score.total_cmp(&a.score));
    let truth_boxes: Vec<(Vec2, Vec2)> = image
        .faces
        .iter()
        .map(|f| tight_box(&f.landmarks).unwrap_or((Vec2::ZERO, Vec2::ZERO)))
        .collect();
    let mut taken = vec![false; image.faces.len()];
    let mut found = vec![None; image.faces.len()];
    counts.truths += image.faces.iter().filter(|f| f.confirmed).count();
    for prediction in &predictions {
        let best = truth_boxes
            .iter()
            .enumerate()
            .filter(|(i, _)| !taken[*i])
            .map(|(i, b)| (i, iou(&prediction.bbox, b)))
            .filter(|(_, overlap)| *overlap >= 0.5)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let judged = prediction.bbox.1.y - prediction.bbox.0.y >= MIN_JUDGED_HEIGHT;
        match best {
            Some((i, _)) => {
                taken[i] = true;
                if image.faces[i].confirmed {
                    counts.matched += 1;
                    counts.scored.push((prediction.score, true));
                    found[i] = Some(FaceErrors::of(prediction, &image.faces[i]));
                }
            }
            None if judged => {
                counts.false_positives += 1;
                counts.scored.push((prediction.score, false));
            }
            None => {}
        }
    }
    Ok(found)
}

/// Accuracy of a whole pipeline (detection included) on every image of `images`; landmark,
/// pose and blendshape errors are over the labelled faces it found (IoU ≥ 0.5).
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
                    cell(errors.map(|e| e.nme * 100.0)),
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
                    sfn: sfn_run.per_face[i][f],
                    mfn: mfn_run.per_face[i][f],
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
        let errors = |nme: f32, pose: f32| {
            Some(FaceErrors {
                nme,
                pose_deg: Some(pose),
                blend_mae: None,
            })
        };
        let counts = || DetectionCounts {
            truths: 3,
            ..Default::default()
        };
        // The MFN alone finds a hard third face; on the two both find it is 1.5× the SFN.
        let sfn = PipelineRun {
            per_face: vec![vec![errors(0.02, 2.0), errors(0.04, 2.0), None]],
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
            mfn: mfn.per_face[0][2],
        }];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faces.csv");
        c.write_per_face_csv(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().nth(1), Some("\"a \"\"b\"\".jpg\",2,,,,20,9,"));
        let err = c.write_per_face_csv(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("cannot write"), "{err:#}");
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
