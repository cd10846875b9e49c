//! `polyface soak`: the real app for a given time, watched from outside. It starts Xvfb (the app
//! draws with whatever Vulkan driver there is, Mesa's lavapipe on a machine without a GPU), runs
//! `polyface run` on a looping input with avatars in the default view, recording a take and
//! streaming VMC to a local receiver. The app reports every few seconds (`--metrics`: GPU
//! allocator figures, frames captured / dropped / processed / shown, latency and stage p95 since
//! its last report); each report becomes a sample, with the app's resident memory read from
//! /proc as it arrives. It writes `soak.csv` and `soak.png` and fails when memory grows after
//! warm-up, or the app stalls, stops streaming, records nothing, crashes or logs errors.

pub mod analysis;
pub mod metrics;
mod scene;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cli::SoakArgs;
use analysis::{Limits, Sample};
use metrics::MetricsLine;

/// Frames in a composed `--faces` scene (one loop).
const SCENE_FRAMES: usize = 60;
/// How long the app may take past `--duration` to finish its take and close.
const CLOSING_GRACE: Duration = Duration::from_secs(120);

/// Runs the soak; `Ok(false)` when it ran and failed (the report says why).
pub fn run(args: &SoakArgs) -> Result<bool> {
    anyhow::ensure!(
        args.duration > args.warmup,
        "--duration ({} s) must be longer than --warmup ({} s)",
        args.duration,
        args.warmup
    );
    anyhow::ensure!(args.sample > 0.0, "--sample must be positive");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create the output folder", args.out.display()))?;
    let input = match (&args.input, args.faces) {
        (Some(path), _) => path.clone(),
        (None, Some(faces)) => {
            scene::write_moving_faces(&args.data, faces, SCENE_FRAMES, &args.out.join("scene"))?
        }
        (None, None) => {
            anyhow::bail!("give --input PATH (a looping multi-person input) or --faces N")
        }
    };
    let xvfb = Xvfb::start()?;
    let receiver = VmcReceiver::start()?;
    let paths = RunPaths::in_folder(&args.out);
    let mut command = app_command(args, &input, &xvfb, &receiver, &paths)?;
    eprintln!(
        "soak: {} for {:.0} s (warm-up {:.0} s), sampling every {:.0} s; out: {}",
        input.display(),
        args.duration,
        args.warmup,
        args.sample,
        args.out.display()
    );
    let started = Instant::now();
    let mut app = command.spawn().context("starting polyface run")?;
    let (samples, status) = watch(&mut app, started, args, &paths.metrics, &receiver);
    drop(receiver);
    drop(xvfb);

    let mut problems = exit_problems(status, started.elapsed(), &samples, args);
    problems.extend(log_problems(&paths.log));
    problems.extend(take_problems(&paths.take, &samples));
    let limits = Limits {
        report_every_s: args.sample,
        warmup_s: args.warmup,
        max_growth_mb_s: args.max_growth_mb_s,
        max_growth_percent: args.max_growth_percent,
    };
    let summary = analysis::summarize(&samples, limits, problems);
    analysis::write_csv(&args.out.join("soak.csv"), &samples)?;
    let title = format!(
        "polyface soak: {} · up to {} people · {:.0} min",
        input
            .file_name()
            .map_or(input.display().to_string(), |n| n.to_string_lossy().into()),
        summary.people_max,
        summary.duration_s / 60.0
    );
    analysis::write_plot(&args.out.join("soak.png"), &samples, &limits, &title)?;
    let report = summary.report(&limits);
    std::fs::write(args.out.join("summary.txt"), &report)?;
    print!("{report}");
    if !args.keep_take {
        let _ = std::fs::remove_dir_all(&paths.take);
    }
    Ok(summary.passed())
}

/// What the app's exit says: a failure status, a kill, leaving early, reports ending early.
fn exit_problems(
    status: Option<std::process::ExitStatus>,
    ran: Duration,
    samples: &[Sample],
    args: &SoakArgs,
) -> Vec<String> {
    let mut problems = Vec::new();
    match status {
        Some(status) if status.success() => {}
        Some(status) => problems.push(format!("the app exited with {status}")),
        None => problems.push(format!(
            "the app did not close within {} s of --exit-after (killed)",
            CLOSING_GRACE.as_secs()
        )),
    }
    if ran.as_secs_f64() < args.duration {
        problems.push(format!(
            "the app left after {:.0} s of {:.0}",
            ran.as_secs_f64(),
            args.duration
        ));
    }
    let last_report = samples.last().map_or(0.0, |s| s.t_s);
    if last_report < args.duration - 3.0 * args.sample {
        problems.push(format!(
            "the app's last report was at {last_report:.0} s of {:.0}",
            args.duration
        ));
    }
    problems
}

