//! UI: egui panels, one struct per panel with `fn ui(&mut self, ui, ...)`.

mod source_panel;
mod timings_panel;

pub use source_panel::{SourceAction, SourcePanel};
pub use timings_panel::TimingsPanel;
