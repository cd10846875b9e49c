//! Render: everything drawn with wgpu (camera view now; avatars later), WGSL in `shaders/`.

mod frame_view;
mod gpu;
mod offscreen;
mod overlay;

pub use frame_view::{rgb_to_rgba, rgb_to_rgba_image, FrameView, PixelRect};
pub use gpu::Gpu;
pub use offscreen::OffscreenTarget;
pub use overlay::Overlay;
