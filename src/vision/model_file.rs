//! Loading a network's safetensors file, with errors that name the file, the tensor and the shape.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}: model file not found; the trained weights ship in models/ (see training/README.md to retrain)")]
    Missing(PathBuf),
    #[error("{path}: cannot read model file: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path}: not a valid safetensors file (truncated or corrupt?): {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: metadata {key:?} is {problem}")]
    Metadata {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("{path}: tensor {tensor:?}: {problem}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        problem: String,
    },
}

/// A model file: its bytes, its string metadata, and a candle `VarBuilder` over its tensors.
pub struct ModelFile {
    pub path: PathBuf,
    pub metadata: HashMap<String, String>,
    shapes: HashMap<String, Vec<usize>>,
    vb: VarBuilder<'static>,
}

impl ModelFile {
    pub fn open(path: &Path, device: &Device) -> Result<ModelFile, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ModelError::Missing(path.to_path_buf()),
            _ => ModelError::Unreadable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            },
        })?;
        let corrupt = |reason: String| ModelError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let parsed =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let shapes = parsed
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect();
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(ModelFile {
            path: path.to_path_buf(),
            metadata,
            shapes,
            vb,
        })
    }

    /// A metadata entry, required.
    pub fn meta(&self, key: &str) -> Result<&str, ModelError> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| ModelError::Metadata {
                path: self.path.clone(),
                key: key.to_string(),
                problem: "missing".into(),
            })
    }

    /// A metadata entry holding JSON, parsed.
    pub fn meta_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T, ModelError> {
        serde_json::from_str(self.meta(key)?).map_err(|e| ModelError::Metadata {
            path: self.path.clone(),
            key: key.to_string(),
            problem: format!("not the expected JSON ({e})"),
        })
    }

    /// How much the letterbox may enlarge a frame smaller than the input (`letterbox_max_scale`;
    /// 1, never, where the file does not say): a network trained on enlarged photos says so.
    pub fn letterbox_max_scale(&self) -> Result<f32, ModelError> {
        let Some(text) = self.metadata.get("letterbox_max_scale") else {
            return Ok(1.0);
        };
        match text.parse::<f32>() {
            Ok(scale) if (1.0..=4.0).contains(&scale) => Ok(scale),
            _ => Err(ModelError::Metadata {
                path: self.path.clone(),
                key: "letterbox_max_scale".into(),
                problem: format!("{text:?} is not a number from 1 to 4"),
            }),
        }
    }

    /// A tensor's shape, if the file holds it (for tensors whose size the file chooses).
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(Vec::as_slice)
    }

    /// A tensor that must exist with exactly `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<candle_core::Tensor, ModelError> {
        let error = |problem: String| ModelError::Tensor {
            path: self.path.clone(),
            tensor: name.to_string(),
            problem,
        };
        match self.shapes.get(name) {
            None => return Err(error(format!("missing (expected shape {shape:?})"))),
            Some(found) if found != shape => {
                return Err(error(format!("has shape {found:?}, expected {shape:?}")));
            }
            Some(_) => {}
        }
        self.vb.get(shape, name).map_err(|e| error(e.to_string()))
    }
}

/// Writes f32 tensors and string metadata as a safetensors file (random-weight models for tests
/// and benchmarks; trained models come from `training/`).
pub fn write_model(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: HashMap<String, String>,
) -> anyhow::Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            Ok((
                name.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, Some(metadata), path)?;
    Ok(())
}

/// Deterministic He-scaled random values for a tensor (`fan_in` inputs per output).
pub fn random_values(count: usize, fan_in: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let scale = (3.0 / fan_in.max(1) as f32).sqrt();
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}
