//! `polyface render`: one headless picture of avatars with given expression weights and head
//! pose (docs, golden tests, checking a user's avatar without a camera).

use anyhow::{Context, Result};
use glam::Quat;

use super::{AvatarPose, AvatarStage, Gpu};
use crate::avatar::Avatar;
use crate::retarget::{Retargeter, ARKIT_52};

/// Morph weights for `avatar` from `name=value` settings: the avatar's own control names
/// (morph targets, VRM expressions) directly; ARKit names through the name-based retargeter
/// (so `jawOpen` drives a VRM's `aa`). Unknown names are an error that lists what exists.
pub fn weights_for(avatar: &Avatar, settings: &[(String, f32)]) -> Result<Vec<f32>> {
    let controls = avatar.control_names();
    let mut direct = Vec::new();
    let mut arkit = [0f32; 52];
    let mut any_arkit = false;
    for (name, value) in settings {
        if controls.iter().any(|c| c == name) {
            direct.push((name.clone(), *value));
        } else if let Some(i) = ARKIT_52.iter().position(|n| n.eq_ignore_ascii_case(name)) {
            arkit[i] = *value;
            any_arkit = true;
        } else {
            let mut known = controls.clone();
            known.truncate(60);
            anyhow::bail!(
                "{}: no morph target or expression called {name:?} (it has: {})",
                avatar.name,
                known.join(", ")
            );
        }
    }
    if any_arkit {
        let (retargeter, _) = Retargeter::by_name(&controls);
        direct.extend(
            retargeter
                .apply(&arkit)
                .into_iter()
                .filter(|(_, w)| *w != 0.0),
        );
    }
    Ok(avatar.morph_weights(&direct))
}

/// Head rotation for yaw / pitch / roll in degrees, the convention of
/// [`crate::vision::FaceObservation::yaw_pitch_roll`]: R = Rz(roll) · Ry(yaw) · Rx(pitch).
pub fn head_from_degrees(yaw: f32, pitch: f32, roll: f32) -> Quat {
    Quat::from_rotation_z(roll.to_radians())
        * Quat::from_rotation_y(yaw.to_radians())
        * Quat::from_rotation_x(pitch.to_radians())
}

/// Renders `avatars` side by side, each with the same weights and head pose.
pub fn render(
    avatars: &[Avatar],
    settings: &[(String, f32)],
    head: Quat,
    size: (u32, u32),
) -> Result<image::RgbaImage> {
    let gpu = Gpu::headless()?;
    let stage = AvatarStage::new(&gpu.device, &gpu.queue, size.0, size.1);
    let mut uploaded = Vec::new();
    let mut poses = Vec::new();
    for avatar in avatars {
        uploaded.push(stage.upload(&gpu.device, &gpu.queue, avatar));
        poses.push(AvatarPose {
            morph_weights: weights_for(avatar, settings)?,
            head,
        });
    }
    let items: Vec<_> = uploaded.iter().zip(&poses).collect();
    stage.render(&gpu.device, &gpu.queue, &items);
    stage
        .read_pixels(&gpu.device, &gpu.queue)
        .context("reading the rendered avatars back")
}