/// Where a run's files go.
struct RunPaths {
    settings: PathBuf,
    metrics: PathBuf,
    take: PathBuf,
    log: PathBuf,
    runtime: PathBuf,
}

impl RunPaths {
    fn in_folder(out: &Path) -> RunPaths {
        RunPaths {
            settings: out.join("settings.json"),
            metrics: out.join("metrics.jsonl"),
            take: out.join("take"),
            log: out.join("app.log"),
            runtime: out.join("runtime"),
        }
    }
}

/// `polyface run` on `input` in the Xvfb display, with its own settings, recording into the
/// run's folder, streaming to `receiver` and reporting every `--sample` seconds.
fn app_command(
    args: &SoakArgs,
    input: &Path,
    xvfb: &Xvfb,
    receiver: &VmcReceiver,
    paths: &RunPaths,
) -> Result<Command> {
    let settings = crate::settings::Settings {
        pipeline: args.pipeline,
        ..Default::default()
    };
    settings.save(&paths.settings)?;
    let log = File::create(&paths.log)
        .with_context(|| format!("{}: cannot create", paths.log.display()))?;
    let mut command = Command::new(std::env::current_exe().context("finding polyface itself")?);
    command
        .arg("run")
        .arg("--input")
        .arg(input)
        .args(["--exit-after", &args.duration.to_string()])
        .arg("--record")
        .arg(&paths.take)
        .args(["--stream", &format!("127.0.0.1:{}", receiver.port)])
        .arg("--metrics")
        .arg(&paths.metrics)
        .args(["--metrics-interval", &args.sample.to_string()])
        .args([
            "--window-size",
            &format!("{}x{}", args.window_size.0, args.window_size.1),
        ]);
    if let Some(fps) = args.fps {
        command.args(["--fps", &fps.to_string()]);
    }
    command
        .env("DISPLAY", &xvfb.display)
        .env_remove("WAYLAND_DISPLAY")
        .env("POLYFACE_CONFIG", &paths.settings)
        .stdout(Stdio::null())
        .stderr(log);
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // without one, the Vulkan driver's window system code prints an error on every start
        std::fs::create_dir_all(&paths.runtime)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let private = std::fs::Permissions::from_mode(0o700);
            std::fs::set_permissions(&paths.runtime, private)?;
        }
        command.env("XDG_RUNTIME_DIR", &paths.runtime);
    }
    Ok(command)
}

/// Turns each report the app writes into a sample, with the app's resident memory read from
/// /proc as the report arrives, until the app exits (or is killed `CLOSING_GRACE` after its
/// end); the exit status (`None`: killed).
fn watch(
    app: &mut Child,
    started: Instant,
    args: &SoakArgs,
    metrics_path: &Path,
    receiver: &VmcReceiver,
) -> (Vec<Sample>, Option<std::process::ExitStatus>) {
    let deadline = started + Duration::from_secs_f64(args.duration) + CLOSING_GRACE;
    let mut reports = ReportReader::new(metrics_path);
    let mut samples = Vec::new();
    let mut packets_before = 0;
    loop {
        if let Ok(Some(status)) = app.try_wait() {
            return (samples, Some(status));
        }
        if Instant::now() > deadline {
            let _ = app.kill();
            let _ = app.wait();
            return (samples, None);
        }
        std::thread::sleep(Duration::from_millis(200));
        let rss_mb = metrics::resident_mb_of(Some(app.id())).unwrap_or(f64::NAN);
        for line in reports.new_lines() {
            let packets = receiver.packets.load(Ordering::Relaxed);
            let sample = Sample {
                t_s: line.t_s,
                rss_mb,
                app: Some(line),
                vmc_packets: packets - packets_before,
            };
            packets_before = packets;
            progress(&sample);
            samples.push(sample);
        }
    }
}

