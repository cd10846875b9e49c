//! The window app (`polyface run`): winit window, wgpu surface, camera view and egui overlay.
//!
//! Capture runs on its own thread ([`LatestFrame`]); the main thread takes the newest frame when
//! it is ready to draw, so the UI never waits on capture and latency never builds up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use winit::application::ApplicationHandler;
use winit::event::WindowEvent;
use winit::event_loop::{ActiveEventLoop, ControlFlow, EventLoop};
use winit::window::{Window, WindowId};

use crate::capture::{self, CaptureStatus, LatestFrame, SourceOptions, SourceSpec};
use crate::cli::RunArgs;
use crate::inference::InferenceWorker;
use crate::processor::FrameProcessor;
use crate::render::{rgb_to_rgba, AvatarStage, FrameView, FramesInFlight, Gpu, Overlay, PixelRect};
use crate::settings::{Settings, ViewMode};
use crate::soak::metrics::{AppState, MetricsLog};
use crate::timing::{Stage, TimingRing};
use crate::track::{Person, TrackState};
use crate::ui::{AvatarSlots, PeoplePanel, RecentLines, SourceAction, SourcePanel, TimingsPanel};
use crate::vision::{FacePipeline, PipelineKind};

/// Warning lines shown under the views (the newest).
const WARNINGS_SHOWN: usize = 5;
/// Redraw at most this often when nothing else asks for it.
const FRAME_INTERVAL: Duration = Duration::from_millis(16);
const BACKGROUND: wgpu::Color = wgpu::Color {
    r: 0.02,
    g: 0.02,
    b: 0.025,
    a: 1.0,
};

