//! The window and what draws into it: the winit window, the wgpu surface (frames in flight
//! bounded), the camera view with the face overlay, the avatar stage (drawn offscreen, shown as
//! an egui image) and egui's renderer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use winit::event::WindowEvent;
use winit::event_loop::ActiveEventLoop;

use super::state::{AppState, OverlayOptions, Presented};
use crate::inference::Processed;
use crate::render::{rgb_to_rgba, AvatarStage, FrameView, FramesInFlight, Gpu, Overlay, PixelRect};
use crate::timing::{FrameTimings, Stage};
use crate::track::{Person, TrackState};

const BACKGROUND: wgpu::Color = wgpu::Color {
    r: 0.02,
    g: 0.02,
    b: 0.025,
    a: 1.0,
};

/// Where the overlay put the camera view and the avatars this frame (logical points).
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub view: egui::Rect,
    pub avatars: egui::Rect,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            view: egui::Rect::NOTHING,
            avatars: egui::Rect::NOTHING,
        }
    }
}

/// What drawing the avatars took: retargeting the expressions, and the GPU draw.
pub struct AvatarsDrawn {
    pub retarget: Duration,
    pub draw: Duration,
}

pub struct Window {
    window: Arc<winit::window::Window>,
    surface: wgpu::Surface<'static>,
    config: wgpu::SurfaceConfiguration,
    gpu: Gpu,
    frame_view: FrameView,
    overlay: Overlay,
    egui_ctx: egui::Context,
    egui_state: egui_winit::State,
    egui_renderer: egui_wgpu::Renderer,
    /// The avatars, drawn offscreen and shown as an egui image.
    stage: AvatarStage,
    stage_texture: egui::TextureId,
    in_flight: FramesInFlight,
    /// The frame's pixels as RGBA for upload (kept: one allocation).
    rgba: image::RgbaImage,
    /// Where the avatars were shown last frame: the stage is sized to it.
    last_layout: Layout,
}

impl Window {
    pub fn create(event_loop: &ActiveEventLoop, (width, height): (u32, u32)) -> Result<Window> {
        let attributes = winit::window::Window::default_attributes()
            .with_title("polyface")
            .with_inner_size(winit::dpi::LogicalSize::new(width, height));
        let window = Arc::new(
            event_loop
                .create_window(attributes)
                .context("creating the window")?,
        );
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let surface = instance
            .create_surface(Arc::clone(&window))
            .context("creating the window's GPU surface")?;
        let gpu = Gpu::with_instance(instance, Some(&surface))?;
        let size = window.inner_size();
        let mut config = surface
            .get_default_config(&gpu.adapter, size.width.max(1), size.height.max(1))
            .context("the GPU cannot present to this window")?;
        // egui blends in gamma space and expects a non-sRGB target; camera pixels pass through as is.
        config.format = config.format.remove_srgb_suffix();
        let caps = surface.get_capabilities(&gpu.adapter);
        // Mailbox shows the newest image without waiting a whole refresh: less latency than FIFO.
        config.present_mode = if caps.present_modes.contains(&wgpu::PresentMode::Mailbox) {
            wgpu::PresentMode::Mailbox
        } else {
            wgpu::PresentMode::AutoVsync
        };
        surface.configure(&gpu.device, &config);
        log::info!("GPU: {}", gpu.describe());

        let frame_view = FrameView::new(&gpu.device, config.format);
        let overlay = Overlay::new(&gpu.device, config.format);
        let egui_ctx = egui::Context::default();
        egui_ctx.set_visuals(egui::Visuals::dark());
        let egui_state = egui_winit::State::new(
            egui_ctx.clone(),
            egui::ViewportId::ROOT,
            event_loop,
            Some(window.scale_factor() as f32),
            None,
            Some(gpu.device.limits().max_texture_dimension_2d as usize),
        );
        let mut egui_renderer =
            egui_wgpu::Renderer::new(&gpu.device, config.format, Default::default());
        let stage = AvatarStage::new(&gpu.device, &gpu.queue, 640, 480);
        let stage_texture = egui_renderer.register_native_texture(
            &gpu.device,
            &stage.target.gamma_view,
            wgpu::FilterMode::Linear,
        );
        Ok(Window {
            window,
            surface,
            config,
            gpu,
            frame_view,
            overlay,
            egui_ctx,
            egui_state,
            egui_renderer,
            stage,
            stage_texture,
            in_flight: FramesInFlight::default(),
            rgba: image::RgbaImage::new(0, 0),
            last_layout: Layout::default(),
        })
    }

    pub fn request_redraw(&self) {
        self.window.request_redraw();
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.gpu.device
    }

    /// The GPU in words (the overlay's "rendering" line).
    pub fn describe_gpu(&self) -> String {
        self.gpu.describe()
    }

