//! polyface: real-time facial motion retargeting for several people at once.
//!
//! One module per pipeline stage, in the order a frame flows through them:
//!
//! | module | stage |
//! |---|---|
//! | [`capture`] | frames from cameras, videos, image folders ([`capture::FrameSource`]) |
//! | [`settings`] | app settings that persist between runs |
//! | [`stream`] | live animation to VTuber tools over VMC (OSC/UDP) |
//! | [`timing`] | per-stage durations of every frame, medians and p95 |
//! | [`vision`] | networks in candle: single-face network (SFN), fast CPU kernels |
//! | [`inference`] | the inference thread between capture and the UI |
//! | [`fit`] | head pose (robust PnP on the mean face, fused with the network), expression refinement |
//! | [`track`] | people across frames: Hungarian assignment, life cycle, One-Euro smoothing |
//! | [`retarget`] | ARKit weights and head pose onto an avatar's morph targets (ARKit / VRM names, mapping files, calibration) |
//! | [`record`] | takes for other tools: Live Link Face CSV per person |
//! | [`render`] | wgpu drawing: camera view (avatars to come) |
//! | [`ui`] | egui panels of the overlay |
//! | [`app`] | the window app (`polyface run`) |
//! | [`bench`] | `polyface bench`: latency per stage against the number of faces |
//! | [`eval`] | `polyface eval`: accuracy on the shared labelled data |
//! | [`headless`] | `polyface track`, the app's headless twin |
//!
//! Planned stages, each its own module when it lands: detector and MFN in `vision`,
//! re-identification in `track`, glTF takes in `record`.

pub mod app;
pub mod avatar;
pub mod bench;
pub mod capture;
pub mod cli;
pub mod eval;
pub mod fit;
pub mod headless;
pub mod inference;
pub mod record;
pub mod render;
pub mod retarget;
pub mod settings;
pub mod stream;
pub mod timing;
pub mod track;
pub mod ui;
pub mod vision;
