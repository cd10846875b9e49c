//! `polyface bench`: per-stage latency of the face pipelines against the number of faces, on
//! frames composed from real face crops, in the paper's table form.

pub mod plot;

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Module;
use glam::Vec2;
use serde::Serialize;

use crate::timing::percentile;
use crate::track::People;
use crate::vision::sfn::{crop_batch, decode, CROP_SCALE};
use crate::vision::{CropBox, Detector, Mfn, Sfn};

/// Frame size the benchmark composes (the reference: 640×480).
pub const FRAME_SIZE: (u32, u32) = (640, 480);

/// A frame with exactly `faces` real faces laid out on a grid, and the SFN crop of each.
pub fn compose_frame(
    faces: usize,
    crops: &[(image::RgbImage, Vec<Vec2>)],
) -> (image::RgbImage, Vec<CropBox>) {
    let (width, height) = FRAME_SIZE;
    let mut frame = image::RgbImage::from_pixel(width, height, image::Rgb([70, 74, 80]));
    let columns = (faces as f32 * 4.0 / 3.0).sqrt().ceil().max(1.0) as u32;
    let rows = (faces as u32).div_ceil(columns).max(1);
    let cell = (width / columns).min(height / rows);
    let mut boxes = Vec::with_capacity(faces);
    for i in 0..faces {
        let (crop, points) = &crops[i % crops.len().max(1)];
        let (col, row) = (i as u32 % columns, i as u32 / columns);
        let resized =
            image::imageops::resize(crop, cell, cell, image::imageops::FilterType::Triangle);
        let (x0, y0) = (col * cell, row * cell);
        image::imageops::replace(&mut frame, &resized, x0 as i64, y0 as i64);
        let scale = cell as f32 / crop.width() as f32;
        let moved: Vec<Vec2> = points
            .iter()
            .map(|p| *p * scale + Vec2::new(x0 as f32, y0 as f32))
            .collect();
        if let Some(b) = CropBox::around_points(&moved, CROP_SCALE) {
            boxes.push(b);
        }
    }
    (frame, boxes)
}

/// Face crops with their landmarks from `helen/test.jsonl` of the shared data.
pub fn load_face_crops(data: &Path, count: usize) -> Result<Vec<(image::RgbImage, Vec<Vec2>)>> {
    let images = crate::eval::read_jsonl(&data.join("helen/test.jsonl"))?;
    images
        .iter()
        .take(count)
        .map(|record| {
            let crop = image::open(&record.path)
                .with_context(|| format!("{}: cannot read", record.path.display()))?
                .into_rgb8();
            let points = record.faces[0].landmarks.clone().with_context(|| {
                format!("{}: a face crop without landmarks", record.path.display())
            })?;
            Ok((crop, points))
        })
        .collect()
}

/// The face count at which [`single_face_crops`] checks a crop: the 10-face target. (At
/// 20, 53-pixel faces in the network input, both networks miss some faces and find others in
/// most crops, so few crops would pass.)
pub const CHECK_FACES: usize = 10;

/// The crops that hold one face for both networks, up to `count`, in order: in a frame of
/// [`CHECK_FACES`] copies of the crop, the detector and the MFN each find exactly that many.
/// HELEN photos often hold part of someone else's face, which both networks find: frames of the
/// first 20 crops made the MFN decode, fit and track 15 faces in the 10-face frame while the
/// SFN was given exactly 10 (`faces_found` in the results says what it got).
pub fn single_face_crops(
    crops: Vec<(image::RgbImage, Vec<Vec2>)>,
    detector: &Detector,
    mfn: &Mfn,
    count: usize,
) -> Result<Vec<(image::RgbImage, Vec<Vec2>)>> {
    let mut kept = Vec::with_capacity(count);
    for crop in crops {
        if kept.len() == count {
            break;
        }
        let copies = [crop];
        let (frame, _) = compose_frame(CHECK_FACES, &copies);
        if detector.detect(&frame)?.len() == CHECK_FACES && mfn.detect(&frame)?.len() == CHECK_FACES
        {
            let [crop] = copies;
            kept.push(crop);
        }
    }
    if kept.is_empty() {
        anyhow::bail!("no crop holds exactly one face for both networks");
    }
    Ok(kept)
}