    /// Hands a window event to egui; true when egui used it (a key typed into a text field).
    pub fn on_event(&mut self, event: &WindowEvent) -> bool {
        let response = self.egui_state.on_window_event(&self.window, event);
        if response.repaint {
            self.window.request_redraw();
        }
        response.consumed
    }

    pub fn resize(&mut self, width: u32, height: u32) {
        self.config.width = width.max(1);
        self.config.height = height.max(1);
        self.surface.configure(&self.gpu.device, &self.config);
        self.window.request_redraw();
    }

    /// Uploads a processed frame and its people's overlay; gives the frame's timings (with the
    /// conversion and upload) and its capture time, for when it is presented.
    pub fn show_frame(
        &mut self,
        processed: Processed,
        state: &AppState,
    ) -> (FrameTimings, Instant) {
        let (frame, mut timings) = (processed.frame, processed.timings);
        timings.time(Stage::Convert, || rgb_to_rgba(&frame.image, &mut self.rgba));
        timings.time(Stage::Render, || {
            self.frame_view
                .upload(&self.gpu.device, &self.gpu.queue, &self.rgba);
            draw_people(
                &mut self.overlay,
                &processed.people,
                frame.image.dimensions(),
                state.overlay_options,
            );
            self.overlay
                .upload(&self.gpu.device, &self.gpu.queue, frame.image.dimensions());
        });
        (timings, frame.captured_at)
    }

    /// Draws one avatar per person into the stage, sized to where it was shown last frame;
    /// `None` when the view shows no avatars or nothing changed since the last picture.
    pub fn draw_avatars(&mut self, state: &mut AppState) -> Option<AvatarsDrawn> {
        if state.view == crate::settings::ViewMode::Camera {
            return None;
        }
        let rect = self.last_layout.avatars;
        let ppp = self.window.scale_factor() as f32;
        let (w, h) = (
            (rect.width() * ppp).round().max(16.0) as u32,
            (rect.height() * ppp).round().max(16.0) as u32,
        );
        if rect.is_positive() && (w, h) != (self.stage.target.width, self.stage.target.height) {
            self.stage
                .resize(&self.gpu.device, w.min(4096), h.min(4096));
            self.egui_renderer.update_egui_texture_from_wgpu_texture(
                &self.gpu.device,
                &self.stage.target.gamma_view,
                wgpu::FilterMode::Linear,
                self.stage_texture,
            );
        }
        let started = Instant::now();
        let weights: Vec<(u32, [f32; 52])> = state
            .confirmed()
            .map(|p| (p.id, state.avatar_weights(p)))
            .collect();
        let retarget = started.elapsed();
        let started = Instant::now();
        let drawn = state.avatar_slots.render(
            &self.stage,
            &self.gpu.device,
            &self.gpu.queue,
            &state.people,
            |person| {
                weights
                    .iter()
                    .find(|(id, _)| *id == person.id)
                    .map_or([0.0; 52], |(_, w)| *w)
            },
        );
        drawn.then(|| AvatarsDrawn {
            retarget,
            draw: started.elapsed(),
        })
    }

    /// Runs the overlay: `ui` gets the root egui Ui and the avatar image's texture, and returns
    /// where the views go and what the user asked for.
    pub fn run_ui<A>(
        &mut self,
        mut ui: impl FnMut(&mut egui::Ui, egui::TextureId) -> (Layout, Vec<A>),
    ) -> (egui::FullOutput, Layout, Vec<A>) {
        let raw_input = self.egui_state.take_egui_input(&self.window);
        let stage_texture = self.stage_texture;
        let mut layout = Layout::default();
        let mut actions = Vec::new();
        let output = self.egui_ctx.run_ui(raw_input, |root| {
            (layout, actions) = ui(root, stage_texture);
        });
        self.egui_state
            .handle_platform_output(&self.window, output.platform_output.clone());
        self.last_layout = layout;
        (output, layout, actions)
    }