fn progress(sample: &Sample) {
    let app = sample.app.as_ref();
    let ms = |v: Option<f32>| v.map_or("-".into(), |v| format!("{v:.1}"));
    eprintln!(
        "  {:6.0} s  rss {:7.1} MB  gpu {:>6} MB  shown {:>7}  dropped {:>6}  latency p95 {:>6} ms  people {:>2}  vmc {:>5}",
        sample.t_s,
        sample.rss_mb,
        app.and_then(|a| a.gpu_allocated_mb)
            .map_or("-".into(), |v| format!("{v:.1}")),
        app.map_or(0, |a| a.shown),
        app.map_or(0, |a| a.capture_dropped),
        ms(app.and_then(|a| a.latency_p95_ms)),
        app.map_or(0, |a| a.people),
        sample.vmc_packets
    );
}

/// Reads the app's report lines as they are appended.
struct ReportReader {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    partial: String,
}

impl ReportReader {
    fn new(path: &Path) -> ReportReader {
        ReportReader {
            path: path.to_path_buf(),
            reader: None,
            partial: String::new(),
        }
    }

    /// The complete lines written since the last call.
    fn new_lines(&mut self) -> Vec<MetricsLine> {
        let mut lines = Vec::new();
        if self.reader.is_none() {
            self.reader = File::open(&self.path).ok().map(BufReader::new);
        }
        let Some(reader) = self.reader.as_mut() else {
            return lines;
        };
        loop {
            match reader.read_line(&mut self.partial) {
                Ok(0) | Err(_) => return lines,
                Ok(_) if self.partial.ends_with('\n') => {
                    if let Ok(line) = serde_json::from_str(self.partial.trim()) {
                        lines.push(line);
                    }
                    self.partial.clear();
                }
                // a line still being written: the rest comes with the next read
                Ok(_) => return lines,
            }
        }
    }
}

/// Errors the app logged: `[ERROR ...]` lines, panics, a fatal `error:` line.
fn log_problems(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("[ERROR") || l.starts_with("error") || l.contains("panicked"))
        .take(10)
        .map(|l| format!("the app logged: {l}"))
        .collect()
}

/// A take must have been recorded: its session file holds frames and, the take being finished
/// at exit, everyone seen has an animation file.
fn take_problems(take: &Path, samples: &[Sample]) -> Vec<String> {
    let people_seen = samples
        .iter()
        .any(|s| s.app.as_ref().is_some_and(|a| a.people > 0));
    if !people_seen {
        return vec!["nobody was tracked: the input needs people in it".into()];
    }
    let session = std::fs::metadata(take.join("session.jsonl")).map_or(0, |m| m.len());
    let glbs = std::fs::read_dir(take)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "glb"))
                .count()
        })
        .unwrap_or(0);
    let mut problems = Vec::new();
    if session == 0 {
        problems.push(format!("{}: no session.jsonl recorded", take.display()));
    }
    if glbs == 0 {
        problems.push(format!(
            "{}: no animation file written at exit",
            take.display()
        ));
    }
    problems
}

/// An Xvfb server on a free display, stopped on drop.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Result<Xvfb> {
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1600x900x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting Xvfb (Debian/Ubuntu: apt install xvfb)")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let number: u32 = line.trim().parse().map_err(|_| {
            let _ = child.kill();
            anyhow::anyhow!("Xvfb gave no display number ({line:?})")
        })?;
        Ok(Xvfb {
            child,
            display: format!(":{number}"),
        })
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts the VMC packets the app sends to a base port and the seven after it.
struct VmcReceiver {
    port: u16,
    packets: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl VmcReceiver {
    fn start() -> Result<VmcReceiver> {
        let base = UdpSocket::bind("127.0.0.1:0").context("opening a UDP port for VMC")?;
        let port = base.local_addr()?.port();
        let mut sockets = vec![base];
        // the next ports (a person each), where free
        sockets.extend(
            (1..8).filter_map(|k| UdpSocket::bind(("127.0.0.1", port.checked_add(k)?)).ok()),
        );
        let packets = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for socket in sockets {
            socket.set_read_timeout(Some(Duration::from_millis(200)))?;
            let (packets, stop) = (Arc::clone(&packets), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let mut buffer = [0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if socket.recv_from(&mut buffer).is_ok() {
                        packets.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Ok(VmcReceiver {
            port,
            packets,
            stop,
            threads,
        })
    }
}

impl Drop for VmcReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
