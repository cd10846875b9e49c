//! Source status and picker: what is being shown, and a path field to open something else.

use std::path::PathBuf;

use crate::capture::CaptureStatus;

#[derive(Default)]
pub struct SourcePanel {
    path_text: String,
}

/// What the user asked for in the panel.
pub enum SourceAction {
    OpenPath(PathBuf),
    OpenCamera,
}

impl SourcePanel {
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        status: &CaptureStatus,
        dropped: u64,
    ) -> Option<SourceAction> {
        match status {
            CaptureStatus::Opening => {
                ui.label("opening source…");
            }
            CaptureStatus::Running { name, resolution } => {
                ui.label(format!("source: {name}"));
                if let Some((w, h)) = resolution {
                    ui.label(format!("resolution: {w}×{h}"));
                }
                ui.label(format!("frames dropped: {dropped}"));
            }
            CaptureStatus::Reconnecting { error } => {
                ui.colored_label(egui::Color32::from_rgb(255, 170, 60), error);
                ui.label("retrying…");
            }
            CaptureStatus::Ended => {
                ui.label("end of input");
            }
            CaptureStatus::Failed { error } => {
                ui.colored_label(egui::Color32::from_rgb(255, 110, 110), error);
            }
        }
        let mut action = None;
        ui.horizontal(|ui| {
            ui.label("input:");
            let edit = ui.add(
                egui::TextEdit::singleline(&mut self.path_text)
                    .hint_text("video, image or folder path")
                    .desired_width(170.0),
            );
            let entered = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if (ui.button("Open").clicked() || entered) && !self.path_text.trim().is_empty() {
                action = Some(SourceAction::OpenPath(PathBuf::from(self.path_text.trim())));
            }
        });
        if ui.button("Use camera").clicked() {
            action = Some(SourceAction::OpenCamera);
        }
        action
    }
}
