//! App settings that persist between runs (camera, overlay toggles, smoothing), as JSON in the
//! user's config folder. A missing or unreadable file means defaults, never a failure.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::track::Smoothing;
use crate::vision::PipelineKind;

/// What the app's main area shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ViewMode {
    /// Camera and avatars side by side.
    #[default]
    Both,
    Camera,
    Avatars,
}

impl ViewMode {
    pub const ALL: [ViewMode; 3] = [ViewMode::Both, ViewMode::Camera, ViewMode::Avatars];

    pub fn name(self) -> &'static str {
        match self {
            ViewMode::Both => "both",
            ViewMode::Camera => "camera",
            ViewMode::Avatars => "avatars",
        }
    }

    /// The next view (the `V` shortcut): both → camera → avatars → both.
    pub fn next(self) -> ViewMode {
        match self {
            ViewMode::Both => ViewMode::Camera,
            ViewMode::Camera => ViewMode::Avatars,
            ViewMode::Avatars => ViewMode::Both,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Camera to open when neither --camera nor --input is given.
    pub camera: Option<String>,
    pub show_boxes: bool,
    pub show_ids: bool,
    pub show_landmarks: bool,
    pub show_axes: bool,
    pub show_timing_plot: bool,
    pub smoothing: Smoothing,
    /// Face pipeline ("sfn" / "mfn" in the file).
    pub pipeline: PipelineKind,
    /// What the main area shows ("both", "camera" or "avatars" in the file).
    pub view: ViewMode,
    /// Avatar file per person slot (person ID 1, 2, ...); empty = the default character.
    pub avatars: Vec<Option<PathBuf>>,
    /// Mirror the puppets (head turns and left/right expressions), like a mirror image.
    pub mirror: bool,
    /// VMC receivers by person name ("Ana" → "192.168.1.20:39540"): a named person listed here
    /// is always streamed there; everyone else gets the base port + n rule.
    pub vmc_routes: std::collections::BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            camera: None,
            show_boxes: true,
            show_ids: true,
            show_landmarks: true,
            show_axes: true,
            show_timing_plot: true,
            smoothing: Smoothing::default(),
            pipeline: PipelineKind::default(),
            view: ViewMode::default(),
            avatars: Vec::new(),
            mirror: true,
            vmc_routes: Default::default(),
        }
    }
}

impl Settings {
    /// `$POLYFACE_CONFIG`, else `$XDG_CONFIG_HOME/polyface/settings.json`, else
    /// `~/.config/polyface/settings.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("POLYFACE_CONFIG") {
            return Some(path.into());
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("polyface/settings.json"))
    }

    /// The settings at `path`; defaults (with a warning) when the file is missing or unreadable.
    pub fn load(path: &Path) -> Settings {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                log::warn!(
                    "{}: unreadable settings ({e}); using defaults",
                    path.display()
                );
                Settings::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Settings::default(),
            Err(e) => {
                log::warn!(
                    "{}: cannot read settings ({e}); using defaults",
                    path.display()
                );
                Settings::default()
            }
        }
    }

    /// Writes atomically (temporary file, then rename), so a crash never leaves half a file.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create", dir.display()))?;
        }
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("{}: cannot write settings", temporary.display()))?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("{}: cannot write settings", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_survive_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/settings.json");
        assert_eq!(Settings::load(&path), Settings::default());
        let mut settings = Settings {
            camera: Some("Logitech".into()),
            show_axes: false,
            ..Default::default()
        };
        settings.smoothing.landmarks.min_cutoff = 0.7;
        settings.save(&path).unwrap();
        assert_eq!(Settings::load(&path), settings);
        std::fs::write(&path, "{ not json").unwrap();
        assert_eq!(Settings::load(&path), Settings::default());
        // Unknown and missing keys: the rest still loads.
        std::fs::write(&path, r#"{"camera": "1", "future_option": 3}"#).unwrap();
        assert_eq!(Settings::load(&path).camera.as_deref(), Some("1"));
        // the choices are enums, written as their names (files of earlier versions read the same)
        std::fs::write(&path, r#"{"pipeline": "mfn", "view": "avatars"}"#).unwrap();
        let loaded = Settings::load(&path);
        assert_eq!(
            (loaded.pipeline, loaded.view),
            (PipelineKind::Mfn, ViewMode::Avatars)
        );
        loaded.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""pipeline": "mfn""#) && text.contains(r#""view": "avatars""#));
    }

    #[test]
    fn views_cycle_through_all_three() {
        let mut view = ViewMode::default();
        for expected in [ViewMode::Camera, ViewMode::Avatars, ViewMode::Both] {
            view = view.next();
            assert_eq!(view, expected);
        }
        assert_eq!(
            ViewMode::ALL.map(ViewMode::name),
            ["both", "camera", "avatars"]
        );
    }
}
