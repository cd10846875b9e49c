//! What the app holds and how it changes: the inference worker (capture, the face pipeline,
//! tracking, recording, streaming), the people of the last frame, avatars, overlay options and
//! settings. Requests from the panels, the keyboard and dropped files arrive as [`Action`]s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capture::{self, LatestFrame, SourceOptions, SourceSpec};
use crate::cli::RunArgs;
use crate::inference::{InferenceWorker, Processed};
use crate::known::{Choices, KnownPeople, Recogniser, SharedKnownPeople};
use crate::processor::FrameProcessor;
use crate::record::playback::PlaybackClock;
use crate::settings::{Settings, ViewMode};
use crate::soak::metrics::{AppHealth, MetricsLog};
use crate::timing::{FrameTimings, Stage, TimingRing};
use crate::track::{Person, TrackState};
use crate::ui::{
    AvatarSlots, PeoplePanel, PeopleRequest, RecentLines, RouteRequest, SourceAction, SourcePanel,
    TimingsPanel, VmcRoutesPanel,
};
use crate::vision::{FacePipeline, PipelineKind};

/// Warning lines shown under the views (the newest).
const WARNINGS_SHOWN: usize = 5;
/// A public-domain clip the app plays when no camera is found (its README gives the source).
const SAMPLE_INPUT: &str = "assets/sample/astronaut.mp4";

/// Something the user asked for.
pub enum Action {
    SwitchPipeline(PipelineKind),
    /// The other pipeline than the one asked for last (the `P` shortcut).
    NextPipeline,
    ToggleRecording,
    ToggleStreaming,
    Source(SourceAction),
    /// A file dropped on the window: an avatar for someone, or a new source.
    Dropped(PathBuf),
    ToggleHelp,
    NextView,
    ToggleMirror,
    ToggleBoxes,
    ToggleIds,
    ToggleLandmarks,
    ToggleAxes,
    /// Everyone's current face becomes their neutral one.
    CalibrateEveryone,
    /// Name or forget a person (the people panel).
    People(PeopleRequest),
    /// Add or remove a VMC receiver by name.
    Route(RouteRequest),
}

/// Keyboard shortcuts, as the help window lists them.
pub const SHORTCUTS: [(&str, &str); 10] = [
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

/// The action of a key ([`SHORTCUTS`]).
pub fn shortcut(key: &winit::keyboard::Key) -> Option<Action> {
    use winit::keyboard::{Key, NamedKey};
    match key {
        Key::Named(NamedKey::F1) => Some(Action::ToggleHelp),
        Key::Character(c) => match c.to_lowercase().as_str() {
            "b" => Some(Action::ToggleBoxes),
            "i" => Some(Action::ToggleIds),
            "l" => Some(Action::ToggleLandmarks),
            "a" => Some(Action::ToggleAxes),
            "h" => Some(Action::ToggleHelp),
            "v" => Some(Action::NextView),
            "r" => Some(Action::ToggleRecording),
            "m" => Some(Action::ToggleMirror),
            "p" => Some(Action::NextPipeline),
            "c" => Some(Action::CalibrateEveryone),
            _ => None,
        },
        _ => None,
    }
}

/// What the camera view draws over the frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OverlayOptions {
    pub boxes: bool,
    pub ids: bool,
    pub landmarks: bool,
    pub axes: bool,
}

/// Where the networks come from and run: `--models` and `--device`, resolved once at start.
pub struct Networks {
    models: PathBuf,
    /// The people the user named, shared by every worker (and the UI) of this run.
    known: SharedKnownPeople,
    /// Where they are stored (none: the file could not be read, so it is never overwritten).
    known_path: Option<PathBuf>,
    /// Why named people are not recognised (an unreadable people file).
    known_problem: Option<String>,
    device: candle_core::Device,
    /// Which device that is, for the overlay ("CPU (auto: ...)", "CUDA 0").
    pub device_line: String,
}

