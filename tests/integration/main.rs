//! Integration tests: one binary (linking this stack is slow), one module per area.

mod app_state;
mod avatar_stage;
mod avatars;
mod bench_cli;
mod capture_sources;
mod cli_track;
mod detector_model;
mod gpu_rig;
mod known_people;
mod mfn_model;
mod reid_model;
mod sfn_model;
mod soak;
mod support;
mod takes;
mod window_smoke;
