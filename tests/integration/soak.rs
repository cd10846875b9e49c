//! CI's soak run: `polyface soak` drives the real app under Xvfb for 90 s on a looping input of
//! photos of three or four people (each held a second at 30 frames a second, so people come and
//! go every second), in the default view with avatars, recording a take and streaming VMC. It
//! fails above 0.5 MB/s of memory growth after a 20 s warm-up, on a stall, a crash or an error in
//! the app's log. The CSV, plot and log stay in target/soak-ci/.

use std::path::Path;

use crate::support::{have_tool, polyface, shared_data};

/// HELEN and demo photos in which the SFN pipeline tracks three or four people (`polyface
/// track` on 30 copies of each: 3-4 confirmed in 22-30 of the 30 frames).
const CROWDED_PHOTOS: [&str; 14] = [
    "df_selfie_many_people.jpg",
    "helen_111836119_1.jpg",
    "helen_2045370744_3.jpg",
    "helen_2229778733_1.jpg",
    "helen_2988554491_1.jpg",
    "helen_3187824420_2.jpg",
    "helen_3223164362_10.jpg",
    "helen_2070105355_2.jpg",
    "helen_2076592686_1.jpg",
    "helen_2076592686_3.jpg",
    "helen_2229778733_2.jpg",
    "helen_2290385398_2.jpg",
    "helen_3213155161_2.jpg",
    "helen_3217491791_1.jpg",
];

/// A folder that shows each crowded photo for `seconds` at `fps` (links, not copies).
pub(crate) fn crowded_folder(data: &Path, dir: &Path, fps: u32, seconds: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, name) in CROWDED_PHOTOS.iter().enumerate() {
        let photo = data.join("scenes").join(name);
        for k in 0..fps * seconds {
            let link = dir.join(format!("{i:02}_{k:03}.jpg"));
            if std::fs::hard_link(&photo, &link).is_err() {
                std::fs::copy(&photo, &link).unwrap();
            }
        }
    }
}

#[test]
fn the_app_runs_90_seconds_with_people_coming_and_going_and_memory_stays_flat() {
    if !have_tool("Xvfb") {
        return;
    }
    let Some(data) = shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("crowds");
    crowded_folder(&data, &input, 30, 1);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak-ci");
    let _ = std::fs::remove_dir_all(&out);
    let output = polyface()
        .args(["soak", "--input"])
        .arg(&input)
        .args([
            "--fps",
            "30",
            "--duration",
            "90",
            "--warmup",
            "20",
            "--sample",
            "5",
        ])
        .args(["--max-growth-mb-s", "0.5", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("PASS"), "{text}");
    let csv = std::fs::read_to_string(out.join("soak.csv")).unwrap();
    let rows = csv.lines().count() - 1;
    assert!(rows >= 15, "{rows} samples in 90 s: {csv}");
    let plot = image::open(out.join("soak.png")).unwrap();
    assert_eq!(plot.width(), 900);
    // people were tracked, recorded and streamed (the soak fails otherwise); at least three at once
    let column = csv
        .lines()
        .next()
        .unwrap()
        .split(',')
        .position(|c| c == "people")
        .unwrap();
    let most_people = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(column)?.parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    assert!(
        most_people >= 3,
        "at most {most_people} people at once: {csv}"
    );
}
