//! UI: egui panels, one struct per panel with `fn ui(&mut self, ui, ...)`.

mod avatar_slots;
mod people_panel;
mod recent_lines;
mod source_panel;
mod timings_panel;
mod vmc_routes;

pub use avatar_slots::{mirror_sides, AvatarSlots};
pub use people_panel::{PeoplePanel, PeopleRequest};
pub use recent_lines::RecentLines;
pub use source_panel::{SourceAction, SourcePanel};
pub use timings_panel::TimingsPanel;
pub use vmc_routes::{RouteRequest, VmcRoutesPanel};