/// Opens the window and runs until it is closed.
pub fn run(args: RunArgs) -> Result<()> {
    let event_loop = EventLoop::new().context(
        "cannot open a window: no display found (set DISPLAY or WAYLAND_DISPLAY, or use `polyface track` headless)",
    )?;
    event_loop.set_control_flow(ControlFlow::Poll);
    let mut app = App::new(args);
    event_loop
        .run_app(&mut app)
        .context("the window's event loop failed")?;
    match app.fatal.take() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

struct WindowState {
    window: Arc<Window>,
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
}

/// Per-frame facts the overlay shows besides stage timings.
#[derive(Default)]
struct Meters {
    presents: std::collections::VecDeque<Instant>,
    latency_ms: Option<f32>,
}

impl Meters {
    fn fps(&self) -> f32 {
        match (self.presents.front(), self.presents.back()) {
            (Some(first), Some(last)) if self.presents.len() > 1 && last > first => {
                (self.presents.len() - 1) as f32 / (*last - *first).as_secs_f32()
            }
            _ => 0.0,
        }
    }

    fn presented(&mut self, at: Instant) {
        self.presents.push_back(at);
        while self.presents.len() > 60 {
            self.presents.pop_front();
        }
    }
}

struct App {
    args: RunArgs,
    networks: Networks,
    source_name: String,
    worker: InferenceWorker,
    people: Vec<Person>,
    /// Size of the frame `people` refer to.
    frame_size: (u32, u32),
    /// Why faces are not tracked (models missing), shown in the overlay.
    pipeline_problem: Option<String>,
    window: Option<WindowState>,
    ring: TimingRing,
    meters: Meters,
    timings_panel: TimingsPanel,
    source_panel: SourcePanel,
    people_panel: PeoplePanel,
    avatar_slots: AvatarSlots,
    avatar_path_text: std::collections::HashMap<u32, String>,
    /// Where the avatar image went last frame (sizes the stage for the next one).
    avatar_rect: egui::Rect,
    view: ViewMode,
    /// The pipeline asked for; the worker reports the one running.
    pipeline_choice: PipelineKind,
    /// Playing a recorded take (`--play`): its clock drives the timeline.
    playback: Option<(Arc<crate::record::playback::PlaybackClock>, f64)>,
    /// Where the VMC stream goes when it is switched on.
    stream_target: String,
    /// The last thing recording / streaming said (shown under their buttons).
    record_status: String,
    overlay_options: OverlayOptions,
    show_help: bool,
    settings: Settings,
    settings_path: Option<std::path::PathBuf>,
    rgba: image::RgbaImage,
    warnings: RecentLines,
    /// The health report `--metrics` asks for.
    metrics: Option<MetricsLog>,
    started: Instant,
    last_redraw: Instant,
    fatal: Option<anyhow::Error>,
}

fn start_capture(spec: SourceSpec, options: SourceOptions) -> LatestFrame {
    LatestFrame::spawn(capture::opener(spec, options), true, true)
}

/// Where the networks come from and run: `--models` and `--device`, resolved once at start.
struct Networks {
    models: std::path::PathBuf,
    device: candle_core::Device,
    /// Which device that is, for the overlay ("CPU (auto: ...)", "CUDA 0").
    device_line: String,
}

impl Networks {
    /// Tracking with the app's smoothing, and re-identification when its model loads.
    fn people(&self, settings: &Settings) -> crate::track::People {
        let mut people = crate::track::People::default().with_reid_from(&self.models, &self.device);
        people.tracker.config.smoothing = settings.smoothing;
        people
    }

    fn open(args: &crate::cli::ModelArgs) -> (Networks, Option<String>) {
        let models = crate::vision::models_dir(args.models.as_deref());
        match crate::vision::open_device(args.device) {
            Ok((device, device_line)) => {
                log::info!("networks on {device_line}");
                let networks = Networks {
                    models,
                    device,
                    device_line,
                };
                (networks, None)
            }
            Err(e) => {
                let problem = format!("{e:#}; the networks run on the CPU");
                log::warn!("{problem}");
                let networks = Networks {
                    models,
                    device: candle_core::Device::Cpu,
                    device_line: "CPU".into(),
                };
                (networks, Some(problem))
            }
        }
    }
}

/// The `kind` face pipeline, or why there is none (the app still shows frames without one).
fn load_pipeline(
    kind: PipelineKind,
    networks: &Networks,
) -> (Option<Box<dyn FacePipeline>>, Option<String>) {
    match crate::vision::load_pipeline(kind, &networks.models, &networks.device) {
        Ok(pipeline) => (Some(pipeline), None),
        Err(e) => {
            let problem = format!("no face tracking ({}): {e:#}", kind.name().to_uppercase());
            log::warn!("{problem}");
            (None, Some(problem))
        }
    }
}

fn start_worker(
    spec: SourceSpec,
    options: SourceOptions,
    settings: &Settings,
    networks: &Networks,
) -> (InferenceWorker, Option<String>) {
    let (pipeline, problem) = load_pipeline(settings.pipeline, networks);
    let processor = FrameProcessor::new(pipeline, networks.people(settings));
    let worker = InferenceWorker::spawn(start_capture(spec, options), processor);
    (worker, problem)
}

/// A distinct, stable colour per person ID.
fn person_colour(id: u32) -> [f32; 4] {
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

/// What the camera view draws over the frame.
#[derive(Clone, Copy, Debug, PartialEq)]
struct OverlayOptions {
    boxes: bool,
    ids: bool,
    landmarks: bool,
    axes: bool,
}

impl Default for OverlayOptions {
    fn default() -> Self {
        OverlayOptions {
            boxes: true,
            ids: true,
            landmarks: true,
            axes: true,
        }
    }
}

/// Keyboard shortcuts, as the help window lists them.
const SHORTCUTS: [(&str, &str); 10] = [
    ("B", "face boxes on / off"),
    ("I", "person IDs on / off"),
    ("L", "landmarks on / off"),
    ("A", "head pose axes on / off"),
    ("C", "calibrate neutral: everyone's current face"),
    ("P", "switch the face pipeline: SFN <-> MFN"),
    ("V", "view: camera + avatars / camera / avatars"),
    ("M", "mirror the avatars on / off"),
    ("R", "start / stop recording a take"),
    ("F1 or H", "this help"),
];

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

/// The bundled sample video (`assets/sample/`), if it is there.
fn sample_input() -> Option<std::path::PathBuf> {
    let local = std::path::PathBuf::from(SAMPLE_INPUT);
    let path = if local.is_file() {
        local
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SAMPLE_INPUT)
    };
    path.is_file().then_some(path)
}

/// A public-domain clip the app plays when no camera is found (its README gives the source).
const SAMPLE_INPUT: &str = "assets/sample/astronaut.mp4";

fn describe(spec: &SourceSpec) -> String {
    match spec {
        SourceSpec::Path(path) => path.display().to_string(),
        SourceSpec::Camera(Some(camera)) => format!("camera {camera}"),
        SourceSpec::Camera(None) => "default camera".into(),
    }
}

impl App {
    fn new(mut args: RunArgs) -> App {
        let settings_path = Settings::default_path();
        let settings = settings_path
            .as_deref()
            .map(Settings::load)
            .unwrap_or_default();
        if args.input.input.is_none() && args.input.camera.is_none() {
            args.input.camera = settings.camera.clone();
        }
        let (networks, device_problem) = Networks::open(&args.model);
        let mut warnings = RecentLines::new(WARNINGS_SHOWN);
        warnings.extend(device_problem);
        // With nothing asked for and no camera on this machine, the bundled sample plays, so the
        // first screen shows tracking rather than an empty window.
        if args.input.input.is_none() && args.input.camera.is_none() && args.play.is_none() {
            if let Some(sample) = sample_input() {
                let no_camera = capture::list_cameras().map_or(true, |c| c.is_empty());
                if no_camera {
                    let note = format!(
                        "no camera found: playing the bundled sample {} (choose a camera or a \
                         file in the source panel)",
                        sample.display()
                    );
                    log::warn!("{note}");
                    warnings.push(note);
                    args.input.input = Some(sample);
                }
            }
        }
        let spec = args.input.spec();
        let mut source_name = describe(&spec);
        let mut playback = None;
        let (worker, pipeline_problem) =
            match args.play.as_deref().map(crate::record::playback::open) {
                Some(Ok((recording, clock))) => {
                    source_name = format!("take {}", recording.name);
                    playback = Some((Arc::clone(&clock), recording.duration_s()));
                    let (r, c) = (Arc::clone(&recording), Arc::clone(&clock));
                    let opener: capture::SourceOpener = Box::new(move || {
                        Ok(Box::new(crate::record::playback::PlaybackSource::new(
                            Arc::clone(&r),
                            Arc::clone(&c),
                        )) as Box<dyn capture::FrameSource>)
                    });
                    let pipeline = crate::record::playback::PlaybackPipeline::new(recording, clock);
                    let processor =
                        FrameProcessor::new(Some(Box::new(pipeline)), networks.people(&settings));
                    let worker =
                        InferenceWorker::spawn(LatestFrame::spawn(opener, false, false), processor);
                    (worker, None)
                }
                Some(Err(e)) => {
                    warnings.push(format!("cannot play the take: {e:#}"));
                    start_worker(
                        spec,
                        args.input.options(!args.no_loop),
                        &settings,
                        &networks,
                    )
                }
                None => start_worker(
                    spec,
                    args.input.options(!args.no_loop),
                    &settings,
                    &networks,
                ),
            };
        let overlay_options = OverlayOptions {
            boxes: settings.show_boxes,
            ids: settings.show_ids,
            landmarks: settings.show_landmarks,
            axes: settings.show_axes,
        };
        let mut timings_panel = TimingsPanel::new();
        timings_panel.show_plot = settings.show_timing_plot;
        let mut avatar_slots = AvatarSlots::new(&crate::avatar::default_avatar_dir());
        avatar_slots.mirror = settings.mirror;
        for (slot, path) in settings.avatars.iter().enumerate() {
            if let Some(path) = path {
                avatar_slots.choose(slot as u32 + 1, path.clone());
            }
        }
        let mut app = App {
            args,
            networks,
            source_name,
            worker,
            people: Vec::new(),
            frame_size: (0, 0),
            pipeline_problem,
            window: None,
            ring: TimingRing::with_capacity(600),
            meters: Meters::default(),
            timings_panel,
            source_panel: SourcePanel::default(),
            people_panel: PeoplePanel::default(),
            avatar_slots,
            avatar_path_text: Default::default(),
            avatar_rect: egui::Rect::NOTHING,
            view: settings.view,
            pipeline_choice: settings.pipeline,
            playback,
            stream_target: "127.0.0.1:39539".into(),
            record_status: String::new(),
            overlay_options,
            show_help: false,
            settings,
            settings_path,
            rgba: image::RgbaImage::new(0, 0),
            warnings,
            metrics: None,
            started: Instant::now(),
            last_redraw: Instant::now(),
            fatal: None,
        };
        if let Some(path) = app.args.metrics.clone() {
            let every = Duration::from_secs_f64(app.args.metrics_interval.max(0.1));
            match MetricsLog::create(&path, every) {
                Ok(log) => app.metrics = Some(log),
                Err(e) => app.warnings.push(format!("{e:#}")),
            }
        }
        if app.args.record.is_some() {
            app.toggle_recording();
        }
        if let Some(target) = app.args.stream.clone() {
            app.stream_target = target;
            app.toggle_streaming();
        }
        app
    }

    /// Switches the face pipeline live: capture, tracking and the window keep running.
    fn switch_pipeline(&mut self, kind: PipelineKind) {
        self.pipeline_choice = kind;
        self.settings.pipeline = kind;
        match load_pipeline(kind, &self.networks) {
            (Some(pipeline), _) => {
                self.worker.switch_pipeline(pipeline);
                self.pipeline_problem = None;
            }
            (None, Some(problem)) => self.warnings.push(problem),
            (None, None) => {}
        }
    }

    fn switch_source(&mut self, spec: SourceSpec) {
        self.source_name = describe(&spec);
        let (worker, problem) = start_worker(
            spec,
            self.args.input.options(!self.args.no_loop),
            &self.settings,
            &self.networks,
        );
        self.worker = worker;
        self.pipeline_problem = problem;
        self.people.clear();
        self.ring = TimingRing::with_capacity(600);
        self.warnings.clear();
    }

    fn create_window(&mut self, event_loop: &ActiveEventLoop) -> Result<WindowState> {
        let (width, height) = self.args.window_size;
        let attributes = Window::default_attributes()
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
        Ok(WindowState {
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
        })
    }

    fn redraw(&mut self) {
        self.last_redraw = Instant::now();
        if self.window.is_none() {
            return;
        }
        let processed = self.worker.take();
        for notice in self.worker.take_notices() {
            if notice.starts_with("recording stopped") {
                self.warnings.push(notice.clone());
            }
            self.record_status = notice;
        }
        let Some(state) = self.window.as_mut() else {
            return;
        };

        // Newest processed frame, if one arrived since the last redraw.
        let mut frame_timings = None;
        if let Some(processed) = processed {
            let (frame, mut timings) = (processed.frame, processed.timings);
            timings.time(Stage::Convert, || rgb_to_rgba(&frame.image, &mut self.rgba));
            timings.time(Stage::Render, || {
                state
                    .frame_view
                    .upload(&state.gpu.device, &state.gpu.queue, &self.rgba);
                draw_people(
                    &mut state.overlay,
                    &processed.people,
                    frame.image.dimensions(),
                    self.overlay_options,
                );
                state.overlay.upload(
                    &state.gpu.device,
                    &state.gpu.queue,
                    frame.image.dimensions(),
                );
            });
            self.people = processed.people;
            self.frame_size = frame.image.dimensions();
            frame_timings = Some((timings, frame.captured_at));
        }
        // The avatars: one per person, sized to where they were shown last frame.
        let mut stage_drawn = false;
        if self.view != ViewMode::Camera {
            let ppp = state.window.scale_factor() as f32;
            let (w, h) = (
                (self.avatar_rect.width() * ppp).round().max(16.0) as u32,
                (self.avatar_rect.height() * ppp).round().max(16.0) as u32,
            );
            if self.avatar_rect.is_positive()
                && (w, h) != (state.stage.target.width, state.stage.target.height)
            {
                state
                    .stage
                    .resize(&state.gpu.device, w.min(4096), h.min(4096));
                state.egui_renderer.update_egui_texture_from_wgpu_texture(
                    &state.gpu.device,
                    &state.stage.target.gamma_view,
                    wgpu::FilterMode::Linear,
                    state.stage_texture,
                );
            }
            let panel = &self.people_panel;
            let t = Instant::now();
            stage_drawn = self.avatar_slots.render(
                &state.stage,
                &state.gpu.device,
                &state.gpu.queue,
                &self.people,
                |person| {
                    let named = panel.weights(person);
                    let mut w = [0f32; 52];
                    for (name, value) in named {
                        if let Some(i) = crate::retarget::ARKIT_52.iter().position(|n| *n == name) {
                            w[i] = value;
                        }
                    }
                    w
                },
            );
            if let Some((timings, _)) = frame_timings.as_mut() {
                timings.add(Stage::Retarget, t.elapsed());
            }
        }
        self.warnings.extend(self.avatar_slots.warnings.drain(..));
        self.warnings.extend(self.worker.capture().take_warnings());
        // path fields of people no longer in view go with them
        let people = &self.people;
        self.avatar_path_text
            .retain(|id, _| people.iter().any(|p| p.id == *id));

        // The overlay; it also tells where the camera view goes.
        let status = self.worker.capture().status();
        let (_, dropped) = self.worker.capture().counts();
        let face_count = self
            .people
            .iter()
            .filter(|p| p.state == TrackState::Confirmed)
            .count();
        let pipeline_line = match (
            self.worker.pipeline_name(),
            &self.pipeline_problem,
            self.worker.error(),
        ) {
            (_, _, Some(error)) => format!("pipeline error: {error}"),
            (Some(name), _, None) => {
                format!("pipeline: {} · {face_count} people", name.to_uppercase())
            }
            (None, Some(problem), None) => problem.clone(),
            (None, None, None) => "no face pipeline".to_string(),
        };
        let raw_input = state.egui_state.take_egui_input(&state.window);
        let mut view_rect = egui::Rect::NOTHING;
        let mut action = None;
        let has_frame = state.frame_view.frame_size() != (0, 0);
        let device = state.gpu.describe();
        let networks_line = &self.networks.device_line;
        let fps = self.meters.fps();
        let frame_size = self.frame_size;
        let people = &self.people;
        let show_ids = self.overlay_options.ids;

        let latency = self.meters.latency_ms;
        let mut medians = self.worker.pipeline_medians();
        medians.retain(|(name, _)| *name != "playback");
        let mut record_toggle = false;
        let mut stream_toggle = false;
        let recording = self.worker.recording().map(|d| d.display().to_string());
        let streaming = self.worker.streaming();
        let record_status = self.record_status.clone();
        let stream_target = &mut self.stream_target;
        let playback = self.playback.clone();
        let mut pipeline_request: Option<PipelineKind> = None;
        let view = &mut self.view;
        let stage_texture = state.stage_texture;
        let mut avatar_rect = egui::Rect::NOTHING;
        let slots = &mut self.avatar_slots;
        let path_texts = &mut self.avatar_path_text;
        let output = state.egui_ctx.run_ui(raw_input, |ui| {
            egui::Panel::right("overlay").default_size(330.0).show(ui, |ui| {
                ui.heading("polyface");
                ui.label(format!("display: {fps:.1} fps"));
                if let Some(latency) = latency {
                    ui.label(format!("latency capture-to-present: {latency:.1} ms"));
                }
                ui.label(format!("rendering: {device}"));
                ui.label(format!("networks: {networks_line}"));
                ui.label(&pipeline_line);
                ui.horizontal(|ui| {
                    ui.label("pipeline:");
                    for (kind, label) in [(PipelineKind::Sfn, "SFN (detector + per face)"), (PipelineKind::Mfn, "MFN (one pass)")] {
                        if ui.selectable_label(self.pipeline_choice == kind, label).clicked() && self.pipeline_choice != kind {
                            pipeline_request = Some(kind);
                        }
                    }
                });
                if !medians.is_empty() {
                    let text: Vec<String> = medians
                        .iter()
                        .map(|(n, ms)| format!("{} {ms:.1} ms", n.to_uppercase()))
                        .collect();
                    ui.label(format!("face stages, recent median: {}", text.join(" · ")));
                }
                ui.horizontal(|ui| {
                    let label = if recording.is_some() { "stop recording (R)" } else { "record (R)" };
                    record_toggle = ui.button(label).clicked();
                    let label = if streaming { "stop VMC stream" } else { "stream VMC to" };
                    stream_toggle = ui.button(label).clicked();
                    ui.add_enabled(
                        !streaming,
                        egui::TextEdit::singleline(stream_target).desired_width(120.0),
                    );
                });
                if let Some(dir) = &recording {
                    ui.colored_label(egui::Color32::from_rgb(255, 90, 90), format!("recording into {dir}"));
                }
                if !record_status.is_empty() {
                    ui.label(&record_status);
                }
                if let Some((clock, duration)) = &playback {
                    use std::sync::atomic::Ordering;
                    let count = clock.frame_count.max(1);
                    let mut at = clock.position.load(Ordering::SeqCst);
                    ui.horizontal(|ui| {
                        let paused = clock.paused.load(Ordering::SeqCst);
                        if ui.button(if paused { "play" } else { "pause" }).clicked() {
                            clock.paused.store(!paused, Ordering::SeqCst);
                        }
                        let slider = egui::Slider::new(&mut at, 0..=count - 1).text(format!(
                            "frame of {count} ({duration:.1} s)"
                        ));
                        if ui.add(slider).changed() {
                            clock.seek(at);
                        }
                    });
                }
                ui.horizontal(|ui| {
                    ui.label("view:");
                    for mode in ViewMode::ALL {
                        ui.selectable_value(view, mode, mode.name());
                    }
                    ui.checkbox(&mut slots.mirror, "mirror");
                });
                ui.separator();
                action = self.source_panel.ui(ui, &status, dropped);
                ui.separator();
                self.timings_panel.ui(ui, &self.ring);
                ui.separator();
                ui.horizontal_wrapped(|ui| {
                    let o = &mut self.overlay_options;
                    ui.checkbox(&mut o.boxes, "boxes");
                    ui.checkbox(&mut o.ids, "IDs");
                    ui.checkbox(&mut o.landmarks, "landmarks");
                    ui.checkbox(&mut o.axes, "axes");
                    if ui.button("help (F1)").clicked() {
                        self.show_help = !self.show_help;
                    }
                });
                ui.separator();
                egui::ScrollArea::vertical().show(ui, |ui| {
                    self.people_panel.ui(ui, people);
                    let confirmed: Vec<u32> = people
                        .iter()
                        .filter(|p| p.state == TrackState::Confirmed)
                        .map(|p| p.id)
                        .collect();
                    if !confirmed.is_empty() {
                        ui.separator();
                        ui.label("avatars (or drop a .glb / .vrm on the window):");
                        for id in confirmed {
                            ui.label(format!("person #{id}"));
                            let text = path_texts.entry(id).or_default();
                            slots.picker(ui, id, text);
                        }
                    }
                });
            });
            if !self.warnings.is_empty() {
                egui::Panel::bottom("warnings").show(ui, |ui| {
                    for warning in self.warnings.iter() {
                        ui.colored_label(egui::Color32::from_rgb(255, 200, 90), warning);
                    }
                });
            }
            let mut show_help = self.show_help;
            egui::Window::new("Keyboard shortcuts")
                .open(&mut show_help)
                .collapsible(false)
                .show(ui.ctx(), |ui| {
                    egui::Grid::new("shortcuts").show(ui, |ui| {
                        for (key, what) in SHORTCUTS {
                            ui.monospace(key);
                            ui.label(what);
                            ui.end_row();
                        }
                    });
                });
            self.show_help = show_help;
            egui::CentralPanel::default().frame(egui::Frame::NONE).show(ui, |ui| {
                let full = ui.max_rect();
                match *view {
                    ViewMode::Both => {
                        let (left, right) = full.split_left_right_at_fraction(0.5);
                        view_rect = left;
                        avatar_rect = right;
                    }
                    ViewMode::Camera => view_rect = full,
                    ViewMode::Avatars => {
                        view_rect = egui::Rect::NOTHING;
                        avatar_rect = full;
                    }
                }
                if avatar_rect.is_positive() {
                    ui.put(
                        avatar_rect,
                        egui::Image::new((stage_texture, avatar_rect.size())),
                    );
                }
                // Person IDs above their boxes, mapped from frame pixels to the letterboxed view.
                let (fw, fh) = frame_size;
                if fw > 0 && fh > 0 {
                    let area = PixelRect {
                        x: view_rect.min.x,
                        y: view_rect.min.y,
                        width: view_rect.width(),
                        height: view_rect.height(),
                    };
                    let shown = area.fit(fw, fh);
                    let scale = shown.width / fw as f32;
                    let ids_shown = if show_ids { people.len() } else { 0 };
                    for person in people
                        .iter()
                        .take(ids_shown)
                        .filter(|p| p.state == TrackState::Confirmed)
                    {
                        let corner = person.smoothed.bbox.0;
                        let at = egui::pos2(shown.x + corner.x * scale, shown.y + corner.y * scale - 2.0);
                        let [r, g, b, _] = person_colour(person.id);
                        let colour = egui::Color32::from_rgb((r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8);
                        ui.painter().text(
                            at,
                            egui::Align2::LEFT_BOTTOM,
                            format!("#{}", person.id),
                            egui::FontId::proportional(16.0),
                            colour,
                        );
                    }
                }
                if !has_frame {
                    ui.centered_and_justified(|ui| {
                        let text = match &status {
                            CaptureStatus::Reconnecting { error } | CaptureStatus::Failed { error } => {
                                format!("{error}\n\nType a video, image or folder path in the panel on the right.")
                            }
                            _ => format!("waiting for {}…", self.source_name),
                        };
                        ui.label(egui::RichText::new(text).size(18.0));
                    });
                }
            });
        });
        state
            .egui_state
            .handle_platform_output(&state.window, output.platform_output);
        self.avatar_rect = avatar_rect;

        // Draw: camera view, then the overlay on top.
        let render_start = Instant::now();
        let surface_texture = match state.surface.get_current_texture() {
            wgpu::CurrentSurfaceTexture::Success(t)
            | wgpu::CurrentSurfaceTexture::Suboptimal(t) => t,
            wgpu::CurrentSurfaceTexture::Outdated | wgpu::CurrentSurfaceTexture::Lost => {
                state.surface.configure(&state.gpu.device, &state.config);
                return;
            }
            _ => return,
        };
        let target = surface_texture.texture.create_view(&Default::default());
        let ppp = output.pixels_per_point;
        let screen = egui_wgpu::ScreenDescriptor {
            size_in_pixels: [state.config.width, state.config.height],
            pixels_per_point: ppp,
        };
        let paint_jobs = state.egui_ctx.tessellate(output.shapes, ppp);
        for (id, deltas) in &output.textures_delta.set {
            for delta in deltas {
                state
                    .egui_renderer
                    .update_texture(&state.gpu.device, &state.gpu.queue, *id, delta);
            }
        }
        let mut encoder = state.gpu.device.create_command_encoder(&Default::default());
        let extra = state.egui_renderer.update_buffers(
            &state.gpu.device,
            &state.gpu.queue,
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
                x: view_rect.min.x * ppp,
                y: view_rect.min.y * ppp,
                width: view_rect.width() * ppp,
                height: view_rect.height() * ppp,
            };
            if let Some(rect) =
                state
                    .frame_view
                    .draw(&mut pass, area, (state.config.width, state.config.height))
            {
                state.overlay.draw(&mut pass, rect);
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
            state
                .egui_renderer
                .render(&mut pass.forget_lifetime(), &paint_jobs, &screen);
        }
        let commands = extra.into_iter().chain(std::iter::once(encoder.finish()));
        state.in_flight.submit(&state.gpu, commands);
        for id in &output.textures_delta.free {
            state.egui_renderer.free_texture(id);
        }
        let render_time = render_start.elapsed();
        let present_start = Instant::now();
        state.window.pre_present_notify();
        state.gpu.queue.present(surface_texture);
        let presented_at = Instant::now();
        self.meters.presented(presented_at);

        let shown_latency_ms = frame_timings.map(|(mut timings, captured_at)| {
            timings.add(Stage::Render, render_time);
            timings.add(Stage::Present, presented_at - present_start);
            self.ring.push(timings);
            (presented_at - captured_at).as_secs_f32() * 1000.0
        });
        self.meters.latency_ms = shown_latency_ms.or(self.meters.latency_ms);
        if let Some(log) = self.metrics.as_mut() {
            log.presented(shown_latency_ms, stage_drawn);
            let (captured, capture_dropped) = self.worker.capture().counts();
            log.maybe_report(&AppState {
                ring: &self.ring,
                device: &state.gpu.device,
                captured,
                capture_dropped,
                processed: self.worker.processed(),
                people: face_count,
                avatar_files: self.avatar_slots.loaded_files(),
                avatars_worn: self.avatar_slots.worn(),
                warnings: self.warnings.len(),
            });
        }

        if let Some(name) = pipeline_request {
            if self.playback.is_some() {
                self.warnings
                    .push("playing a take: the recorded faces drive the avatars".into());
            } else {
                self.switch_pipeline(name);
            }
        }
        if record_toggle {
            self.toggle_recording();
        }
        if stream_toggle {
            self.toggle_streaming();
        }
        match action {
            Some(SourceAction::OpenPath(path)) => self.switch_source(SourceSpec::Path(path)),
            Some(SourceAction::OpenCamera) => {
                self.switch_source(SourceSpec::Camera(self.args.input.camera.clone()))
            }
            None => {}
        }
    }
}

impl App {
    /// Starts a take (into `--record DIR`, else a new folder under ~/polyface-takes) or stops
    /// the one running, which writes its animation files. Failures are reported, never fatal.
    fn toggle_recording(&mut self) {
        if self.worker.recording().is_some() {
            self.worker.stop_recording();
            return;
        }
        let dir = self.args.record.clone().unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(std::path::PathBuf::from)
                .unwrap_or_default();
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            home.join("polyface-takes").join(format!("take-{stamp}"))
        });
        self.record_status = format!("recording into {}", dir.display());
        self.worker.start_recording(dir);
    }

    fn toggle_streaming(&mut self) {
        if self.worker.streaming() {
            self.worker.stop_streaming();
            return;
        }
        match crate::stream::VmcStreamer::new(&self.stream_target, crate::stream::BlendNames::Vrm) {
            Ok(s) => {
                self.record_status = format!(
                    "streaming VMC to {} (+1 port per person)",
                    self.stream_target
                );
                self.worker.start_streaming(s);
            }
            Err(e) => self.record_status = format!("cannot stream: {e:#}"),
        }
    }

    /// A file dropped on the window: an avatar goes to the first person without a chosen one
    /// (else person #1 / the lowest ID); anything else is opened as the source.
    fn dropped(&mut self, path: std::path::PathBuf) {
        let is_avatar = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "glb" | "gltf" | "vrm"));
        if !is_avatar {
            self.switch_source(SourceSpec::Path(path));
            return;
        }
        let mut ids: Vec<u32> = self
            .people
            .iter()
            .filter(|p| p.state == TrackState::Confirmed)
            .map(|p| p.id)
            .collect();
        ids.sort_unstable();
        let id = ids
            .iter()
            .copied()
            .find(|id| !self.avatar_slots.chosen.contains_key(id))
            .or(ids.first().copied())
            .unwrap_or(1);
        self.warnings
            .push(format!("{} → person #{id}", path.display()));
        self.avatar_slots.choose(id, path);
    }

    /// Writes the current settings; a failure is logged, never fatal.
    fn save_settings(&mut self) {
        let o = self.overlay_options;
        self.settings.show_boxes = o.boxes;
        self.settings.show_ids = o.ids;
        self.settings.show_landmarks = o.landmarks;
        self.settings.show_axes = o.axes;
        self.settings.show_timing_plot = self.timings_panel.show_plot;
        self.settings.view = self.view;
        self.settings.mirror = self.avatar_slots.mirror;
        self.settings.pipeline = self.pipeline_choice;
        let slots = self.avatar_slots.chosen.keys().copied().max().unwrap_or(0) as usize;
        self.settings.avatars = (1..=slots as u32)
            .map(|id| self.avatar_slots.chosen.get(&id).cloned())
            .collect();
        if let Some(camera) = &self.args.input.camera {
            self.settings.camera = Some(camera.clone());
        }
        if let Some(path) = &self.settings_path {
            if let Err(e) = self.settings.save(path) {
                log::warn!("{e:#}");
            }
        }
    }

    /// Keyboard shortcuts (listed in [`SHORTCUTS`]).
    fn shortcut(&mut self, key: &winit::keyboard::Key) {
        use winit::keyboard::{Key, NamedKey};
        let o = &mut self.overlay_options;
        match key {
            Key::Named(NamedKey::F1) => self.show_help = !self.show_help,
            Key::Character(c) => match c.to_lowercase().as_str() {
                "b" => o.boxes = !o.boxes,
                "i" => o.ids = !o.ids,
                "l" => o.landmarks = !o.landmarks,
                "a" => o.axes = !o.axes,
                "h" => self.show_help = !self.show_help,
                "v" => self.view = self.view.next(),
                "r" => self.toggle_recording(),
                "m" => self.avatar_slots.mirror = !self.avatar_slots.mirror,
                "p" => self.switch_pipeline(self.pipeline_choice.other()),
                "c" => {
                    for person in self
                        .people
                        .iter()
                        .filter(|p| p.state == TrackState::Confirmed)
                    {
                        self.people_panel.calibrate(person);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
}

impl ApplicationHandler for App {
    fn resumed(&mut self, event_loop: &ActiveEventLoop) {
        if self.window.is_some() {
            return;
        }
        match self.create_window(event_loop) {
            Ok(state) => {
                state.window.request_redraw();
                self.window = Some(state);
            }
            Err(e) => {
                self.fatal = Some(e);
                event_loop.exit();
            }
        }
    }

    fn window_event(&mut self, event_loop: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        let Some(state) = self.window.as_mut() else {
            return;
        };
        let response = state.egui_state.on_window_event(&state.window, &event);
        match event {
            WindowEvent::CloseRequested => event_loop.exit(),
            WindowEvent::Resized(size) => {
                state.config.width = size.width.max(1);
                state.config.height = size.height.max(1);
                state.surface.configure(&state.gpu.device, &state.config);
                state.window.request_redraw();
            }
            WindowEvent::RedrawRequested => self.redraw(),
            WindowEvent::DroppedFile(path) => self.dropped(path),
            WindowEvent::KeyboardInput { event: key, .. }
                if !response.consumed && key.state == winit::event::ElementState::Pressed =>
            {
                self.shortcut(&key.logical_key);
            }
            _ => {
                if response.repaint {
                    state.window.request_redraw();
                }
            }
        }
    }

    fn exiting(&mut self, _event_loop: &ActiveEventLoop) {
        // The worker finishes a take in progress when it stops (dropping the app joins it).
        self.worker.stop_recording();
        self.save_settings();
    }

    fn about_to_wait(&mut self, event_loop: &ActiveEventLoop) {
        if let Some(seconds) = self.args.exit_after {
            if self.started.elapsed().as_secs_f64() >= seconds {
                event_loop.exit();
                return;
            }
        }
        let next = self.last_redraw + FRAME_INTERVAL;
        if Instant::now() >= next {
            if let Some(state) = &self.window {
                state.window.request_redraw();
            }
        }
        event_loop.set_control_flow(ControlFlow::WaitUntil(
            next.max(Instant::now() + Duration::from_millis(1)),
        ));
    }
}
