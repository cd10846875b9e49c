//! Vision: the networks (face detector, single-face network, multi-face network) in candle.
//!
//! Weights are the project's own, trained by `training/` and exported to `models/*.safetensors`
//! with metadata describing input, normalisation, output layout and architecture.

pub mod detect;
pub mod detector;
mod face;
pub mod mfn;
mod model_file;
pub mod ops;
pub mod pipeline;
pub mod preprocess;
pub mod program;
pub mod reid;
pub mod sfn;

pub use detect::{Detection, Letterbox};
pub use detector::Detector;
pub use face::{tight_box, CropBox, FaceObservation, BLENDSHAPE_NAMES, UNSUPPORTED_BLENDSHAPES};
pub use mfn::Mfn;
pub use model_file::{random_values, write_model, ModelError, ModelFile};
pub use pipeline::{load_pipeline, FacePipeline, MfnPipeline, SfnPipeline};
pub use reid::ReId;
pub use sfn::{Sfn, SfnConfig};

/// The folder model files are read from: `explicit`, else `$POLYFACE_MODELS`, else `./models`,
/// else the source tree's `models/` (so `cargo run` works from any folder).
pub fn models_dir(explicit: Option<&std::path::Path>) -> std::path::PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("POLYFACE_MODELS") {
        return dir.into();
    }
    let local = std::path::PathBuf::from("models");
    if local.is_dir() {
        return local;
    }
    let source_tree = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    if source_tree.is_dir() {
        source_tree
    } else {
        local
    }
}

/// The device networks run on: CPU unless a GPU feature is built and asked for.
pub fn device(name: &str) -> anyhow::Result<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        #[cfg(feature = "cuda")]
        "cuda" => candle_core::Device::new_cuda(0).map_err(|e| {
            anyhow::anyhow!("cannot open CUDA device 0 (NVIDIA GPU and driver needed): {e}")
        }),
        #[cfg(feature = "metal")]
        "metal" => candle_core::Device::new_metal(0)
            .map_err(|e| anyhow::anyhow!("cannot open the Metal device: {e}")),
        other => anyhow::bail!(
            "device {other:?} is not available in this build (built-in: cpu{}{})",
            if cfg!(feature = "cuda") { ", cuda" } else { "" },
            if cfg!(feature = "metal") {
                ", metal"
            } else {
                ""
            }
        ),
    }
}
