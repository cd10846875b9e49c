//! Which avatar each person drives: a chosen file (picker, path field, drag and drop) or a
//! default character by person ID. Each avatar file is loaded once (CPU model + GPU mesh) and
//! shared by everyone who wears it; a person adds only their pose buffers, dropped when they
//! leave. A file that cannot be loaded is reported and the person falls back to a default
//! avatar; the app keeps running. The stage is drawn only when its picture would change.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::avatar::Avatar;
use crate::render::{AvatarPose, AvatarStage, GpuAvatar, GpuMesh, Orbit};
use crate::retarget::{head_rotation, Retargeter, ARKIT_52};
use crate::track::{Person, TrackState};

/// An avatar file in memory and on the GPU.
struct LoadedFile {
    avatar: Avatar,
    mesh: Arc<GpuMesh>,
    retargeter: Retargeter,
}

/// One person's avatar: the file they wear and their pose buffers on its mesh.
struct Worn {
    path: PathBuf,
    gpu: GpuAvatar,
}

/// What the stage shows: the same again needs no drawing.
#[derive(PartialEq)]
struct Picture {
    stage_generation: u64,
    size: (u32, u32),
    orbit: Orbit,
    avatars: Vec<(u32, PathBuf, AvatarPose)>,
}

#[derive(Default)]
pub struct AvatarSlots {
    defaults: Vec<PathBuf>,
    /// Person ID → the avatar file they chose.
    pub chosen: HashMap<u32, PathBuf>,
    /// Loaded avatar files: the defaults, chosen files and files someone wears.
    files: HashMap<PathBuf, LoadedFile>,
    /// Files that failed to load (not tried again every frame).
    broken: HashSet<PathBuf>,
    /// Person ID → their avatar, for the people in the last frame only.
    worn: HashMap<u32, Worn>,
    shown: Option<Picture>,
    /// Problems to show (bad files); the caller drains them.
    pub warnings: Vec<String>,
    /// Mirror head turns and left/right expressions, as a mirror image (what people expect).
    pub mirror: bool,
    /// Avatar files offered in the picker (defaults + any file a person used).
    pub known: Vec<PathBuf>,
}

impl AvatarSlots {
    pub fn new(default_dir: &Path) -> AvatarSlots {
        let defaults = crate::avatar::list_avatars(default_dir);
        AvatarSlots {
            known: defaults.clone(),
            defaults,
            mirror: true,
            ..Default::default()
        }
    }

    /// The avatar file of person `id`: their choice, else a default by ID.
    pub fn path_for(&self, id: u32) -> Option<PathBuf> {
        self.chosen.get(&id).cloned().or_else(|| {
            (!self.defaults.is_empty()).then(|| {
                self.defaults[(id as usize).saturating_sub(1) % self.defaults.len()].clone()
            })
        })
    }

    /// Gives person `id` the avatar at `path` (loaded on the next frame).
    pub fn choose(&mut self, id: u32, path: PathBuf) {
        if !self.known.contains(&path) {
            self.known.push(path.clone());
        }
        self.broken.remove(&path);
        self.chosen.insert(id, path);
    }

    /// Avatar files held in memory and on the GPU (each once, however many wear it).
    pub fn loaded_files(&self) -> usize {
        self.files.len()
    }

    /// People holding pose buffers.
    pub fn worn(&self) -> usize {
        self.worn.len()
    }

    /// Loads `path` unless it is loaded already; false (with a warning for a chosen file) when
    /// it cannot be.
    fn load_file(
        &mut self,
        stage: &AvatarStage,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        path: &Path,
    ) -> bool {
        if self.files.contains_key(path) {
            return true;
        }
        if self.broken.contains(path) {
            return false;
        }
        match Avatar::load(path) {
            Ok(avatar) => {
                let (retargeter, _) = Retargeter::by_name(&avatar.control_names());
                let mesh = stage.upload_mesh(device, queue, &avatar);
                let file = LoadedFile {
                    avatar,
                    mesh,
                    retargeter,
                };
                self.files.insert(path.to_path_buf(), file);
                true
            }
            Err(e) => {
                self.broken.insert(path.to_path_buf());
                let users: Vec<u32> = self
                    .chosen
                    .iter()
                    .filter(|(_, p)| p.as_path() == path)
                    .map(|(id, _)| *id)
                    .collect();
                for id in &users {
                    self.warnings
                        .push(format!("{e} — person #{id} keeps a default avatar"));
                    self.chosen.remove(id);
                }
                if users.is_empty() {
                    self.warnings.push(e.to_string());
                }
                self.known.retain(|p| p != path);
                false
            }
        }
    }

    /// The file person `id` wears after loading what is needed: their choice, else (when that
    /// fails) their default.
    fn wear(
        &mut self,
        stage: &AvatarStage,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        id: u32,
    ) -> Option<PathBuf> {
        let path = self.path_for(id)?;
        if self.load_file(stage, device, queue, &path) {
            return Some(path);
        }
        let fallback = self.path_for(id).filter(|p| *p != path)?;
        self.load_file(stage, device, queue, &fallback)
            .then_some(fallback)
    }

