//! The real app in a real window under Xvfb (software Vulkan), checked through screenshots.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{colour_distance, frame_folder, have_tool, polyface};

/// An Xvfb server on a free display number, stopped on drop.
pub(crate) struct Xvfb {
    child: Child,
    pub(crate) display: String,
}

impl Xvfb {
    pub(crate) fn start() -> Xvfb {
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1280x800x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting Xvfb");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let display = format!(":{}", line.trim());
        assert!(
            line.trim().parse::<u32>().is_ok(),
            "Xvfb gave no display number: {line:?}"
        );
        Xvfb { child, display }
    }

    pub(crate) fn screenshot(&self, out: &Path) -> image::RgbImage {
        let status = Command::new("import")
            .args(["-display", &self.display, "-window", "root"])
            .arg(out)
            .status()
            .expect("running ImageMagick's import");
        assert!(status.success());
        image::open(out).unwrap().into_rgb8()
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count_near(image: &image::RgbImage, region: (u32, u32, u32, u32), colour: [u8; 3]) -> usize {
    let (x0, y0, x1, y1) = region;
    (y0..y1.min(image.height()))
        .flat_map(|y| (x0..x1.min(image.width())).map(move |x| (x, y)))
        .filter(|&(x, y)| colour_distance(image.get_pixel(x, y).0, colour) < 10.0)
        .count()
}

pub(crate) fn distinct_colours(image: &image::RgbImage, region: (u32, u32, u32, u32)) -> usize {
    let (x0, y0, x1, y1) = region;
    let mut seen = std::collections::HashSet::new();
    for y in y0..y1.min(image.height()) {
        for x in x0..x1.min(image.width()) {
            seen.insert(image.get_pixel(x, y).0);
        }
    }
    seen.len()
}

pub(crate) fn screenshots_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn app_shows_frames_and_the_timing_overlay_in_a_window() {
    if !have_tool("Xvfb") || !have_tool("import") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let frames = frame_folder(&dir.path().join("frames"), 6, 640, 480);
    let xvfb = Xvfb::start();
    let mut app = polyface()
        .args(["run", "--fps", "10", "--exit-after", "40", "--input"])
        .arg(&frames)
        .env("DISPLAY", &xvfb.display)
        .env_remove("WAYLAND_DISPLAY")
        .env("POLYFACE_CONFIG", dir.path().join("settings.json"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let shot = screenshots_dir().join("window_smoke.png");
    let deadline = Instant::now() + Duration::from_secs(30);
    let image = loop {
        std::thread::sleep(Duration::from_millis(1000));
        if let Some(status) = app.try_wait().unwrap() {
            panic!("the app exited early with {status}");
        }
        let image = xvfb.screenshot(&shot);
        // Frame shown (its red and white quadrants) and the overlay drawn with its timing rows.
        let frame_region = (0, 0, 940, 720);
        let red = count_near(&image, frame_region, [220, 30, 30]);
        let white = count_near(&image, frame_region, [240, 240, 240]);
        let overlay = distinct_colours(&image, (960, 0, 1280, 400));
        if red > 20_000 && white > 20_000 && overlay > 30 {
            break image;
        }
        assert!(
            Instant::now() < deadline,
            "window never showed frame + overlay (red {red}, white {white}, overlay colours {overlay}); see {}",
            shot.display()
        );
    };
    assert_eq!(image.dimensions(), (1280, 800));
    let _ = app.kill();
    let _ = app.wait();
}

/// Colours of the first person IDs' boxes (the app's palette).
const PERSON_COLOURS: [[u8; 3]; 3] = [[77, 217, 115], [89, 166, 255], [255, 153, 64]];

#[test]
fn app_puppets_every_person_in_a_multi_face_folder() {
    if !have_tool("Xvfb") || !have_tool("import") {
        return;
    }
    let Some(data) = crate::support::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    // two photos of several people each: the puppets change between them
    for (i, name) in ["helen_3187824420_2.jpg", "helen_2988554491_1.jpg"]
        .iter()
        .enumerate()
    {
        std::fs::copy(
            data.join("scenes").join(name),
            frames.join(format!("{i}.jpg")),
        )
        .unwrap();
    }
    let xvfb = Xvfb::start();
    let mut app = polyface()
        .args(["run", "--fps", "1", "--exit-after", "60", "--input"])
        .arg(&frames)
        .env("DISPLAY", &xvfb.display)
        .env_remove("WAYLAND_DISPLAY")
        .env("POLYFACE_CONFIG", dir.path().join("settings.json"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // the central area: camera view on the left half, avatars on the right half
    let (camera, avatars, overlay) = ((0, 0, 460, 720), (475, 0, 925, 720), (940, 0, 1280, 560));
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut shots: Vec<image::RgbImage> = Vec::new();
    let shot = screenshots_dir().join("app_multi_face.png");
    loop {
        std::thread::sleep(Duration::from_millis(700));
        if let Some(status) = app.try_wait().unwrap() {
            panic!("the app exited early with {status}");
        }
        let image = xvfb.screenshot(&shot);
        let boxes: usize = PERSON_COLOURS
            .iter()
            .map(|c| count_near(&image, camera, *c))
            .sum();
        let puppets = distinct_colours(&image, avatars);
        let panel = distinct_colours(&image, overlay);
        if boxes > 100 && puppets > 300 && panel > 30 {
            shots.push(image);
        }
        // two good screenshots whose avatars differ: the puppets move with the people
        if shots.len() >= 2 {
            let (a, b) = (&shots[0], shots.last().unwrap());
            let (x0, y0, x1, y1) = avatars;
            let changed = (y0..y1)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| colour_distance(a.get_pixel(x, y).0, b.get_pixel(x, y).0) > 30.0)
                .count();
            if changed > 500 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "never saw boxes, avatars and the overlay change together ({} good screenshots); see {}",
            shots.len(),
            shot.display()
        );
    }
    let _ = app.kill();
    let _ = app.wait();
}

#[test]
fn app_without_a_camera_plays_the_bundled_sample_and_tracks_it() {
    if !have_tool("Xvfb") || !have_tool("import") || !have_tool("ffmpeg") {
        return;
    }
    if !polyface::capture::list_cameras()
        .unwrap_or_default()
        .is_empty()
    {
        eprintln!("skipped: this machine has cameras");
        return;
    }
    let xvfb = Xvfb::start();
    let dir = tempfile::tempdir().unwrap();
    let mut app = polyface()
        .args(["run", "--exit-after", "60"])
        .env("DISPLAY", &xvfb.display)
        .env_remove("WAYLAND_DISPLAY")
        .env("POLYFACE_CONFIG", dir.path().join("settings.json"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The astronaut's orange suit in the camera view, and a person's box on it (IDs, and so box
    // colours, depend on what was seen first).
    let shot = screenshots_dir().join("window_sample.png");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        std::thread::sleep(Duration::from_millis(1000));
        if let Some(status) = app.try_wait().unwrap() {
            panic!("the app exited early with {status}");
        }
        let image = xvfb.screenshot(&shot);
        let view = (0, 0, 470, 720);
        let suit = count_near(&image, view, [225, 95, 45]);
        let boxes: usize = PERSON_COLOURS
            .iter()
            .map(|c| count_near(&image, view, *c))
            .sum();
        if suit > 3_000 && boxes > 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sample was not shown tracked (suit {suit}, box {boxes} pixels); see {}",
            shot.display()
        );
    }
    let _ = app.kill();
    let output = app.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no camera found") && stderr.contains("astronaut.mp4"),
        "the missing camera and the sample are reported: {stderr}"
    );
}