/// Face crops from a folder of the user's own photos: every face the detector → SFN pipeline
/// finds (up to `count`), cut out as a square of 1.6× its landmark box (black beyond the photo),
/// with its landmarks in crop pixels. Unreadable files are skipped with a warning.
pub fn face_crops_from_folder(
    dir: &Path,
    models: &Path,
    count: usize,
) -> Result<Vec<(image::RgbImage, Vec<Vec2>)>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list the folder", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                crate::capture::IMAGE_EXTENSIONS.contains(&e.to_lowercase().as_str())
            })
        })
        .collect();
    files.sort();
    let mut pipeline = crate::vision::SfnPipeline::load(models, &candle_core::Device::Cpu)?;
    let mut crops = Vec::new();
    for file in files {
        let photo = match image::open(&file) {
            Ok(image) => image.into_rgb8(),
            Err(e) => {
                log::warn!("{}: skipped ({e})", file.display());
                continue;
            }
        };
        // A fresh start per photo: the pipeline follows faces between frames otherwise.
        crate::vision::FacePipeline::reset(&mut pipeline);
        let mut timings = crate::timing::FrameTimings::new(0);
        let faces = crate::vision::FacePipeline::process(&mut pipeline, &photo, &mut timings)?;
        for face in faces {
            let (min, max) = (face.bbox.0, face.bbox.1);
            let side = ((max - min).max_element() * 1.6).round().max(1.0);
            let origin = (min + max) / 2.0 - side / 2.0;
            let mut crop = image::RgbImage::new(side as u32, side as u32);
            image::imageops::replace(
                &mut crop,
                &photo,
                -origin.x.round() as i64,
                -origin.y.round() as i64,
            );
            let shift = Vec2::new(origin.x.round(), origin.y.round());
            let points = face.landmarks.iter().map(|p| *p - shift).collect();
            crops.push((crop, points));
            if crops.len() == count {
                return Ok(crops);
            }
        }
    }
    if crops.is_empty() {
        anyhow::bail!("{}: no faces found in its images", dir.display());
    }
    Ok(crops)
}

/// Median and 95th percentile of one measured stage, milliseconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Measured {
    pub median_ms: f32,
    pub p95_ms: f32,
}

fn measured(mut samples: Vec<f32>) -> Measured {
    samples.sort_by(|a, b| a.total_cmp(b));
    Measured {
        median_ms: percentile(&samples, 0.5),
        p95_ms: percentile(&samples, 0.95),
    }
}

/// One pipeline at one face count.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub pipeline: String,
    pub faces: usize,
    /// How many faces the pipeline returned in the last frame: `faces` when every crop holds one
    /// face for its networks (`single_face_crops`).
    pub faces_found: usize,
    pub median_ms: f32,
    pub p95_ms: f32,
    /// Per stage: detector, sfn (all faces, one batch: crop + network + decode), sfn_crop,
    /// sfn_network, fit_track (= fit + track); mfn, mfn_preprocess, mfn_network, mfn_decode; avatars (with
    /// `--avatars`).
    pub stages: std::collections::BTreeMap<String, Measured>,
}

/// Renders one avatar per confirmed person into an offscreen 1280×720 stage and waits for the
/// GPU to finish: the end of the frame → avatars path (`bench --avatars`).
pub struct AvatarBench {
    gpu: crate::render::Gpu,
    stage: crate::render::AvatarStage,
    slots: crate::ui::AvatarSlots,
}

