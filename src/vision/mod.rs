//! Vision: the networks (face detector, single-face network, multi-face network) in candle.
//!
//! Weights are the project's own, trained by `training/` and exported to `models/*.safetensors`
//! with metadata describing input, normalisation, output layout and architecture.

pub mod detector;
mod face;
pub mod heatmap;
pub mod letterbox;
pub mod mfn;
mod model_file;
pub mod ops;
pub mod pipeline;
pub mod preprocess;
pub mod program;
pub mod reid;
pub mod sfn;

pub use detector::Detector;
pub use face::{tight_box, CropBox, FaceObservation, BLENDSHAPE_NAMES, UNSUPPORTED_BLENDSHAPES};
pub use heatmap::{iou, Detection};
pub use letterbox::Letterbox;
pub use mfn::Mfn;
pub use model_file::{random_values, write_model, ModelError, ModelFile};
pub use pipeline::{load_pipeline, FacePipeline, MfnPipeline, PipelineKind, SfnPipeline};
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

/// Where the networks run (`--device auto|cpu|cuda[:N]|metal`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The build's GPU (CUDA device 0, else Metal) when it starts, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            "metal" => Ok(DeviceChoice::Metal),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(index)) => Ok(DeviceChoice::Cuda(index)),
                _ => Err(format!(
                    "{text:?} is not a device: auto, cpu, cuda, cuda:N or metal"
                )),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(index) => write!(f, "cuda:{index}"),
            DeviceChoice::Metal => write!(f, "metal"),
        }
    }
}

/// The devices this build can run networks on, for messages.
fn built_devices() -> String {
    let mut names = vec!["cpu"];
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    if cfg!(feature = "metal") {
        names.push("metal");
    }
    names.join(", ")
}

/// The device for `choice`, with a line that says which it is (and, for `auto`, why).
/// An explicit GPU that cannot start is an error; `auto` then falls back to the CPU.
pub fn open_device(choice: DeviceChoice) -> anyhow::Result<(candle_core::Device, String)> {
    let cuda = |index: usize| -> anyhow::Result<candle_core::Device> {
        #[cfg(feature = "cuda")]
        {
            candle_core::Device::new_cuda(index).map_err(|e| {
                anyhow::anyhow!(
                    "cannot open CUDA device {index} (NVIDIA GPU and driver needed): {e}"
                )
            })
        }
        #[cfg(not(feature = "cuda"))]
        {
            anyhow::bail!(
                "cuda:{index} is not available in this build (built-in: {}; build with --features cuda)",
                built_devices()
            )
        }
    };
    let metal = || -> anyhow::Result<candle_core::Device> {
        #[cfg(feature = "metal")]
        {
            candle_core::Device::new_metal(0)
                .map_err(|e| anyhow::anyhow!("cannot open the Metal device: {e}"))
        }
        #[cfg(not(feature = "metal"))]
        {
            anyhow::bail!(
                "metal is not available in this build (built-in: {}; build with --features metal)",
                built_devices()
            )
        }
    };
    match choice {
        DeviceChoice::Cpu => Ok((candle_core::Device::Cpu, "CPU".into())),
        DeviceChoice::Cuda(index) => Ok((cuda(index)?, format!("CUDA {index}"))),
        DeviceChoice::Metal => Ok((metal()?, "Metal".into())),
        DeviceChoice::Auto => {
            let mut why = Vec::new();
            if cfg!(feature = "cuda") {
                match cuda(0) {
                    Ok(device) => return Ok((device, "CUDA 0 (auto)".into())),
                    Err(e) => why.push(format!("{e:#}")),
                }
            }
            if cfg!(feature = "metal") {
                match metal() {
                    Ok(device) => return Ok((device, "Metal (auto)".into())),
                    Err(e) => why.push(format!("{e:#}")),
                }
            }
            let line = if why.is_empty() {
                "CPU (auto: this build has no GPU support)".to_string()
            } else {
                format!("CPU (auto: {})", why.join("; "))
            };
            Ok((candle_core::Device::Cpu, line))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choices_parse_and_auto_falls_back_to_the_cpu() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:2".parse(), Ok(DeviceChoice::Cuda(2)));
        assert_eq!("metal".parse(), Ok(DeviceChoice::Metal));
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!("gpu".parse::<DeviceChoice>().is_err());
        for choice in [
            DeviceChoice::Auto,
            DeviceChoice::Cuda(3),
            DeviceChoice::Metal,
        ] {
            assert_eq!(choice.to_string().parse(), Ok(choice));
        }
        let (device, line) = open_device(DeviceChoice::Cpu).unwrap();
        assert!(device.is_cpu() && line == "CPU");
        if !cfg!(feature = "cuda") && !cfg!(feature = "metal") {
            let (device, line) = open_device(DeviceChoice::Auto).unwrap();
            assert!(device.is_cpu() && line.contains("auto"), "{line}");
            let err = open_device(DeviceChoice::Cuda(0)).unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
