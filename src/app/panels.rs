//! The overlay: the control panel on the right, the warnings under the views, the shortcuts
//! window and the central area (camera view and avatars). Each part reads the app's state,
//! edits its simple settings in place (checkboxes, the view, the stream target) and returns the
//! requests that change more than that as [`Action`]s.

use egui::Ui;

use super::state::{Action, AppState, SHORTCUTS};
use super::window::{person_colour, Layout};
use crate::capture::CaptureStatus;
use crate::render::PixelRect;
use crate::settings::ViewMode;
use crate::vision::PipelineKind;

/// What the window knows that the overlay shows.
pub struct WindowFacts {
    /// The GPU in words.
    pub gpu: String,
    /// A frame has been shown.
    pub has_frame: bool,
}

/// The whole overlay; gives where the camera view and the avatars go, and the requests.
pub fn overlay(
    root: &mut Ui,
    state: &mut AppState,
    facts: &WindowFacts,
    stage_texture: egui::TextureId,
) -> (Layout, Vec<Action>) {
    let mut actions = Vec::new();
    egui::Panel::right("overlay")
        .default_size(330.0)
        .show(root, |ui| control_panel(ui, state, facts, &mut actions));
    if !state.warnings.is_empty() {
        egui::Panel::bottom("warnings").show(root, |ui| {
            for warning in state.warnings.iter() {
                ui.colored_label(egui::Color32::from_rgb(255, 200, 90), warning);
            }
        });
    }
    let mut open = state.show_help;
    egui::Window::new("Keyboard shortcuts")
        .open(&mut open)
        .collapsible(false)
        .show(root.ctx(), |ui| {
            egui::Grid::new("shortcuts").show(ui, |ui| {
                for (key, what) in SHORTCUTS {
                    ui.monospace(key);
                    ui.label(what);
                    ui.end_row();
                }
            });
        });
    if open != state.show_help {
        actions.push(Action::ToggleHelp);
    }
    let layout = egui::CentralPanel::default()
        .frame(egui::Frame::NONE)
        .show(root, |ui| central(ui, state, facts, stage_texture))
        .inner;
    (layout, actions)
}

/// Status lines, pipeline, recording and streaming, the view, the source, the timings, overlay
/// toggles, and a card and an avatar picker per person.
fn control_panel(
    ui: &mut Ui,
    state: &mut AppState,
    facts: &WindowFacts,
    actions: &mut Vec<Action>,
) {
    ui.heading("polyface");
    ui.label(format!("display: {:.1} fps", state.meters.fps()));
    if let Some(latency) = state.meters.latency_ms {
        ui.label(format!("latency capture-to-present: {latency:.1} ms"));
    }
    ui.label(format!("rendering: {}", facts.gpu));
    ui.label(format!("networks: {}", state.networks.device_line));
    ui.label(pipeline_line(state));
    ui.horizontal(|ui| {
        ui.label("pipeline:");
        for (kind, label) in [
            (PipelineKind::Sfn, "SFN (detector + per face)"),
            (PipelineKind::Mfn, "MFN (one pass)"),
        ] {
            let chosen = state.pipeline_choice == kind;
            if ui.selectable_label(chosen, label).clicked() && !chosen {
                actions.push(Action::SwitchPipeline(kind));
            }
        }
    });
    let mut medians = state.worker.pipeline_medians();
    medians.retain(|(name, _)| *name != "playback");
    if !medians.is_empty() {
        let text: Vec<String> = medians
            .iter()
            .map(|(n, ms)| format!("{} {ms:.1} ms", n.to_uppercase()))
            .collect();
        ui.label(format!("face stages, recent median: {}", text.join(" · ")));
    }
    let recording = state.worker.recording();
    let streaming = state.worker.streaming();
    ui.horizontal(|ui| {
        let label = match recording {
            Some(_) => "stop recording (R)",
            None => "record (R)",
        };
        if ui.button(label).clicked() {
            actions.push(Action::ToggleRecording);
        }
        let label = if streaming {
            "stop VMC stream"
        } else {
            "stream VMC to"
        };
        if ui.button(label).clicked() {
            actions.push(Action::ToggleStreaming);
        }
        ui.add_enabled(
            !streaming,
            egui::TextEdit::singleline(&mut state.stream_target).desired_width(120.0),
        );
    });
    let names_in_view: Vec<String> = state.confirmed().filter_map(|p| p.name.clone()).collect();
    let routes = state.settings().vmc_routes.clone();
    if let Some(request) = state.vmc_routes_panel.ui(ui, &routes, &names_in_view) {
        actions.push(Action::Route(request));
    }
    if let Some(dir) = &recording {
        ui.colored_label(
            egui::Color32::from_rgb(255, 90, 90),
            format!("recording into {}", dir.display()),
        );
    }
    if !state.record_status.is_empty() {
        ui.label(&state.record_status);
    }
    if let Some((clock, duration)) = &state.playback {
        timeline(ui, clock, *duration);
    }
    ui.horizontal(|ui| {
        ui.label("view:");
        for mode in ViewMode::ALL {
            ui.selectable_value(&mut state.view, mode, mode.name());
        }
        ui.checkbox(&mut state.avatar_slots.mirror, "mirror");
    });
    ui.separator();
    let status = state.worker.capture().status();
    let (_, dropped) = state.worker.capture().counts();
    if let Some(source) = state.source_panel.ui(ui, &status, dropped) {
        actions.push(Action::Source(source));
    }
    ui.separator();
    state.timings_panel.ui(ui, &state.ring);
    ui.separator();
    ui.horizontal_wrapped(|ui| {
        let o = &mut state.overlay_options;
        ui.checkbox(&mut o.boxes, "boxes");
        ui.checkbox(&mut o.ids, "IDs");
        ui.checkbox(&mut o.landmarks, "landmarks");
        ui.checkbox(&mut o.axes, "axes");
        if ui.button("help (F1)").clicked() {
            actions.push(Action::ToggleHelp);
        }
    });
    ui.separator();
    egui::ScrollArea::vertical().show(ui, |ui| {
        let base = state.settings().smoothing;
        for request in state.people_panel.ui(ui, &state.people, &base) {
            actions.push(Action::People(request));
        }
        let confirmed: Vec<(u32, Option<String>)> =
            state.confirmed().map(|p| (p.id, p.name.clone())).collect();
        if !confirmed.is_empty() {
            ui.separator();
            ui.label("avatars (or drop a .glb / .vrm on the window):");
            for (id, name) in confirmed {
                ui.label(match name {
                    Some(name) => format!("{name} (#{id})"),
                    None => format!("person #{id}"),
                });
                let text = state.avatar_path_text.entry(id).or_default();
                state.avatar_slots.picker(ui, id, text);
            }
        }
    });
}