impl AvatarBench {
    pub fn new() -> Result<AvatarBench> {
        let gpu = crate::render::Gpu::headless()?;
        let stage = crate::render::AvatarStage::new(&gpu.device, &gpu.queue, 1280, 720);
        let slots = crate::ui::AvatarSlots::new(&crate::avatar::default_avatar_dir());
        Ok(AvatarBench { gpu, stage, slots })
    }

    /// The GPU adapter, for the report.
    pub fn adapter(&self) -> String {
        let info = self.gpu.adapter.get_info();
        format!("{} ({:?})", info.name, info.backend)
    }

    fn draw(&mut self, people: &[crate::track::Person]) -> Result<()> {
        self.slots.render(
            &self.stage,
            &self.gpu.device,
            &self.gpu.queue,
            people,
            |p| crate::retarget::arkit_weights(&p.smoothed.blendshapes),
        );
        self.gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .context("waiting for the GPU")?;
        Ok(())
    }
}

fn ms(since: Instant) -> f32 {
    since.elapsed().as_secs_f32() * 1000.0
}

/// One network path on the frame for `faces` faces: it reports its own stage times and returns
/// the faces it found.
type Step<'a> = Box<
    dyn FnMut(&mut Vec<(&'static str, f32)>) -> Result<Vec<crate::vision::FaceObservation>> + 'a,
>;

/// One pipeline at one face count, run a frame at a time so that all cases of a run can take
/// turns: a machine that gets busier or cooler halfway through then slows every case alike, and
/// the ratios between cases (10 faces against 1, MFN against SFN) stay fair.
pub struct Case<'a> {
    pipeline: &'static str,
    faces: usize,
    frame: image::RgbImage,
    step: Step<'a>,
    people: People,
    stages: std::collections::BTreeMap<&'static str, Vec<f32>>,
    total_ms: Vec<f32>,
    frames_run: u64,
    faces_found: usize,
}

impl Case<'_> {
    /// One frame: the network path, then fit and tracking, then the avatars when given.
    fn run_one(&mut self, record: bool, avatars: Option<&mut AvatarBench>) -> Result<()> {
        let mut times = Vec::new();
        let start = Instant::now();
        let observations = (self.step)(&mut times)?;
        self.faces_found = observations.len();
        let t = Instant::now();
        let i = self.frames_run;
        let mut timings = crate::timing::FrameTimings::new(i);
        let persons = self.people.update(
            self.frame.dimensions(),
            observations,
            i as f64 / 30.0,
            &mut timings,
        );
        times.push(("fit_track", ms(t)));
        // Its two parts, as the app's timing panel shows them.
        for stage in [crate::timing::Stage::Fit, crate::timing::Stage::Track] {
            times.push((stage.name(), timings.get(stage).unwrap_or(0.0)));
        }
        if let Some(avatars) = avatars {
            let t = Instant::now();
            avatars.draw(&persons)?;
            times.push(("avatars", ms(t)));
        }
        self.frames_run += 1;
        if record {
            for (name, value) in times {
                self.stages.entry(name).or_default().push(value);
            }
            self.total_ms.push(ms(start));
        }
        Ok(())
    }

    fn result(self) -> BenchResult {
        let total = measured(self.total_ms);
        BenchResult {
            pipeline: self.pipeline.into(),
            faces: self.faces,
            faces_found: self.faces_found,
            median_ms: total.median_ms,
            p95_ms: total.p95_ms,
            stages: self
                .stages
                .into_iter()
                .map(|(name, values)| (name.to_string(), measured(values)))
                .collect(),
        }
    }
}

/// Runs every case for `warmup` uncounted frames, then `frames` counted ones, the cases taking
/// turns frame by frame; results in the order of `cases`.
pub fn run_interleaved(
    mut cases: Vec<Case<'_>>,
    (frames, warmup): (usize, usize),
    mut avatars: Option<&mut AvatarBench>,
) -> Result<Vec<BenchResult>> {
    for round in 0..warmup + frames {
        for case in &mut cases {
            case.run_one(round >= warmup, avatars.as_deref_mut())?;
        }
    }
    Ok(cases.into_iter().map(Case::result).collect())
}

