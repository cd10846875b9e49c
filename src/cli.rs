//! The command line: `polyface [run|track|cameras|eval|bench|render|recover] ...`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::capture::{SourceOptions, SourceSpec};

#[derive(Debug, Parser)]
#[command(
    name = "polyface",
    version,
    about = "Real-time facial motion retargeting for several people at once",
    long_about = "polyface finds every face a camera sees, tracks 68 landmarks, head pose and \
                  ARKit-style expressions per person, and drives one avatar per person.\n\n\
                  With no command it opens the app on the default camera (same as `polyface run`).",
    after_help = "Examples:\n  polyface                          open the app on the default camera\n  \
                  polyface run --input clip.mp4     open the app on a video file\n  \
                  polyface track --input shots/ --out results/\n  \
                  polyface cameras                  list cameras"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the app window: live frames with per-stage timings (the default command).
    Run(RunArgs),
    /// The headless twin of `run`: process every frame of an input without a window and write
    /// the results (timings.csv, faces.jsonl) to a folder.
    Track(TrackArgs),
    /// List the cameras this machine offers, with the index and name `--camera` accepts.
    Cameras,
    /// Measure the face networks' accuracy on labelled data (the shared JSON Lines format).
    Eval(EvalArgs),
    /// Measure pipeline latency per stage against the number of faces in the frame.
    Bench(BenchArgs),
    /// Render avatars headless into a PNG, with expression weights and a head pose.
    Render(RenderArgs),
    /// Run the app for a given time under Xvfb on a looping input, recording and streaming, and
    /// check that memory stays flat: writes soak.csv and soak.png, exits non-zero on growth.
    Soak(SoakArgs),
    /// Rebuild the animated personN.glb files of a take from its session.jsonl (after a crash).
    Recover {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// The people you named in the app (their face embeddings and settings, in your data
    /// folder): list them, forget one or everyone, or measure recognition on the shared data.
    People(PeopleArgs),
    /// Write the project's default avatars (deterministic) into a folder.
    #[command(hide = true)]
    MakeAvatars {
        #[arg(long, value_name = "DIR", default_value = "assets/avatars")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
pub struct RenderArgs {
    /// Avatar file (.glb, .gltf, .vrm); repeat to show several side by side.
    #[arg(long, value_name = "PATH", required = true)]
    pub avatar: Vec<PathBuf>,
    /// Expression weights, e.g. `--weights jawOpen=1,eyeBlinkLeft=0.5` (ARKit names, the
    /// avatar's morph target names or its VRM expressions).
    #[arg(long, value_name = "NAME=VALUE", value_delimiter = ',', value_parser = parse_weight)]
    pub weights: Vec<(String, f32)>,
    /// Head turn to the image right, degrees.
    #[arg(long, default_value = "0", allow_hyphen_values = true)]
    pub yaw: f32,
    /// Head tilt down, degrees.
    #[arg(long, default_value = "0", allow_hyphen_values = true)]
    pub pitch: f32,
    /// Head tilt counter-clockwise in the image, degrees.
    #[arg(long, default_value = "0", allow_hyphen_values = true)]
    pub roll: f32,
    /// PNG file to write.
    #[arg(long, value_name = "FILE.png")]
    pub out: PathBuf,
    /// Image size.
    #[arg(long, value_name = "WxH", value_parser = parse_resolution, default_value = "512x512")]
    pub size: (u32, u32),
}

fn parse_weight(text: &str) -> Result<(String, f32), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=VALUE"))?;
    let value: f32 = value
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {value:?} is not a number"))?;
    if !value.is_finite() {
        return Err(format!("{text:?}: the value must be finite"));
    }
    Ok((name.trim().to_string(), value))
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Face counts to measure, e.g. 1,2,5,10,20.
    #[arg(long, value_delimiter = ',', default_value = "1,2,5,10,20")]
    pub faces: Vec<usize>,
    /// Pipelines to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sfn,mfn")]
    pub pipeline: Vec<PipelineKind>,
    /// Timed frames per face count (after 5 warm-up frames).
    #[arg(long, default_value = "50")]
    pub frames: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also draw latency against faces for every pipeline into this PNG.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Measure landmark jitter on still input (and the lag smoothing adds) instead of latency.
    #[arg(long)]
    pub jitter: bool,
    /// Time the detector's and the MFN's layers one by one instead (medians over --frames passes
    /// on a frame with the first --faces count): where each network's time goes.
    #[arg(long)]
    pub layers: bool,
    /// The shared data folder (face crops to compose frames from).
    #[arg(long, value_name = "DIR", default_value = "../shared/data")]
    pub data: PathBuf,
    /// End to end: also render one avatar per person (1280×720 offscreen, MSAA) each frame and
    /// wait for the GPU, so totals run from the frame to the avatars drawn.
    #[arg(long)]
    pub avatars: bool,
    /// Compose frames from the faces in your own photos instead (a folder of images).
    #[arg(long, value_name = "DIR")]
    pub input: Option<PathBuf>,
}

pub use crate::vision::PipelineKind;

/// `track --pipeline`: a face pipeline, or `none` (frames are only read: capture timed alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineOrNone(pub Option<PipelineKind>);

fn parse_pipeline_or_none(text: &str) -> Result<PipelineOrNone, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "none" => Ok(PipelineOrNone(None)),
        "sfn" => Ok(PipelineOrNone(Some(PipelineKind::Sfn))),
        "mfn" => Ok(PipelineOrNone(Some(PipelineKind::Mfn))),
        _ => Err(format!("{text:?} is not a pipeline: sfn, mfn or none")),
    }
}

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    #[arg(long, value_enum, default_value = "sfn")]
    pub pipeline: PipelineKind,
    /// JSON Lines file: one face crop per record (`landmarks68`), one photo per record (`faces`:
    /// scenes.jsonl), or group photos with human boxes / points (groups.jsonl).
    #[arg(long, value_name = "FILE.jsonl")]
    pub data: PathBuf,
    /// Print one JSON object (keys faces, nme, fr10, pose_deg, blend_mae, recall, recall_20px,
    /// precision, ap50, by_size).
    #[arg(long)]
    pub json: bool,
    /// Crop each face from the tight box of its ground-truth landmarks instead of detecting it.
    #[arg(long)]
    pub given_boxes: bool,
    /// Run both pipelines and compare them, also on the faces both find (keys sfn, mfn, both;
    /// both.mfn_over_sfn holds the error ratios).
    #[arg(long, conflicts_with_all = ["pipeline", "given_boxes"])]
    pub compare: bool,
    /// With --compare: write each labelled face's errors under both pipelines to a CSV file.
    #[arg(long, value_name = "FILE.csv", requires = "compare")]
    pub per_face: Option<PathBuf>,
    /// With the SFN pipeline: write every face candidate (the SFN's face confidence not cut)
    /// with its crop and whether it matched a labelled face, as JSON Lines (the training data
    /// of that confidence: training/sfn/face_head.py).
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["compare", "given_boxes"])]
    pub candidates: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Evaluate at most this many faces (--given-boxes) or images.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Only records whose `split` is NAME (e.g. `test`: the scene photos never trained on).
    #[arg(long, value_name = "NAME")]
    pub split: Option<String>,
}