impl Networks {
    fn open(args: &crate::cli::ModelArgs) -> (Networks, Option<String>) {
        let models = crate::vision::models_dir(args.models.as_deref());
        let (recogniser, known_problem) = Recogniser::open(KnownPeople::default_path());
        let (known, known_path) = (recogniser.store, recogniser.path);
        match crate::vision::open_device(args.device) {
            Ok((device, device_line)) => {
                log::info!("networks on {device_line}");
                let networks = Networks {
                    models,
                    known,
                    known_path,
                    known_problem,
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
                    known,
                    known_path,
                    known_problem,
                    device: candle_core::Device::Cpu,
                    device_line: "CPU".into(),
                };
                (networks, Some(problem))
            }
        }
    }

    /// Tracking with the app's smoothing, and re-identification when its model loads.
    fn people(&self, settings: &Settings) -> crate::track::People {
        let mut recogniser = Recogniser::new(self.known.clone(), self.known_path.clone());
        if let Some(problem) = &self.known_problem {
            recogniser = Recogniser::blocked(recogniser, problem.clone());
        }
        let mut people = crate::track::People::default()
            .with_reid_from(&self.models, &self.device)
            .with_known(recogniser);
        people.tracker.config.smoothing = settings.smoothing;
        people
    }

    /// The `kind` face pipeline, or why there is none (the app still shows frames without one).
    fn pipeline(&self, kind: PipelineKind) -> (Option<Box<dyn FacePipeline>>, Option<String>) {
        match crate::vision::load_pipeline(kind, &self.models, &self.device) {
            Ok(pipeline) => (Some(pipeline), None),
            Err(e) => {
                let problem = format!("no face tracking ({}): {e:#}", kind.name().to_uppercase());
                log::warn!("{problem}");
                (None, Some(problem))
            }
        }
    }

    /// Capture of `spec` on its thread and the inference worker behind it.
    fn worker(
        &self,
        spec: SourceSpec,
        options: SourceOptions,
        settings: &Settings,
    ) -> (InferenceWorker, Option<String>) {
        let (pipeline, problem) = self.pipeline(settings.pipeline);
        let processor = FrameProcessor::new(pipeline, self.people(settings));
        let capture = LatestFrame::spawn(capture::opener(spec, options), true, true);
        (InferenceWorker::spawn(capture, processor), problem)
    }
}

/// Display rate and latency, besides the stage timings.
#[derive(Default)]
pub struct Meters {
    presents: std::collections::VecDeque<Instant>,
    pub latency_ms: Option<f32>,
}