    /// Draws one avatar per confirmed person into the stage, unless the stage already shows
    /// exactly that. `weights(person)` gives the person's (calibrated) ARKit-52 weights.
    /// Returns whether it drew.
    pub fn render(
        &mut self,
        stage: &AvatarStage,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        people: &[Person],
        weights: impl Fn(&Person) -> [f32; 52],
    ) -> bool {
        let mut avatars = Vec::new();
        for person in people.iter().filter(|p| p.state == TrackState::Confirmed) {
            let Some(path) = self.wear(stage, device, queue, person.id) else {
                continue;
            };
            let file = &self.files[&path];
            let mut arkit = weights(person);
            if self.mirror {
                arkit = mirror_sides(&arkit);
            }
            let controls = file.retargeter.apply(&arkit);
            let pose = AvatarPose {
                morph_weights: file.avatar.morph_weights(&controls),
                head: head_rotation(&person.smoothed.rotation, self.mirror),
            };
            avatars.push((person.id, path, pose));
        }
        self.forget_the_departed(people);
        let picture = Picture {
            stage_generation: stage.generation(),
            size: (stage.target.width, stage.target.height),
            orbit: stage.orbit,
            avatars,
        };
        if self.shown.as_ref() == Some(&picture) {
            return false;
        }
        for (id, path, _) in &picture.avatars {
            let current = self.worn.get(id).is_some_and(|w| w.path == *path);
            if !current {
                let gpu = stage.instantiate(device, &self.files[path].mesh);
                self.worn.insert(
                    *id,
                    Worn {
                        path: path.clone(),
                        gpu,
                    },
                );
            }
        }
        let items: Vec<(&GpuAvatar, &AvatarPose)> = picture
            .avatars
            .iter()
            .map(|(id, _, pose)| (&self.worn[id].gpu, pose))
            .collect();
        stage.render(device, queue, &items);
        self.shown = Some(picture);
        true
    }

    /// Drops the pose buffers of people not in `people`, and files nobody wears that are
    /// neither a default nor someone's choice.
    fn forget_the_departed(&mut self, people: &[Person]) {
        let alive: HashSet<u32> = people.iter().map(|p| p.id).collect();
        self.worn.retain(|id, _| alive.contains(id));
        let keep: HashSet<&PathBuf> = self
            .worn
            .values()
            .map(|w| &w.path)
            .chain(&self.defaults)
            .chain(self.chosen.values())
            .collect();
        self.files.retain(|path, _| keep.contains(path));
    }

    /// A picker for person `id`: the known avatar files and a path field.
    pub fn picker(&mut self, ui: &mut egui::Ui, id: u32, path_text: &mut String) {
        let current = self.path_for(id);
        let label = |p: &Path| {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let mut picked = None;
        egui::ComboBox::from_id_salt(("avatar", id))
            .selected_text(
                current
                    .as_deref()
                    .map(label)
                    .unwrap_or_else(|| "none".into()),
            )
            .show_ui(ui, |ui| {
                for p in &self.known {
                    if ui
                        .selectable_label(current.as_ref() == Some(p), label(p))
                        .clicked()
                    {
                        picked = Some(p.clone());
                    }
                }
            });
        ui.horizontal(|ui| {
            ui.add(
                egui::TextEdit::singleline(path_text)
                    .hint_text(".glb / .vrm path")
                    .desired_width(170.0),
            );
            if ui.button("use").clicked() && !path_text.trim().is_empty() {
                picked = Some(PathBuf::from(path_text.trim()));
            }
        });
        if let Some(p) = picked {
            self.choose(id, p);
        }
    }
}

/// Swaps every Left/Right pair: a mirrored puppet winks the eye on the same side of the screen.
pub fn mirror_sides(weights: &[f32; 52]) -> [f32; 52] {
    let mut out = *weights;
    for (i, name) in ARKIT_52.iter().enumerate() {
        let other = if let Some(stem) = name.strip_suffix("Left") {
            format!("{stem}Right")
        } else if let Some(stem) = name.strip_suffix("Right") {
            format!("{stem}Left")
        } else if *name == "jawLeft" || *name == "mouthLeft" {
            name.replace("Left", "Right")
        } else if *name == "jawRight" || *name == "mouthRight" {
            name.replace("Right", "Left")
        } else {
            continue;
        };
        if let Some(j) = ARKIT_52.iter().position(|n| *n == other) {
            out[i] = weights[j];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirroring_swaps_left_and_right_and_keeps_the_rest() {
        let mut w = [0f32; 52];
        let idx = |n: &str| ARKIT_52.iter().position(|x| *x == n).unwrap();
        w[idx("eyeBlinkLeft")] = 1.0;
        w[idx("mouthLeft")] = 0.5;
        w[idx("jawOpen")] = 0.3;
        let m = mirror_sides(&w);
        assert_eq!(m[idx("eyeBlinkRight")], 1.0);
        assert_eq!(m[idx("eyeBlinkLeft")], 0.0);
        assert_eq!(m[idx("mouthRight")], 0.5);
        assert_eq!(m[idx("jawOpen")], 0.3);
        assert_eq!(mirror_sides(&m), w);
    }

    #[test]
    fn people_get_default_avatars_by_id_and_keep_their_choice() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/avatars");
        let mut slots = AvatarSlots::new(&dir);
        let a = slots.path_for(1).unwrap();
        let b = slots.path_for(2).unwrap();
        assert_ne!(a, b, "neighbours get different characters");
        slots.choose(1, b.clone());
        assert_eq!(slots.path_for(1), Some(b));
    }
}
