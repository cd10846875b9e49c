//! The window app (`polyface run`), in three parts kept apart (after egui's demo and rerun's
//! viewer):
//!
//! * [`state::AppState`]: what the app holds — the inference worker, the people in the last
//!   frame, avatars, settings, recording and streaming — and how it changes: every request from
//!   the panels, the keyboard or a dropped file is an [`state::Action`] it applies;
//! * [`panels`]: the overlay, one function or struct per panel, each returning the actions the
//!   user asked for;
//! * [`window::Window`]: the winit window, the wgpu surface and egui's renderer, which draw the
//!   camera view, the avatars and the overlay.
//!
//! Capture and inference run on their own threads ([`crate::inference`]); a redraw takes the
//! newest processed frame, so the UI never waits on them and latency never builds up.

mod panels;
mod state;
mod window;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use winit::application::ApplicationHandler;
use winit::event::WindowEvent;
use winit::event_loop::{ActiveEventLoop, ControlFlow, EventLoop};
use winit::window::WindowId;

use crate::cli::RunArgs;
use crate::timing::Stage;
use state::AppState;
use window::Window;

/// Redraw at most this often when nothing else asks for it.
const FRAME_INTERVAL: Duration = Duration::from_millis(16);

/// Opens the window and runs until it is closed.
pub fn run(args: RunArgs) -> Result<()> {
    let event_loop = EventLoop::new().context(
        "cannot open a window: no display found (set DISPLAY or WAYLAND_DISPLAY, or use `polyface track` headless)",
    )?;
    event_loop.set_control_flow(ControlFlow::Poll);
    // hours of frames and redraws: what was freed goes back to the system, not to a high-water mark
    crate::memory::trim_every(Duration::from_secs(10));
    let mut app = App {
        state: AppState::new(args),
        window: None,
        started: Instant::now(),
        last_redraw: Instant::now(),
        fatal: None,
    };
    event_loop
        .run_app(&mut app)
        .context("the window's event loop failed")?;
    match app.fatal.take() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

struct App {
    state: AppState,
    window: Option<Window>,
    started: Instant,
    last_redraw: Instant,
    fatal: Option<anyhow::Error>,
}

impl App {
    /// One displayed frame: the newest processed frame in, the avatars, the overlay, the
    /// picture presented, then what the user asked for.
    fn redraw(&mut self) {
        self.last_redraw = Instant::now();
        let (Some(window), state) = (self.window.as_mut(), &mut self.state) else {
            return;
        };
        state.collect_notices();
        let mut shown = state
            .take_frame()
            .map(|processed| window.show_frame(processed, state));
        let drawn = window.draw_avatars(state);
        if let (Some((timings, _)), Some(drawn)) = (shown.as_mut(), &drawn) {
            timings.add(Stage::Retarget, drawn.retarget);
            timings.add(Stage::Avatars, drawn.draw);
        }
        state.collect_warnings();
        let facts = panels::WindowFacts {
            gpu: window.describe_gpu(),
            has_frame: window.has_frame(),
        };
        let (output, layout, actions) =
            window.run_ui(|ui, stage_texture| panels::overlay(ui, state, &facts, stage_texture));
        let Some(mut presented) = window.draw(output, layout) else {
            return;
        };
        presented.stage_drawn = drawn.is_some();
        state.presented(shown, presented, window.device());
        for action in actions {
            state.apply(action);
        }
    }
}

impl ApplicationHandler for App {
    fn resumed(&mut self, event_loop: &ActiveEventLoop) {
        if self.window.is_some() {
            return;
        }
        match Window::create(event_loop, self.state.window_size()) {
            Ok(window) => {
                window.request_redraw();
                self.window = Some(window);
            }
            Err(e) => {
                self.fatal = Some(e);
                event_loop.exit();
            }
        }
    }

    fn window_event(&mut self, event_loop: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        let Some(window) = self.window.as_mut() else {
            return;
        };
        let consumed = window.on_event(&event);
        match event {
            WindowEvent::CloseRequested => event_loop.exit(),
            WindowEvent::Resized(size) => window.resize(size.width, size.height),
            WindowEvent::RedrawRequested => self.redraw(),
            WindowEvent::DroppedFile(path) => self.state.apply(state::Action::Dropped(path)),
            WindowEvent::KeyboardInput { event: key, .. }
                if !consumed && key.state == winit::event::ElementState::Pressed =>
            {
                if let Some(action) = state::shortcut(&key.logical_key) {
                    self.state.apply(action);
                }
            }
            _ => {}
        }
    }

    fn exiting(&mut self, _event_loop: &ActiveEventLoop) {
        self.state.exiting();
    }

    fn about_to_wait(&mut self, event_loop: &ActiveEventLoop) {
        if let Some(seconds) = self.state.exit_after() {
            if self.started.elapsed().as_secs_f64() >= seconds {
                event_loop.exit();
                return;
            }
        }
        let next = self.last_redraw + FRAME_INTERVAL;
        if Instant::now() >= next {
            if let Some(window) = &self.window {
                window.request_redraw();
            }
        }
        event_loop.set_control_flow(ControlFlow::WaitUntil(
            next.max(Instant::now() + Duration::from_millis(1)),
        ));
    }
}