/// Detector on the whole frame + the SFN on every face in one batch + fit and tracking.
pub fn sfn_case<'a>(
    detector: &'a Detector,
    sfn: &'a Sfn,
    crops: &[(image::RgbImage, Vec<Vec2>)],
    faces: usize,
) -> Case<'a> {
    let (frame, boxes) = compose_frame(faces, crops);
    let device = sfn.device().clone();
    let network_frame = frame.clone();
    let step: Step<'a> = Box::new(move |times| {
        let frame = &network_frame;
        let t = Instant::now();
        let _detections = detector.detect(frame)?;
        times.push(("detector", ms(t)));
        // The benchmark gives the SFN the known face crops, so its cost is measured for exactly
        // `faces` faces whatever the detector finds.
        let t = Instant::now();
        let input = crop_batch(frame, &boxes, &device)?;
        times.push(("sfn_crop", ms(t)));
        let t_net = Instant::now();
        let raw = sfn.forward(&input)?;
        device.synchronize()?; // GPU work is queued: wait for it so the stage time is its own
        times.push(("sfn_network", ms(t_net)));
        let observations = decode(&raw, &boxes)?;
        times.push(("sfn", ms(t)));
        Ok(observations)
    });
    case("sfn", faces, frame, step)
}

/// The multi-face network on the whole frame (one pass, every face) + fit and tracking.
pub fn mfn_case<'a>(
    mfn: &'a Mfn,
    crops: &[(image::RgbImage, Vec<Vec2>)],
    faces: usize,
) -> Case<'a> {
    let (frame, _) = compose_frame(faces, crops);
    let network_frame = frame.clone();
    let step: Step<'a> = Box::new(move |times| {
        let start = Instant::now();
        let (input, letterbox) = mfn.prepare(&network_frame)?;
        times.push(("mfn_preprocess", ms(start)));
        let t = Instant::now();
        let output = mfn.forward(&input)?;
        mfn.device().synchronize()?;
        times.push(("mfn_network", ms(t)));
        let t = Instant::now();
        let observations = mfn.decode(&output, &letterbox)?;
        times.push(("mfn_decode", ms(t)));
        times.push(("mfn", ms(start)));
        Ok(observations)
    });
    case("mfn", faces, frame, step)
}

fn case<'a>(
    pipeline: &'static str,
    faces: usize,
    frame: image::RgbImage,
    step: Step<'a>,
) -> Case<'a> {
    Case {
        pipeline,
        faces,
        frame,
        step,
        people: People::default(),
        stages: Default::default(),
        total_ms: Vec::new(),
        frames_run: 0,
        faces_found: 0,
    }
}

/// Largest difference between the networks' raw outputs on `device` and on the CPU, per network
/// (SFN on `faces` crops in one batch, MFN on the composed frame): a GPU run checks itself before
/// its timings are trusted.
pub fn check_against_cpu(
    models: &Path,
    device: &candle_core::Device,
    crops: &[(image::RgbImage, Vec<Vec2>)],
    faces: usize,
) -> Result<Vec<(&'static str, f32)>> {
    let cpu = candle_core::Device::Cpu;
    let (frame, boxes) = compose_frame(faces, crops);
    let max_diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| -> Result<f32> {
        let a = a.to_device(&cpu)?.flatten_all()?;
        let b = b.to_device(&cpu)?.flatten_all()?;
        Ok((a - b)?.abs()?.max(0)?.to_scalar::<f32>()?)
    };
    let sfn_path = models.join("sfn.safetensors");
    let (sfn_cpu, sfn_dev) = (Sfn::load(&sfn_path, &cpu)?, Sfn::load(&sfn_path, device)?);
    let input = crop_batch(&frame, &boxes, &cpu)?;
    let sfn = max_diff(
        &sfn_cpu.forward(&input)?,
        &sfn_dev.forward(&input.to_device(device)?)?,
    )?;
    let mfn_path = models.join("mfn.safetensors");
    let (mfn_cpu, mfn_dev) = (Mfn::load(&mfn_path, &cpu)?, Mfn::load(&mfn_path, device)?);
    let (input, _) = mfn_cpu.prepare(&frame)?;
    let on_cpu = mfn_cpu.forward(&input)?;
    let on_device = mfn_dev.forward(&input.to_device(device)?)?;
    let mfn = max_diff(&on_cpu.detection, &on_device.detection)?
        .max(max_diff(&on_cpu.face, &on_device.face)?);
    Ok(vec![("sfn", sfn), ("mfn", mfn)])
}