/// Which model files and where the networks run: shared by `run`, `track`, `eval` and `bench`.
#[derive(Debug, Clone, Default, Args)]
pub struct ModelArgs {
    /// Folder with the model files (default: $POLYFACE_MODELS, else ./models).
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Where the networks run: auto (this build's GPU when it starts, else the CPU), cpu,
    /// cuda, cuda:N or metal (GPUs need a build with `--features cuda` / `metal`).
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    pub device: crate::vision::DeviceChoice,
}

/// Where frames come from. Without `--input`, a camera is used.
#[derive(Debug, Clone, Default, Args)]
pub struct InputArgs {
    /// Camera to use: its index (0, 1, ...) or part of its name, as `polyface cameras` lists them.
    #[arg(long, value_name = "INDEX|NAME", conflicts_with = "input")]
    pub camera: Option<String>,
    /// Read frames from a video file (.mp4 .mkv .avi .webm .mov), an image, or a folder of images
    /// (sorted by name) instead of a camera.
    #[arg(long, value_name = "PATH")]
    pub input: Option<PathBuf>,
    /// Camera resolution to ask for, e.g. 1280x720 (the closest the camera offers is used).
    #[arg(long, value_name = "WxH", value_parser = parse_resolution)]
    pub resolution: Option<(u32, u32)>,
    /// Camera frame rate to ask for; the rate at which image folders and single images play.
    #[arg(long, value_name = "N", value_parser = parse_fps)]
    pub fps: Option<f64>,
}

impl InputArgs {
    pub fn spec(&self) -> SourceSpec {
        match &self.input {
            Some(path) => SourceSpec::Path(path.clone()),
            None => SourceSpec::Camera(self.camera.clone()),
        }
    }

