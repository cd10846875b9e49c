//! Render: everything drawn with wgpu (camera view, overlays, avatars), WGSL in `shaders/`.

mod avatar;
mod frame_view;
mod gpu;
mod offscreen;
mod overlay;
pub mod snapshot;

pub use avatar::{AvatarPose, AvatarRenderer, AvatarStage, GpuAvatar, GpuMesh, Orbit};
pub use frame_view::{rgb_to_rgba, rgb_to_rgba_image, FrameView, PixelRect};
pub use gpu::{FramesInFlight, Gpu};
pub use offscreen::OffscreenTarget;
pub use overlay::Overlay;