/// "pipeline: MFN · 3 people", or why there is none.
fn pipeline_line(state: &AppState) -> String {
    let people = state.confirmed().count();
    match (
        state.worker.pipeline_name(),
        &state.pipeline_problem,
        state.worker.error(),
    ) {
        (_, _, Some(error)) => format!("pipeline error: {error}"),
        (Some(name), _, None) => format!("pipeline: {} · {people} people", name.to_uppercase()),
        (None, Some(problem), None) => problem.clone(),
        (None, None, None) => "no face pipeline".to_string(),
    }
}

/// Play / pause and a slider over a take being played.
fn timeline(ui: &mut Ui, clock: &crate::record::playback::PlaybackClock, duration: f64) {
    use std::sync::atomic::Ordering;
    let count = clock.frame_count.max(1);
    let mut at = clock.position.load(Ordering::SeqCst);
    ui.horizontal(|ui| {
        let paused = clock.paused.load(Ordering::SeqCst);
        if ui.button(if paused { "play" } else { "pause" }).clicked() {
            clock.paused.store(!paused, Ordering::SeqCst);
        }
        let slider = egui::Slider::new(&mut at, 0..=count - 1)
            .text(format!("frame of {count} ({duration:.1} s)"));
        if ui.add(slider).changed() {
            clock.seek(at);
        }
    });
}

/// The camera view and the avatar image side by side (or one of them), person IDs over their
/// boxes, and what the view waits for before the first frame.
fn central(
    ui: &mut Ui,
    state: &AppState,
    facts: &WindowFacts,
    stage_texture: egui::TextureId,
) -> Layout {
    let full = ui.max_rect();
    let layout = match state.view {
        ViewMode::Both => {
            let (view, avatars) = full.split_left_right_at_fraction(0.5);
            Layout { view, avatars }
        }
        ViewMode::Camera => Layout {
            view: full,
            avatars: egui::Rect::NOTHING,
        },
        ViewMode::Avatars => Layout {
            view: egui::Rect::NOTHING,
            avatars: full,
        },
    };
    if layout.avatars.is_positive() {
        ui.put(
            layout.avatars,
            egui::Image::new((stage_texture, layout.avatars.size())),
        );
    }
    // Person IDs above their boxes, mapped from frame pixels to the letterboxed view.
    let (fw, fh) = state.frame_size;
    if fw > 0 && fh > 0 && state.overlay_options.ids {
        let area = PixelRect {
            x: layout.view.min.x,
            y: layout.view.min.y,
            width: layout.view.width(),
            height: layout.view.height(),
        };
        let shown = area.fit(fw, fh);
        let scale = shown.width / fw as f32;
        for person in state.confirmed() {
            let corner = person.smoothed.bbox.0;
            let at = egui::pos2(shown.x + corner.x * scale, shown.y + corner.y * scale - 2.0);
            let [r, g, b, _] = person_colour(person.id);
            let colour =
                egui::Color32::from_rgb((r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8);
            ui.painter().text(
                at,
                egui::Align2::LEFT_BOTTOM,
                format!("#{}", person.id),
                egui::FontId::proportional(16.0),
                colour,
            );
        }
    }
    if !facts.has_frame {
        ui.centered_and_justified(|ui| {
            let text = match state.worker.capture().status() {
                CaptureStatus::Reconnecting { error } | CaptureStatus::Failed { error } => {
                    format!(
                        "{error}\n\nType a video, image or folder path in the panel on the right."
                    )
                }
                _ => format!("waiting for {}…", state.source_name),
            };
            ui.label(egui::RichText::new(text).size(18.0));
        });
    }
    layout
}