    pub fn options(&self, looped: bool) -> SourceOptions {
        SourceOptions {
            resolution: self.resolution,
            fps: self.fps,
            looped,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Play files once instead of looping them.
    #[arg(long)]
    pub no_loop: bool,
    /// Window size in logical pixels.
    #[arg(long, value_name = "WxH", value_parser = parse_resolution, default_value = "1280x720")]
    pub window_size: (u32, u32),
    /// Close the app after this many seconds (demos, tests).
    #[arg(long, value_name = "SECONDS", hide = true)]
    pub exit_after: Option<f64>,
    /// Play a recorded take (a folder written by recording) instead of a camera: the avatars
    /// move as recorded, with a timeline.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["camera", "input"])]
    pub play: Option<PathBuf>,
    /// Start recording at once into this folder (the record button does the same).
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// Start streaming every person over VMC at once: the first to HOST:PORT, the next to
    /// PORT+1, ... (the stream button does the same).
    #[arg(long, value_name = "HOST:PORT")]
    pub stream: Option<String>,
    /// Append a JSON line of health figures (memory, GPU memory, frames, latency, stage p95) to
    /// this file every --metrics-interval seconds (`polyface soak` reads it).
    #[arg(long, value_name = "FILE.jsonl", hide = true)]
    pub metrics: Option<PathBuf>,
    #[arg(long, value_name = "SECONDS", default_value = "5", hide = true)]
    pub metrics_interval: f64,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs {
            input: InputArgs::default(),
            model: ModelArgs::default(),
            no_loop: false,
            window_size: (1280, 720),
            exit_after: None,
            play: None,
            record: None,
            stream: None,
            metrics: None,
            metrics_interval: 5.0,
        }
    }
}

/// `polyface soak`: the app under Xvfb for a given time, sampled from outside.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// The looping input: a video, an image or a folder of images with several people in it.
    #[arg(long, value_name = "PATH", conflicts_with = "faces")]
    pub input: Option<PathBuf>,
    /// Instead of --input: compose frames with N faces (HELEN test crops from --data) on a grid
    /// that pans slowly, a loop of 60 frames.
    #[arg(long, value_name = "N")]
    pub faces: Option<usize>,
    /// The shared data folder (--faces takes its crops from helen/test.jsonl).
    #[arg(long, value_name = "DIR", default_value = "../shared/data")]
    pub data: PathBuf,
    /// Input frame rate, delivered like a camera's (images and folders; a video plays at its own).
    #[arg(long, value_name = "N", value_parser = parse_fps)]
    pub fps: Option<f64>,
    /// Seconds to run the app.
    #[arg(long, default_value = "90")]
    pub duration: f64,
    /// Seconds at the start that memory growth is not judged on (models load, caches fill).
    #[arg(long, default_value = "20")]
    pub warmup: f64,
    /// Seconds between samples.
    #[arg(long, default_value = "5")]
    pub sample: f64,
    /// Fail when resident or GPU memory grows faster than this after warm-up (fitted slope).
    #[arg(long, value_name = "MB/S", default_value = "0.5")]
    pub max_growth_mb_s: f64,
    /// Fail when resident memory grows by more than this share after warm-up.
    #[arg(long, value_name = "PERCENT")]
    pub max_growth_percent: Option<f64>,
    /// Face pipeline the app runs.
    #[arg(long, value_enum, default_value = "sfn")]
    pub pipeline: PipelineKind,
    /// Window size in logical pixels.
    #[arg(long, value_name = "WxH", value_parser = parse_resolution, default_value = "1280x720")]
    pub window_size: (u32, u32),
    /// Folder for soak.csv, soak.png, summary.txt, metrics.jsonl and the app's log.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Keep the recorded take (`out/take`; removed otherwise: an hour is gigabytes).
    #[arg(long)]
    pub keep_take: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TrackArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Face pipeline to run: sfn, mfn, or none (only reads frames: timings of capture alone).
    #[arg(long, value_name = "PIPELINE", default_value = "sfn", value_parser = parse_pipeline_or_none)]
    pub pipeline: PipelineOrNone,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder to write results into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Stop after this many frames (needed to end a camera run; files end by themselves).
    #[arg(long, value_name = "N")]
    pub max_frames: Option<u64>,
    /// Also record a take into DIR: `personN.csv` (Live Link Face format) per person and
    /// `session.jsonl` (every frame's raw data).
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// Stream every person over the VMC protocol: the first to HOST:PORT, the next to PORT+1, ...
    #[arg(long, value_name = "HOST:PORT")]
    pub stream: Option<String>,
    /// Expression names sent over VMC.
    #[arg(long, value_enum, default_value = "vrm")]
    pub stream_names: crate::stream::BlendNames,
    /// One-Euro smoothing of landmarks at rest, Hz (lower: steadier, more lag).
    #[arg(long, value_name = "HZ", default_value = "1.5")]
    pub min_cutoff: f32,
    /// One-Euro speed coefficient for landmarks (higher: less lag in fast motion).
    #[arg(long, default_value = "0.02")]
    pub beta: f32,
}

fn parse_resolution(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .trim()
        .split_once(['x', 'X', '×'])
        .ok_or_else(|| format!("{text:?} is not WIDTHxHEIGHT, e.g. 1280x720"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=16384).contains(n))
    };
    match (parse(w), parse(h)) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err(format!(
            "{text:?} is not WIDTHxHEIGHT with sizes 1..16384, e.g. 1280x720"
        )),
    }
}