impl Meters {
    pub fn fps(&self) -> f32 {
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

/// When a picture reached the screen, and what drawing and presenting it took.
pub struct Presented {
    pub at: Instant,
    pub render: Duration,
    pub present: Duration,
    /// The avatar stage was drawn anew for it.
    pub stage_drawn: bool,
}

pub struct AppState {
    args: RunArgs,
    pub networks: Networks,
    pub source_name: String,
    pub worker: InferenceWorker,
    /// The people of the newest frame shown.
    pub people: Vec<Person>,
    /// Size of the frame `people` refer to.
    pub frame_size: (u32, u32),
    /// Why faces are not tracked (models missing), shown in the overlay.
    pub pipeline_problem: Option<String>,
    pub ring: TimingRing,
    pub meters: Meters,
    pub timings_panel: TimingsPanel,
    pub source_panel: SourcePanel,
    pub people_panel: PeoplePanel,
    pub vmc_routes_panel: VmcRoutesPanel,
    pub avatar_slots: AvatarSlots,
    /// The avatar path typed for each person in view.
    pub avatar_path_text: std::collections::HashMap<u32, String>,
    /// Person ID → the name whose stored settings (avatar, neutral face, smoothing) they were given.
    applied_names: std::collections::HashMap<u32, String>,
    pub view: ViewMode,
    /// The pipeline asked for; the worker reports the one running.
    pub pipeline_choice: PipelineKind,
    /// Playing a recorded take (`--play`): its clock and length (s) drive the timeline.
    pub playback: Option<(Arc<PlaybackClock>, f64)>,
    /// Where the VMC stream goes when it is switched on.
    pub stream_target: String,
    /// The last thing recording / streaming said (shown under their buttons).
    pub record_status: String,
    pub overlay_options: OverlayOptions,
    pub show_help: bool,
    settings: Settings,
    settings_path: Option<PathBuf>,
    pub warnings: RecentLines,
    /// The health report `--metrics` asks for.
    metrics: Option<MetricsLog>,
}

impl AppState {
    pub fn new(mut args: RunArgs) -> AppState {
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
        warnings.extend(networks.known_problem.clone());
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
        let options = args.input.options(!args.no_loop);
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
                    // a take's faces are not recognised again (its frames are not the camera's)
                    let mut people = networks.people(&settings);
                    people.known = None;
                    let processor = FrameProcessor::new(Some(Box::new(pipeline)), people);
                    let worker =
                        InferenceWorker::spawn(LatestFrame::spawn(opener, false, false), processor);
                    (worker, None)
                }
                Some(Err(e)) => {
                    warnings.push(format!("cannot play the take: {e:#}"));
                    networks.worker(spec, options, &settings)
                }
                None => networks.worker(spec, options, &settings),
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
        let mut state = AppState {
            overlay_options: OverlayOptions {
                boxes: settings.show_boxes,
                ids: settings.show_ids,
                landmarks: settings.show_landmarks,
                axes: settings.show_axes,
            },
            view: settings.view,
            pipeline_choice: settings.pipeline,
            args,
            networks,
            source_name,
            worker,
            people: Vec::new(),
            frame_size: (0, 0),
            pipeline_problem,
            ring: TimingRing::with_capacity(600),
            meters: Meters::default(),
            timings_panel,
            source_panel: SourcePanel::default(),
            people_panel: PeoplePanel::default(),
            vmc_routes_panel: VmcRoutesPanel::default(),
            avatar_slots,
            avatar_path_text: Default::default(),
            applied_names: Default::default(),
            playback,
            stream_target: "127.0.0.1:39539".into(),
            record_status: String::new(),
            show_help: false,
            settings,
            settings_path,
            warnings,
            metrics: None,
        };
        if let Some(path) = state.args.metrics.clone() {
            let every = Duration::from_secs_f64(state.args.metrics_interval.max(0.1));
            match MetricsLog::create(&path, every) {
                Ok(log) => state.metrics = Some(log),
                Err(e) => state.warnings.push(format!("{e:#}")),
            }
        }
        if state.args.record.is_some() {
            state.apply(Action::ToggleRecording);
        }
        if let Some(target) = state.args.stream.clone() {
            state.stream_target = target;
            state.apply(Action::ToggleStreaming);
        }
        state
    }

    pub fn window_size(&self) -> (u32, u32) {
        self.args.window_size
    }

    pub fn exit_after(&self) -> Option<f64> {
        self.args.exit_after
    }

    /// The newest processed frame not yet shown; its people become the app's.
    pub fn take_frame(&mut self) -> Option<Processed> {
        let processed = self.worker.take()?;
        self.people = processed.people.clone();
        self.frame_size = processed.frame.image.dimensions();
        // path fields of people no longer in view go with them
        let people = &self.people;
        self.avatar_path_text
            .retain(|id, _| people.iter().any(|p| p.id == *id));
        self.apply_known_settings();
        Some(processed)
    }

    /// What recording and streaming said since the last redraw.
    pub fn collect_notices(&mut self) {
        for notice in self.worker.take_notices() {
            if notice.starts_with("recording stopped") {
                self.warnings.push(notice.clone());
            }
            self.record_status = notice;
        }
    }

    /// Problems the avatars and the capture reported since the last redraw.
    pub fn collect_warnings(&mut self) {
        self.warnings.extend(self.avatar_slots.warnings.drain(..));
        self.warnings.extend(self.worker.capture().take_warnings());
    }

    /// A picture reached the screen: display rate, latency and the frame's stage times, and the
    /// `--metrics` report.
    pub fn presented(
        &mut self,
        shown: Option<(FrameTimings, Instant)>,
        presented: Presented,
        device: &wgpu::Device,
    ) {
        self.meters.presented(presented.at);
        let shown_latency_ms = shown.map(|(mut timings, captured_at)| {
            timings.add(Stage::Render, presented.render);
            timings.add(Stage::Present, presented.present);
            self.ring.push(timings);
            (presented.at - captured_at).as_secs_f32() * 1000.0
        });
        self.meters.latency_ms = shown_latency_ms.or(self.meters.latency_ms);
        let people = self.confirmed().count();
        if let Some(log) = self.metrics.as_mut() {
            log.presented(shown_latency_ms, presented.stage_drawn);
            let (captured, capture_dropped) = self.worker.capture().counts();
            log.maybe_report(&AppHealth {
                ring: &self.ring,
                device,
                captured,
                capture_dropped,
                processed: self.worker.processed(),
                people,
                avatar_files: self.avatar_slots.loaded_files(),
                avatars_worn: self.avatar_slots.worn(),
                warnings: self.warnings.len(),
            });
        }
    }

    /// The people tracked with confidence (those with avatars and cards).
    pub fn confirmed(&self) -> impl Iterator<Item = &Person> {
        self.people
            .iter()
            .filter(|p| p.state == TrackState::Confirmed)
    }

    /// Each person's (calibrated) ARKit-52 weights, for their avatar.
    pub fn avatar_weights(&self, person: &Person) -> [f32; 52] {
        let mut w = [0f32; 52];
        for (name, value) in self.people_panel.weights(person) {
            if let Some(i) = crate::retarget::ARKIT_52.iter().position(|n| *n == name) {
                w[i] = value;
            }
        }
        w
    }

    pub fn apply(&mut self, action: Action) {
        let o = &mut self.overlay_options;
        match action {
            Action::SwitchPipeline(kind) => self.switch_pipeline(kind),
            Action::NextPipeline => self.switch_pipeline(self.pipeline_choice.other()),
            Action::ToggleRecording => self.toggle_recording(),
            Action::ToggleStreaming => self.toggle_streaming(),
            Action::Source(SourceAction::OpenPath(path)) => {
                self.switch_source(SourceSpec::Path(path))
            }
            Action::Source(SourceAction::OpenCamera) => {
                self.switch_source(SourceSpec::Camera(self.args.input.camera.clone()))
            }
            Action::Dropped(path) => self.dropped(path),
            Action::ToggleHelp => self.show_help = !self.show_help,
            Action::NextView => self.view = self.view.next(),
            Action::ToggleMirror => self.avatar_slots.mirror = !self.avatar_slots.mirror,
            Action::ToggleBoxes => o.boxes = !o.boxes,
            Action::ToggleIds => o.ids = !o.ids,
            Action::ToggleLandmarks => o.landmarks = !o.landmarks,
            Action::ToggleAxes => o.axes = !o.axes,
            Action::CalibrateEveryone => {
                let people: Vec<Person> = self.confirmed().cloned().collect();
                for person in &people {
                    self.people_panel.calibrate(person);
                }
            }
            Action::People(PeopleRequest::Name { id, name }) => {
                let choices = self.choices_of(id);
                self.applied_names.insert(id, name.clone());
                self.worker.name_person(id, name, choices);
            }
            Action::People(PeopleRequest::Forget(name)) => self.forget(name),
            Action::People(PeopleRequest::Smoothing { id, smoothing }) => {
                self.worker.set_smoothing(id, smoothing);
            }
            Action::Route(request) => self.route(request),
        }
    }

    /// The settings as they will be saved.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Changes the VMC receivers by name: saved in the settings at once, and used by the stream
    /// on now from its next frame. An address that does not resolve changes nothing.
    fn route(&mut self, request: RouteRequest) {
        let mut routes = self.settings.vmc_routes.clone();
        match request {
            RouteRequest::Set { name, target } => {
                if let Err(e) = crate::stream::resolve_route(&name, &target) {
                    self.record_status = format!("{e:#}");
                    return;
                }
                self.record_status = format!("VMC: {name} → {target}");
                routes.insert(name, target);
            }
            RouteRequest::Remove(name) => {
                self.record_status = format!("VMC: {name} streams like everyone else");
                routes.remove(&name);
            }
        }
        match crate::stream::resolve_routes(&routes) {
            Ok(resolved) => self.worker.set_vmc_routes(resolved),
            Err(e) => self.record_status = format!("{e:#}"),
        }
        self.settings.vmc_routes = routes;
        self.save_settings();
    }

    /// What person `id` chose this session (avatar, neutral face, smoothing).
    fn choices_of(&self, id: u32) -> Choices {
        Choices {
            avatar: self.avatar_slots.chosen.get(&id).cloned(),
            neutral: self.people_panel.neutral(id).map(|n| n.to_vec()),
            smoothing: self.people_panel.smoothing(id),
        }
    }

    /// A recognised person gets what they chose last time (avatar, neutral face, smoothing),
    /// once per ID and name: no store access per frame.
    fn apply_known_settings(&mut self) {
        let people = &self.people;
        let leaving: Vec<u32> = self
            .applied_names
            .keys()
            .copied()
            .filter(|id| !people.iter().any(|p| p.id == *id))
            .collect();
        if !leaving.is_empty() {
            // what they chose this session stays with their name
            self.save_known_settings(&leaving);
            self.applied_names.retain(|id, _| !leaving.contains(id));
        }
        let new: Vec<(u32, String)> = self
            .people
            .iter()
            .filter_map(|p| Some((p.id, p.name.clone()?)))
            .filter(|(id, name)| self.applied_names.get(id) != Some(name))
            .collect();
        if new.is_empty() {
            return;
        }
        let store = self
            .networks
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (id, name) in new {
            if let Some(known) = store.get(&name) {
                let chosen = &known.choices;
                if let Some(avatar) = &chosen.avatar {
                    self.avatar_slots.choose(id, avatar.clone());
                }
                if let Some(neutral) = chosen.neutral.as_deref() {
                    if let Ok(neutral) = <[f32; 52]>::try_from(neutral) {
                        self.people_panel.set_neutral(id, &neutral);
                    }
                }
                if let Some(smoothing) = chosen.smoothing {
                    self.people_panel.set_smoothing(id, Some(smoothing));
                    self.worker.set_smoothing(id, Some(smoothing));
                }
            }
            self.applied_names.insert(id, name);
        }
    }

    /// Deletes what is stored about `name`; whoever carries it in view becomes unnamed.
    fn forget(&mut self, name: String) {
        let saved = {
            let mut store = self
                .networks
                .known
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match &self.networks.known_path {
                Some(path) => store.update_file(path, |s| {
                    s.forget(&name);
                    Ok(())
                }),
                None => {
                    store.forget(&name);
                    Ok(())
                }
            }
        };
        self.record_status = match saved {
            Ok(()) => format!("forgot {name}"),
            Err(e) => format!("cannot forget {name}: {e:#}"),
        };
        self.applied_names.retain(|_, n| *n != name);
        self.worker.forgotten(Some(name));
    }

    /// Named people with IDs `ids` keep the avatar, neutral face and smoothing they have now
    /// (when they leave the view and when the app closes); the file is written only when that
    /// changed.
    fn save_known_settings(&mut self, ids: &[u32]) {
        let Some(path) = self.networks.known_path.clone() else {
            return;
        };
        let chosen: Vec<(String, Choices)> = ids
            .iter()
            .filter_map(|id| Some((self.applied_names.get(id)?.clone(), self.choices_of(*id))))
            .collect();
        let mut store = self
            .networks
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let differs = chosen
            .iter()
            .any(|(name, choices)| store.get(name).is_some_and(|k| k.choices != *choices));
        if !differs {
            return;
        }
        let saved = store.update_file(&path, |s| {
            for (name, choices) in chosen {
                if let Some(known) = s.get_mut(&name) {
                    known.choices = choices;
                }
            }
            Ok(())
        });
        if let Err(e) = saved {
            log::warn!("{e:#}");
        }
    }

    /// Switches the face pipeline live: capture, tracking and the window keep running.
    fn switch_pipeline(&mut self, kind: PipelineKind) {
        if self.playback.is_some() {
            self.warnings
                .push("playing a take: the recorded faces drive the avatars".into());
            return;
        }
        self.pipeline_choice = kind;
        self.settings.pipeline = kind;
        match self.networks.pipeline(kind) {
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
        let options = self.args.input.options(!self.args.no_loop);
        let (worker, problem) = self.networks.worker(spec, options, &self.settings);
        self.worker = worker;
        self.pipeline_problem = problem;
        self.people.clear();
        self.ring = TimingRing::with_capacity(600);
        self.warnings.clear();
    }

    /// Starts a take (into `--record DIR`, else a new folder under ~/polyface-takes) or stops
    /// the one running, which writes its animation files. Failures are reported, never fatal.
    fn toggle_recording(&mut self) {
        if self.worker.recording().is_some() {
            self.worker.stop_recording();
            return;
        }
        let dir = self.args.record.clone().unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
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
        let streamer =
            crate::stream::VmcStreamer::new(&self.stream_target, crate::stream::BlendNames::Vrm)
                .and_then(|s| s.with_routes(&self.settings.vmc_routes));
        match streamer {
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
    fn dropped(&mut self, path: PathBuf) {
        let is_avatar = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "glb" | "gltf" | "vrm"));
        if !is_avatar {
            self.switch_source(SourceSpec::Path(path));
            return;
        }
        let mut ids: Vec<u32> = self.confirmed().map(|p| p.id).collect();
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

    /// The window is closing: the worker finishes a take in progress when it stops (dropping
    /// the state joins it); the settings are written.
    pub fn exiting(&mut self) {
        self.worker.stop_recording();
        let ids: Vec<u32> = self.applied_names.keys().copied().collect();
        self.save_known_settings(&ids);
        self.save_settings();
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
}

/// The bundled sample video (`assets/sample/`), if it is there.
fn sample_input() -> Option<PathBuf> {
    let local = PathBuf::from(SAMPLE_INPUT);
    let path = if local.is_file() {
        local
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SAMPLE_INPUT)
    };
    path.is_file().then_some(path)
}

fn describe(spec: &SourceSpec) -> String {
    match spec {
        SourceSpec::Path(path) => path.display().to_string(),
        SourceSpec::Camera(Some(camera)) => format!("camera {camera}"),
        SourceSpec::Camera(None) => "default camera".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_display_rate_is_measured_over_the_last_60_frames_only() {
        let mut meters = Meters::default();
        let start = Instant::now();
        // an hour at 30 frames a second, then a second at 100
        for i in 0..108_000u64 {
            meters.presented(start + Duration::from_micros(i * 33_333));
        }
        let later = start + Duration::from_secs(3600);
        for i in 0..100u64 {
            meters.presented(later + Duration::from_millis(i * 10));
        }
        assert_eq!(meters.presents.len(), 60);
        assert!((meters.fps() - 100.0).abs() < 0.5, "{}", meters.fps());
    }
}
