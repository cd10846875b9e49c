//! Which avatar each person drives, loaded onto the GPU on demand: a chosen file (picker, path
//! field, drag and drop) or a default character by person ID. A file that cannot be loaded is
//! reported and the person falls back to a default avatar; the app keeps running.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::avatar::Avatar;
use crate::render::{AvatarPose, AvatarStage, GpuAvatar};
use crate::retarget::{head_rotation, Retargeter, ARKIT_52};
use crate::track::{Person, TrackState};

struct Loaded {
    path: PathBuf,
    avatar: Avatar,
    gpu: GpuAvatar,
    retargeter: Retargeter,
}

#[derive(Default)]
pub struct AvatarSlots {
    defaults: Vec<PathBuf>,
    /// Person ID → the avatar file they chose.
    pub chosen: HashMap<u32, PathBuf>,
    loaded: HashMap<u32, Loaded>,
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
        self.chosen.insert(id, path);
    }

    fn ensure_loaded(
        &mut self,
        stage: &AvatarStage,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        id: u32,
    ) -> bool {
        let Some(path) = self.path_for(id) else {
            return false;
        };
        if self.loaded.get(&id).is_some_and(|l| l.path == path) {
            return true;
        }
        let avatar = match Avatar::load(&path) {
            Ok(a) => a,
            Err(e) => {
                self.warnings
                    .push(format!("{e} — person #{id} keeps a default avatar"));
                self.chosen.remove(&id);
                self.known.retain(|p| *p != path);
                match self.path_for(id).map(|p| Avatar::load(&p)) {
                    Some(Ok(a)) => a,
                    _ => return false,
                }
            }
        };
        let (retargeter, _) = Retargeter::by_name(&avatar.control_names());
        let gpu = stage.upload(device, queue, &avatar);
        let path = self.path_for(id).unwrap_or(path);
        self.loaded.insert(
            id,
            Loaded {
                path,
                avatar,
                gpu,
                retargeter,
            },
        );
        true
    }

    /// Draws one avatar per confirmed person into the stage. `weights(person)` gives the
    /// person's (calibrated) ARKit-52 weights.
    pub fn render(
        &mut self,
        stage: &AvatarStage,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        people: &[Person],
        weights: impl Fn(&Person) -> [f32; 52],
    ) {
        let present: Vec<&Person> = people
            .iter()
            .filter(|p| p.state == TrackState::Confirmed)
            .collect();
        let mut poses = Vec::with_capacity(present.len());
        for person in &present {
            if !self.ensure_loaded(stage, device, queue, person.id) {
                continue;
            }
            let mut arkit = weights(person);
            if self.mirror {
                arkit = mirror_sides(&arkit);
            }
            let loaded = &self.loaded[&person.id];
            let controls = loaded.retargeter.apply(&arkit);
            poses.push((
                person.id,
                AvatarPose {
                    morph_weights: loaded.avatar.morph_weights(&controls),
                    head: head_rotation(&person.smoothed.rotation, self.mirror),
                },
            ));
        }
        let items: Vec<(&GpuAvatar, &AvatarPose)> = poses
            .iter()
            .map(|(id, pose)| (&self.loaded[id].gpu, pose))
            .collect();
        stage.render(device, queue, &items);
        // forget people long gone (their GPU copies)
        let alive: Vec<u32> = people.iter().map(|p| p.id).collect();
        self.loaded
            .retain(|id, _| alive.contains(id) || self.chosen.contains_key(id));
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
