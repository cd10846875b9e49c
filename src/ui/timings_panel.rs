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
        let frames: Vec<_> = ring.iter().collect();
        let frames = &frames[frames.len().saturating_sub(PLOT_FRAMES)..];
        let stages: Vec<Stage> = Stage::ALL
            .into_iter()
            .filter(|s| frames.iter().any(|f| f.get(*s).is_some()))
            .collect();
        let mut cumulative = vec![0.0f64; frames.len()];
        let mut lines = Vec::new();
        for stage in stages {
            let points: Vec<[f64; 2]> = frames
                .iter()
                .zip(cumulative.iter_mut())
                .enumerate()
                .map(|(i, (frame, acc))| {
                    *acc += frame.get(stage).unwrap_or(0.0) as f64;
                    [i as f64, *acc]
                })
                .collect();
            lines.push(Line::new(stage.name(), points).fill(0.0));
        }
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
