//! Image folders (sorted by file name, paced at `--fps`) and single images.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{extension_of, CaptureError, Frame, FrameSource, SourceOptions, DEFAULT_IMAGE_FPS};

/// File extensions read as images (lower case).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "gif"];

fn decode(path: &Path) -> Result<image::RgbImage, CaptureError> {
    if !path.exists() {
        return Err(CaptureError::NotFound(path.to_path_buf()));
    }
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| CaptureError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let image = reader.decode().map_err(|e| CaptureError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if image.width() == 0 || image.height() == 0 {
        return Err(CaptureError::Corrupt {
            path: path.to_path_buf(),
            reason: "image has no pixels".into(),
        });
    }
    Ok(image.into_rgb8())
}

/// The images of a folder in file-name order, one frame each.
pub struct ImageFolderSource {
    folder: PathBuf,
    name: String,
    files: Vec<PathBuf>,
    next_index: usize,
    seq: u64,
    fps: f64,
    looped: bool,
    frames_this_pass: u64,
    warnings: Vec<String>,
    warned: std::collections::HashSet<PathBuf>,
    first_size: Option<(u32, u32)>,
}

impl ImageFolderSource {
    pub fn open(folder: &Path, options: &SourceOptions) -> Result<Self, CaptureError> {
        let fps = options.fps.unwrap_or(DEFAULT_IMAGE_FPS);
        let mut source = ImageFolderSource {
            folder: folder.to_path_buf(),
            name: folder.display().to_string(),
            files: Vec::new(),
            next_index: 0,
            seq: 0,
            fps,
            looped: options.looped,
            frames_this_pass: 0,
            warnings: Vec::new(),
            warned: Default::default(),
            first_size: None,
        };
        source.files = source.list()?;
        if source.files.is_empty() {
            return Err(CaptureError::EmptyFolder(folder.to_path_buf()));
        }
        Ok(source)
    }

    /// The image files of the folder, sorted; other files are reported once as warnings.
    fn list(&mut self) -> Result<Vec<PathBuf>, CaptureError> {
        let entries = std::fs::read_dir(&self.folder).map_err(|_| {
            if self.seq == 0 {
                CaptureError::NotFound(self.folder.clone())
            } else {
                CaptureError::Disconnected(self.name.clone())
            }
        })?;
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if !path.is_file() || hidden {
                continue;
            }
            if IMAGE_EXTENSIONS.contains(&extension_of(&path).as_str()) {
                files.push(path);
            } else if self.seq == 0 {
                self.warnings.push(format!(
                    "{}: not a supported image, skipped",
                    path.display()
                ));
            }
        }
        files.sort();
        Ok(files)
    }

    /// Number of image files found in the folder.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

impl FrameSource for ImageFolderSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn resolution(&self) -> Option<(u32, u32)> {
        self.first_size
    }

    fn is_live(&self) -> bool {
        false
    }

    fn fps(&self) -> Option<f64> {
        Some(self.fps)
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        loop {
            if self.next_index >= self.files.len() {
                if self.frames_this_pass == 0 {
                    // Every file failed to decode: nothing to show.
                    return Err(CaptureError::EmptyFolder(self.folder.clone()));
                }
                if !self.looped {
                    return Ok(None);
                }
                self.files = self.list()?;
                self.next_index = 0;
                self.frames_this_pass = 0;
                if self.files.is_empty() {
                    return Err(CaptureError::EmptyFolder(self.folder.clone()));
                }
            }
            let path = self.files[self.next_index].clone();
            self.next_index += 1;
            if !self.folder.is_dir() {
                return Err(CaptureError::Disconnected(self.name.clone()));
            }
            let started = Instant::now();
            match decode(&path) {
                Ok(image) => {
                    self.first_size.get_or_insert(image.dimensions());
                    let frame = Frame {
                        seq: self.seq,
                        captured_at: Instant::now(),
                        timestamp: Duration::from_secs_f64(self.seq as f64 / self.fps),
                        decode_time: started.elapsed(),
                        image,
                    };
                    self.seq += 1;
                    self.frames_this_pass += 1;
                    return Ok(Some(frame));
                }
                Err(CaptureError::NotFound(_)) if !self.folder.is_dir() => {
                    return Err(CaptureError::Disconnected(self.name.clone()));
                }
                Err(e) => {
                    if self.warned.insert(path) {
                        self.warnings.push(format!("{e}; skipped"));
                    }
                }
            }
        }
    }

    fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }
}

/// One image, delivered once (or repeated at `--fps` when looped, so the app shows it live).
pub struct SingleImageSource {
    name: String,
    image: image::RgbImage,
    seq: u64,
    fps: f64,
    looped: bool,
}

impl SingleImageSource {
    pub fn open(path: &Path, options: &SourceOptions) -> Result<Self, CaptureError> {
        let fps = options.fps.unwrap_or(DEFAULT_IMAGE_FPS);
        Ok(SingleImageSource {
            name: path.display().to_string(),
            image: decode(path)?,
            seq: 0,
            fps,
            looped: options.looped,
        })
    }
}

impl FrameSource for SingleImageSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn resolution(&self) -> Option<(u32, u32)> {
        Some(self.image.dimensions())
    }

    fn is_live(&self) -> bool {
        false
    }

    fn fps(&self) -> Option<f64> {
        Some(self.fps)
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        if self.seq > 0 && !self.looped {
            return Ok(None);
        }
        let frame = Frame {
            seq: self.seq,
            captured_at: Instant::now(),
            timestamp: Duration::from_secs_f64(self.seq as f64 / self.fps),
            decode_time: Duration::ZERO,
            image: self.image.clone(),
        };
        self.seq += 1;
        Ok(Some(frame))
    }
}
