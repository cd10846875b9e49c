//! Vision: the networks (face detector, single-face network, multi-face network) in candle.
//!
//! Weights are the project's own, trained by `training/` and exported to `models/*.safetensors`
//! with metadata describing input, normalisation, output layout and architecture.

mod face;
mod model_file;
pub mod ops;
pub mod sfn;

pub use face::{CropBox, FaceObservation, BLENDSHAPE_NAMES, UNSUPPORTED_BLENDSHAPES};
pub use model_file::{ModelError, ModelFile};
pub use sfn::{Sfn, SfnConfig};

/// The device networks run on: CPU unless a GPU feature is built and asked for.
pub fn device(name: &str) -> anyhow::Result<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(candle_core::Device::new_cuda(0)?),
        #[cfg(feature = "metal")]
        "metal" => Ok(candle_core::Device::new_metal(0)?),
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