    /// Draws the camera view, its overlay and egui's output, and presents the picture; `None`
    /// when the surface had no image to give (it is reconfigured and the next redraw tries).
    pub fn draw(&mut self, output: egui::FullOutput, layout: Layout) -> Option<Presented> {
        let render_start = Instant::now();
        let surface_texture = match self.surface.get_current_texture() {
            wgpu::CurrentSurfaceTexture::Success(t)
            | wgpu::CurrentSurfaceTexture::Suboptimal(t) => t,
            wgpu::CurrentSurfaceTexture::Outdated | wgpu::CurrentSurfaceTexture::Lost => {
                self.surface.configure(&self.gpu.device, &self.config);
                return None;
            }
            _ => return None,
        };
        let target = surface_texture.texture.create_view(&Default::default());
        let ppp = output.pixels_per_point;
        let screen = egui_wgpu::ScreenDescriptor {
            size_in_pixels: [self.config.width, self.config.height],
            pixels_per_point: ppp,
        };
        let paint_jobs = self.egui_ctx.tessellate(output.shapes, ppp);
        for (id, deltas) in &output.textures_delta.set {
            for delta in deltas {
                self.egui_renderer
                    .update_texture(&self.gpu.device, &self.gpu.queue, *id, delta);
            }
        }
        let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
        let extra = self.egui_renderer.update_buffers(
            &self.gpu.device,
            &self.gpu.queue,
            &mut encoder,
            &paint_jobs,
            &screen,
        );
        {
            let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("camera view"),
                color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                    view: &target,
                    depth_slice: None,
                    resolve_target: None,
                    ops: wgpu::Operations {
                        load: wgpu::LoadOp::Clear(BACKGROUND),
                        store: wgpu::StoreOp::Store,
                    },
                })],
                ..Default::default()
            });
            let area = PixelRect {
                x: layout.view.min.x * ppp,
                y: layout.view.min.y * ppp,
                width: layout.view.width() * ppp,
                height: layout.view.height() * ppp,
            };
            if let Some(rect) =
                self.frame_view
                    .draw(&mut pass, area, (self.config.width, self.config.height))
            {
                self.overlay.draw(&mut pass, rect);
            }
        }
        {
            let pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("overlay"),
                color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                    view: &target,
                    depth_slice: None,
                    resolve_target: None,
                    ops: wgpu::Operations {
                        load: wgpu::LoadOp::Load,
                        store: wgpu::StoreOp::Store,
                    },
                })],
                ..Default::default()
            });
            self.egui_renderer
                .render(&mut pass.forget_lifetime(), &paint_jobs, &screen);
        }
        let commands = extra.into_iter().chain(std::iter::once(encoder.finish()));
        self.in_flight.submit(&self.gpu, commands);
        for id in &output.textures_delta.free {
            self.egui_renderer.free_texture(id);
        }
        let render = render_start.elapsed();
        let present_start = Instant::now();
        self.window.pre_present_notify();
        self.gpu.queue.present(surface_texture);
        let at = Instant::now();
        Some(Presented {
            at,
            render,
            present: at - present_start,
            stage_drawn: false,
        })
    }

    /// Whether a frame has been shown yet (the overlay says what it waits for until then).
    pub fn has_frame(&self) -> bool {
        self.frame_view.frame_size() != (0, 0)
    }
}

/// A distinct, stable colour per person ID.
pub fn person_colour(id: u32) -> [f32; 4] {
    const PALETTE: [[f32; 3]; 8] = [
        [0.30, 0.85, 0.45],
        [0.35, 0.65, 1.00],
        [1.00, 0.60, 0.25],
        [0.95, 0.35, 0.65],
        [0.75, 0.55, 1.00],
        [0.25, 0.90, 0.90],
        [1.00, 0.85, 0.30],
        [0.70, 0.90, 0.35],
    ];
    let [r, g, b] = PALETTE[(id as usize) % PALETTE.len()];
    [r, g, b, 0.95]
}

/// Box, landmarks and head axes of every person, sized relative to the frame; lost people are
/// dimmed.
fn draw_people(
    overlay: &mut Overlay,
    people: &[Person],
    frame_size: (u32, u32),
    options: OverlayOptions,
) {
    overlay.clear();
    let unit = frame_size.0.max(frame_size.1) as f32 / 400.0;
    let camera = crate::fit::Camera::assumed(frame_size.0, frame_size.1, 63.0);
    for person in people {
        let face = &person.smoothed;
        let mut colour = person_colour(person.id);
        if person.state != TrackState::Confirmed {
            colour[3] = 0.35;
        }
        if options.boxes {
            overlay.rect(face.bbox.0, face.bbox.1, 1.5 * unit, colour);
        }
        if options.landmarks {
            for point in &face.landmarks {
                overlay.point(*point, 1.6 * unit, [0.9, 0.95, 1.0, colour[3]]);
            }
        }
        if let (true, Some(pose)) = (options.axes, person.pose) {
            // 6 cm axes from the nose tip: x red (subject's left), y green (up), z blue (out).
            let nose = glam::Vec3::from_array(crate::fit::MEAN_FACE_68[30]);
            let origin = pose.rotation * nose + pose.translation;
            let from = camera.project(origin);
            for (axis, rgb) in [
                (glam::Vec3::X, [1.0, 0.3, 0.3]),
                (glam::Vec3::Y, [0.3, 1.0, 0.3]),
                (glam::Vec3::Z, [0.3, 0.5, 1.0]),
            ] {
                let to = camera.project(origin + pose.rotation * (axis * 6.0));
                overlay.line(from, to, 1.5 * unit, [rgb[0], rgb[1], rgb[2], colour[3]]);
            }
        }
    }
}