fn parse_fps(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(fps) if fps > 0.0 && fps <= 1000.0 => Ok(fps),
        _ => Err(format!("{text:?} is not a frame rate between 0 and 1000")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_command_means_run_and_sizes_parse() {
        let cli = Cli::try_parse_from(["polyface"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(parse_resolution("1280x720"), Ok((1280, 720)));
        assert!(parse_resolution("1280").is_err());
        assert!(parse_resolution("0x10").is_err());
        assert!(parse_fps("-3").is_err());
    }

    #[test]
    fn track_needs_out_and_camera_conflicts_with_input() {
        assert!(Cli::try_parse_from(["polyface", "track", "--input", "x"]).is_err());
        assert!(Cli::try_parse_from(["polyface", "run", "--camera", "0", "--input", "x"]).is_err());
        let cli = Cli::try_parse_from([
            "polyface", "track", "--input", "a", "--out", "b", "--fps", "12",
        ])
        .unwrap();
        let Some(Command::Track(args)) = cli.command else {
            panic!("expected track")
        };
        assert_eq!(args.input.spec(), SourceSpec::Path("a".into()));
        assert_eq!(args.input.options(false).fps, Some(12.0));
    }
}

/// `polyface people`.
#[derive(Debug, Args)]
pub struct PeopleArgs {
    #[command(subcommand)]
    pub action: PeopleAction,
    /// The people file (default: $POLYFACE_PEOPLE, else $XDG_DATA_HOME/polyface/people.json,
    /// else ~/.local/share/polyface/people.json).
    #[arg(long, value_name = "FILE", global = true)]
    pub store: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PeopleAction {
    /// Every named person: embeddings kept, avatar, neutral calibration.
    List,
    /// Delete what is stored about NAME (or everyone with --all).
    Forget {
        #[arg(value_name = "NAME", required_unless_present = "all")]
        name: Option<String>,
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// Recognition of returning people and wrong names on the held-out identities of the shared
    /// wild.jsonl, enrolling each known person from K images.
    Eval {
        /// wild.jsonl, or the shared data folder holding it.
        #[arg(long, value_name = "PATH", default_value = "../shared/data")]
        data: PathBuf,
        /// Enrolment images per person (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,3,5")]
        k: Vec<usize>,
        /// Match threshold (default: the app's).
        #[arg(long)]
        threshold: Option<f32>,
        /// Margin over the second-best name (default: the app's).
        #[arg(long)]
        margin: Option<f32>,
        /// Also enrol the known people in households of N (each alone with all strangers),
        /// with the threshold the calibration identities give for that size.
        #[arg(long, value_name = "N")]
        household: Option<usize>,
        #[command(flatten)]
        model: ModelArgs,
    },
}