/// The table in the paper's form: faces → detector, SFN (all faces and per face), SFN-pipeline
/// total, MFN total, and their ratio. Columns of a pipeline not measured show "-".
pub fn table(results: &[BenchResult]) -> String {
    let mut out = String::from(
        "faces | detector ms | SFN ms (all) | SFN ms/face | SFN total ms (p95) | MFN total ms (p95) | MFN/SFN\n",
    );
    out.push_str(
        "------|-------------|--------------|-------------|--------------------|--------------------|--------\n",
    );
    let mut counts: Vec<usize> = results.iter().map(|r| r.faces).collect();
    counts.sort_unstable();
    counts.dedup();
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for faces in counts {
        let find = |p: &str| results.iter().find(|r| r.faces == faces && r.pipeline == p);
        let (sfn, mfn) = (find("sfn"), find("mfn"));
        let stage = |name: &str| sfn.and_then(|r| r.stages.get(name)).map(|m| m.median_ms);
        let total =
            |r: Option<&BenchResult>| r.map(|r| format!("{:.2} ({:.2})", r.median_ms, r.p95_ms));
        let ratio = match (sfn, mfn) {
            (Some(s), Some(m)) => Some(format!("{:.2}", m.median_ms / s.median_ms)),
            _ => None,
        };
        out.push_str(&format!(
            "{:>5} | {:>11} | {:>12} | {:>11} | {:>18} | {:>18} | {:>7}\n",
            faces,
            dash(stage("detector").map(|v| format!("{v:.2}"))),
            dash(stage("sfn").map(|v| format!("{v:.2}"))),
            dash(stage("sfn").map(|v| format!("{:.2}", v / faces.max(1) as f32))),
            dash(total(sfn)),
            dash(total(mfn)),
            dash(ratio),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_profile_takes_each_layers_median_and_the_table_sums_blocks() {
        let mut pass = 0;
        let layers = layer_profile(5, || {
            pass += 1;
            // Layer a.x: 1, 2, ..., layer a.y: always 3, layer b: 10 × pass.
            Ok(vec![
                ("a.x".to_string(), pass as f64),
                ("a.y".to_string(), 3.0),
                ("b".to_string(), 10.0 * pass as f64),
            ])
        })
        .unwrap();
        assert_eq!(pass, 8, "3 warm-up passes + 5 timed");
        // Timed passes 4..=8: medians 6, 3, 60.
        let medians: Vec<f64> = layers.iter().map(|l| l.median_ms).collect();
        assert_eq!(medians, [6.0, 3.0, 60.0]);
        let table = layer_table("net", &layers);
        assert!(table.contains("sum of medians 69.000 ms"), "{table}");
        assert!(table.contains("a              9.000 ms"), "{table}");
        assert!(table.lines().nth(4).unwrap().contains("b "), "{table}");
    }

    #[test]
    fn composed_frames_hold_the_asked_number_of_faces_inside_the_frame() {
        let crop = image::RgbImage::from_pixel(256, 256, image::Rgb([200, 150, 120]));
        let points: Vec<Vec2> = (0..68)
            .map(|i| Vec2::new(80.0 + (i % 10) as f32 * 10.0, 80.0 + (i / 10) as f32 * 14.0))
            .collect();
        for faces in [1, 2, 5, 10, 20] {
            let (frame, boxes) = compose_frame(faces, &[(crop.clone(), points.clone())]);
            assert_eq!(frame.dimensions(), FRAME_SIZE);
            assert_eq!(boxes.len(), faces);
            for b in &boxes {
                assert!(
                    b.center.x > 0.0
                        && b.center.x < 640.0
                        && b.center.y > 0.0
                        && b.center.y < 480.0
                );
            }
        }
    }
}

/// One network layer's median wall time over repeated passes.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LayerTime {
    pub layer: String,
    pub median_ms: f64,
}

/// Runs `pass` (one forward pass returning each layer's time) 3 times to warm up, then
/// `frames` times; the median of every layer, in layer order.
pub fn layer_profile(
    frames: usize,
    mut pass: impl FnMut() -> Result<Vec<(String, f64)>>,
) -> Result<Vec<LayerTime>> {
    for _ in 0..3 {
        pass()?;
    }
    let mut runs: Vec<Vec<(String, f64)>> = Vec::with_capacity(frames.max(1));
    for _ in 0..frames.max(1) {
        runs.push(pass()?);
    }
    let layers = runs[0].len();
    Ok((0..layers)
        .map(|i| {
            // The same nearest-rank median as every other bench figure.
            let mut samples: Vec<f32> = runs.iter().map(|run| run[i].1 as f32).collect();
            samples.sort_by(|a, b| a.total_cmp(b));
            LayerTime {
                layer: runs[0][i].0.clone(),
                median_ms: percentile(&samples, 0.5) as f64,
            }
        })
        .collect())
}

/// The layer profile as text: each block (the layer name up to its first '.') with its share of
/// the sum, then the ten slowest layers.
pub fn layer_table(network: &str, layers: &[LayerTime]) -> String {
    let total: f64 = layers.iter().map(|l| l.median_ms).sum();
    let mut blocks: Vec<(String, f64)> = Vec::new();
    for l in layers {
        let block = l.layer.split('.').next().unwrap_or(&l.layer).to_string();
        match blocks.iter_mut().find(|(b, _)| *b == block) {
            Some((_, ms)) => *ms += l.median_ms,
            None => blocks.push((block, l.median_ms)),
        }
    }
    let mut out = format!(
        "{network}: {} layers, sum of medians {total:.3} ms\n",
        layers.len()
    );
    for (block, ms) in &blocks {
        out += &format!("  {block:<12} {ms:7.3} ms {:5.1} %\n", 100.0 * ms / total);
    }
    let mut slowest: Vec<&LayerTime> = layers.iter().collect();
    slowest.sort_by(|a, b| b.median_ms.total_cmp(&a.median_ms));
    out += "  slowest:\n";
    for l in slowest.iter().take(10) {
        out += &format!("    {:<24} {:7.3} ms\n", l.layer, l.median_ms);
    }
    out
}

/// Landmark jitter on still input, and the lag smoothing adds.
#[derive(Clone, Debug, Serialize)]
pub struct JitterReport {
    pub faces: usize,
    pub frames: usize,
    /// Std of landmark positions over frames, % of the inter-ocular distance (mean of 68 points
    /// and of all faces), straight from the network.
    pub raw_pct: f32,
    /// The same after One-Euro smoothing.
    pub smoothed_pct: f32,
    /// Time for the smoothed landmarks to cover 90 % of a sudden 5 % shift of the face, ms at
    /// 30 fps (how much lag the smoothing adds; 0 = none).
    pub lag_ms: f32,
}

/// Per-frame sensor-like noise: each pixel and channel ±`amplitude` levels (uniform), seeded.
fn noisy(image: &image::RgbImage, amplitude: i32, seed: u32) -> image::RgbImage {
    let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
    let mut out = image.clone();
    for value in out.iter_mut() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let delta = (state % (2 * amplitude as u32 + 1)) as i32 - amplitude;
        *value = (*value as i32 + delta).clamp(0, 255) as u8;
    }
    out
}

/// Runs the SFN the way the tracking path does (each frame cropped from the previous frame's
/// landmarks) on a still face with per-frame noise, then on a sudden shift, through the tracker.
pub fn bench_jitter(
    sfn: &Sfn,
    crops: &[(image::RgbImage, Vec<Vec2>)],
    frames: usize,
) -> Result<JitterReport> {
    let device = sfn.device().clone();
    let (mut raw_total, mut smooth_total, mut lag_total) = (0f32, 0f32, 0f32);
    for (index, (image, truth)) in crops.iter().enumerate() {
        let iod = truth[36].distance(truth[45]).max(1.0);
        let shift = 0.05 * iod;
        let mut crop = CropBox::around_points(truth, CROP_SCALE).context("ground-truth box")?;
        let mut people = People::default();
        let mut raw_tracks: Vec<Vec<Vec2>> = Vec::new();
        let mut smooth_tracks: Vec<Vec<Vec2>> = Vec::new();
        let mut lag_frames = None;
        let settle = 10;
        let total = frames + 30;
        for f in 0..total {
            let shifted = f >= frames;
            let mut frame = noisy(image, 3, (index * 1000 + f) as u32);
            if shifted {
                // Move the face right by `shift` pixels (whole pixels; the rest is sub-pixel noise).
                frame = image::imageops::crop_imm(&frame, 0, 0, frame.width(), frame.height())
                    .to_image();
                let dx = shift.round() as i64;
                let mut moved = image::RgbImage::new(frame.width(), frame.height());
                image::imageops::replace(&mut moved, &frame, dx, 0);
                frame = moved;
            }
            let input = crop_batch(&frame, &[crop], &device)?;
            let raw = sfn.forward(&input)?;
            let face = decode(&raw, &[crop])?.remove(0);
            if let Some(next) = CropBox::around_points(&face.landmarks, CROP_SCALE) {
                crop = next;
            }
            let mut timings = crate::timing::FrameTimings::new(f as u64);
            let person = people
                .update(
                    frame.dimensions(),
                    vec![face],
                    f as f64 / 30.0,
                    &mut timings,
                )
                .into_iter()
                .next()
                .context("the tracker lost a still face")?;
            if !shifted && f >= settle {
                raw_tracks.push(person.raw.landmarks.clone());
                smooth_tracks.push(person.smoothed.landmarks.clone());
            }
            if shifted && lag_frames.is_none() {
                let before: Vec2 = smooth_tracks
                    .last()
                    .map_or(Vec2::ZERO, |l| l.iter().copied().sum::<Vec2>() / 68.0);
                let now: Vec2 = person.smoothed.landmarks.iter().copied().sum::<Vec2>() / 68.0;
                if (now.x - before.x) >= 0.9 * shift.round() {
                    lag_frames = Some(f - frames);
                }
            }
        }
        let spread = |tracks: &[Vec<Vec2>]| -> f32 {
            let n = tracks.len() as f32;
            (0..68)
                .map(|k| {
                    let mean = tracks.iter().map(|t| t[k]).sum::<Vec2>() / n;
                    (tracks
                        .iter()
                        .map(|t| t[k].distance_squared(mean))
                        .sum::<f32>()
                        / n)
                        .sqrt()
                })
                .sum::<f32>()
                / 68.0
        };
        raw_total += spread(&raw_tracks) / iod * 100.0;
        smooth_total += spread(&smooth_tracks) / iod * 100.0;
        lag_total += lag_frames.unwrap_or(30) as f32 * 1000.0 / 30.0;
    }
    let n = crops.len().max(1) as f32;
    Ok(JitterReport {
        faces: crops.len(),
        frames,
        raw_pct: raw_total / n,
        smoothed_pct: smooth_total / n,
        lag_ms: lag_total / n,
    })
}
