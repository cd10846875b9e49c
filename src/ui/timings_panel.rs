//! The per-stage timing overlay: last / median / p95 per stage and a rolling stacked plot.

use egui_plot::{Legend, Line, Plot};

use crate::timing::{Stage, TimingRing};

/// Frames shown in the rolling plot.
const PLOT_FRAMES: usize = 240;

#[derive(Default)]
pub struct TimingsPanel {
    pub show_plot: bool,
}

impl TimingsPanel {
    pub fn new() -> Self {
        TimingsPanel { show_plot: true }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, ring: &TimingRing) {
        egui::Grid::new("stage timings")
            .num_columns(4)
            .striped(true)
            .spacing([12.0, 2.0])
            .show(ui, |ui| {
                ui.strong("stage (ms)");
                ui.strong("last");
                ui.strong("median");
                ui.strong("p95");
                ui.end_row();
                for stage in Stage::ALL {
                    let Some(stats) = ring.stats(stage) else {
                        continue;
                    };
                    ui.label(stage.name());
                    ui.monospace(format!("{:6.2}", stats.last));
                    ui.monospace(format!("{:6.2}", stats.median));
                    ui.monospace(format!("{:6.2}", stats.p95));
                    ui.end_row();
                }
                if let Some(total) = ring.total_stats() {
                    ui.strong("total");
                    ui.monospace(format!("{:6.2}", total.last));
                    ui.monospace(format!("{:6.2}", total.median));
                    ui.monospace(format!("{:6.2}", total.p95));
                    ui.end_row();
                }
            });
        ui.checkbox(&mut self.show_plot, "plot");
        if self.show_plot {
            self.plot(ui, ring);
        }
    }

    /// Stacked plot: each line is the cumulative time up to and including its stage.
    fn plot(&self, ui: &mut egui::Ui, ring: &TimingRing) {
        let lines: Vec<Line> = stacked_lines(ring)
            .into_iter()
            .map(|(stage, points)| Line::new(stage.name(), points).fill(0.0))
            .collect();
        Plot::new("timing plot")
            .height(140.0)
            .legend(Legend::default())
            .include_y(0.0)
            .allow_drag(false)
            .allow_zoom(false)
            .allow_scroll(false)
            .y_axis_label("ms")
            .show(ui, |plot| {
                // Draw the tallest (cumulative) line first so the smaller fills stay visible.
                for line in lines.into_iter().rev() {
                    plot.line(line);
                }
            });
    }
}

/// The plot's lines: per stage that ran, the cumulative time up to and including it over the
/// newest [`PLOT_FRAMES`] frames.
fn stacked_lines(ring: &TimingRing) -> Vec<(Stage, Vec<[f64; 2]>)> {
    let frames: Vec<_> = ring.iter().collect();
    let frames = &frames[frames.len().saturating_sub(PLOT_FRAMES)..];
    let mut cumulative = vec![0.0f64; frames.len()];
    Stage::ALL
        .into_iter()
        .filter(|s| frames.iter().any(|f| f.get(*s).is_some()))
        .map(|stage| {
            let points = frames
                .iter()
                .zip(cumulative.iter_mut())
                .enumerate()
                .map(|(i, (frame, acc))| {
                    *acc += frame.get(stage).unwrap_or(0.0) as f64;
                    [i as f64, *acc]
                })
                .collect();
            (stage, points)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timing::FrameTimings;
    use std::time::Duration;

    /// An hour of frames through the panel as the app draws it: the plot holds the newest
    /// PLOT_FRAMES frames and egui keeps a fixed set of textures (its font atlas), however long.
    #[test]
    fn the_plot_and_egui_textures_stay_bounded_frame_after_frame() {
        let ctx = egui::Context::default();
        let mut panel = TimingsPanel::new();
        let mut ring = TimingRing::with_capacity(600);
        let mut textures = std::collections::HashSet::new();
        let mut most = 0;
        for seq in 0..3000u64 {
            let mut t = FrameTimings::new(seq);
            t.add(Stage::Network, Duration::from_micros(5000 + seq % 977));
            t.add(Stage::Render, Duration::from_micros(2000 + seq % 331));
            ring.push(t);
            let input = egui::RawInput {
                screen_rect: Some(egui::Rect::from_min_size(
                    egui::Pos2::ZERO,
                    egui::vec2(400.0, 600.0),
                )),
                ..Default::default()
            };
            let output = ctx.run_ui(input, |ui| {
                egui::CentralPanel::default().show(ui, |ui| {
                    // text that changes every frame, as the overlay's figures do
                    ui.label(format!(
                        "display: {:.1} fps",
                        30.0 + (seq % 97) as f32 / 7.0
                    ));
                    panel.ui(ui, &ring);
                });
            });
            textures.extend(output.textures_delta.set.keys().copied());
            for id in &output.textures_delta.free {
                textures.remove(id);
            }
            most = most.max(textures.len());
            let lines = stacked_lines(&ring);
            assert_eq!(lines.len(), 2);
            assert!(lines
                .iter()
                .all(|(_, p)| p.len() == PLOT_FRAMES.min(seq as usize + 1)));
        }
        assert!(
            (1..=2).contains(&most),
            "egui textures alive at once: {most}"
        );
    }
}
