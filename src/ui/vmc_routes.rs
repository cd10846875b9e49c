//! VMC receivers by person name: "Ana" always drives the same receiver, whatever her ID.

use std::collections::BTreeMap;

/// What the user asked the routes panel for.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteRequest {
    /// Stream `name` to `target` ("host:port") from now on.
    Set { name: String, target: String },
    /// Stream `name` like everyone else again (base port + n).
    Remove(String),
}

/// The routes table with a row to add one.
#[derive(Default)]
pub struct VmcRoutesPanel {
    name: String,
    target: String,
}

impl VmcRoutesPanel {
    /// `routes` as the settings keep them; `names_in_view` are offered as the name to route.
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        routes: &BTreeMap<String, String>,
        names_in_view: &[String],
    ) -> Option<RouteRequest> {
        let mut request = None;
        egui::CollapsingHeader::new(format!("VMC receivers by name ({})", routes.len()))
            .id_salt("vmc_routes")
            .show(ui, |ui| {
                ui.label(
                    "a named person listed here is always streamed to their own receiver; \
                     everyone else gets the base port + n",
                );
                for (name, target) in routes {
                    ui.horizontal(|ui| {
                        ui.label(format!("{name} → {target}"));
                        if ui.small_button("remove").clicked() {
                            request = Some(RouteRequest::Remove(name.clone()));
                        }
                    });
                }
                ui.horizontal(|ui| {
                    ui.add(
                        egui::TextEdit::singleline(&mut self.name)
                            .hint_text("name")
                            .desired_width(70.0),
                    );
                    ui.add(
                        egui::TextEdit::singleline(&mut self.target)
                            .hint_text("host:port")
                            .desired_width(120.0),
                    );
                    let ready = !self.name.trim().is_empty() && !self.target.trim().is_empty();
                    if ui.add_enabled(ready, egui::Button::new("route")).clicked() {
                        request = Some(RouteRequest::Set {
                            name: self.name.trim().to_string(),
                            target: self.target.trim().to_string(),
                        });
                        self.name.clear();
                        self.target.clear();
                    }
                });
                let unrouted: Vec<&String> = names_in_view
                    .iter()
                    .filter(|n| !routes.contains_key(*n))
                    .collect();
                if !unrouted.is_empty() {
                    ui.horizontal_wrapped(|ui| {
                        ui.label("in view:");
                        for name in unrouted {
                            if ui.small_button(name).clicked() {
                                self.name = name.clone();
                            }
                        }
                    });
                }
            });
        request
    }
}
