//! polyface: real-time facial motion retargeting for several people at once.
//!
//! One module per stage, in the order a frame flows through them; [`processor`] is the one
//! path every frame takes (`track`, the app's inference thread, take playback):
//!
//! | module | stage |
//! |---|---|
//! | [`capture`] | frames from cameras, videos, image folders ([`capture::FrameSource`]), newest-frame hand-over |
//! | [`vision`] | the networks in candle: detector + single-face network (SFN), multi-face network (MFN), re-identification embedding; fast CPU kernels |
//! | [`fit`] | head pose (robust PnP on the mean face, fused with the network), expression refinement |
//! | [`known`] | people the user named, kept between sessions: stored embeddings and settings, recognition |
//! | [`track`] | people across frames: Hungarian assignment, life cycle, re-identification, One-Euro smoothing |
//! | [`processor`] | pipeline → tracking → re-identification → record → take / stream, for one frame |
//! | [`retarget`] | ARKit weights and head pose onto an avatar's morph targets (ARKit / VRM names, mapping files, calibration) |
//! | [`record`] | typed per-frame records; takes for other tools (Live Link Face CSV, animated glb), recovery, playback |
//! | [`stream`] | live animation to VTuber tools over VMC (OSC/UDP) |
//! | [`avatar`] | glTF / VRM avatars: loading, the default characters, glb writing |
//! | [`render`] | wgpu drawing: camera view, face overlay, avatars, offscreen snapshots |
//! | [`inference`] | the inference thread between capture and the UI |
//! | [`ui`] | egui panels of the overlay |
//! | [`app`] | the window app (`polyface run`) |
//! | [`headless`] | `polyface track`, the app's headless twin |
//! | [`eval`], [`bench`] | `polyface eval` (accuracy on the shared labelled data), `polyface bench` (latency per stage) |
//! | [`soak`] | `polyface soak` (the app for hours under Xvfb: memory, frames, latency over time), the app's `--metrics` report |
//! | [`settings`], [`timing`], [`cli`], [`memory`] | app settings, per-stage durations, the command line, freed heap memory back to the system |

pub mod app;
pub mod avatar;
pub mod bench;
pub mod capture;
pub mod cli;
pub mod eval;
pub mod fit;
pub mod headless;
pub mod inference;
pub mod known;
pub mod memory;
pub mod processor;
pub mod record;
pub mod render;
pub mod retarget;
pub mod settings;
pub mod soak;
pub mod stream;
pub mod timing;
pub mod track;
pub mod ui;
pub mod vision;
