//! UI: egui panels, one struct per panel with `fn ui(&mut self, ui, ...)`.

mod people_panel;
mod source_panel;
mod timings_panel;

pub use people_panel::PeoplePanel;
pub use source_panel::{SourceAction, SourcePanel};
pub use timings_panel::TimingsPanel;
