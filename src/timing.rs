//! Per-stage timings: every pipeline stage records how long it took for each frame.
//!
//! Recording is allocation-free (a fixed array per frame, a preallocated ring of recent
//! frames); statistics (median, p95) are computed on demand by the UI, `track` and `bench`.

use std::time::{Duration, Instant};

/// The stages of the pipeline, in the order a frame passes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Waiting for / reading a frame from the source (camera, decoder, disk).
    Capture,
    /// Pixel format conversion (camera YUYV/MJPEG → RGB, RGB → RGBA for upload).
    Convert,
    /// Network input preparation (resize, crop, normalise).
    Preprocess,
    /// Neural network forward passes (detector, SFN or MFN).
    Network,
    /// Decoding network outputs (anchors, NMS, landmarks back to frame coordinates).
    Postprocess,
    /// Head pose and expression fitting.
    Fit,
    /// Frame-to-frame association of faces into people.
    Track,
    /// Face embeddings that give a returning person their old ID (once per new track).
    ReId,
    /// Each person's expression as the 52 ARKit weights their avatar gets (neutral calibration
    /// applied).
    Retarget,
    /// Mapping those onto each avatar's morph targets and drawing the avatars (GPU).
    Avatars,
    /// Recording GPU commands for the frame.
    Render,
    /// Handing the finished image to the display.
    Present,
}

impl Stage {
    pub const COUNT: usize = 12;
    pub const ALL: [Stage; Stage::COUNT] = [
        Stage::Capture,
        Stage::Convert,
        Stage::Preprocess,
        Stage::Network,
        Stage::Postprocess,
        Stage::Fit,
        Stage::Track,
        Stage::ReId,
        Stage::Retarget,
        Stage::Avatars,
        Stage::Render,
        Stage::Present,
    ];

    /// Short lower-case name, used as CSV column header and in the UI.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Capture => "capture",
            Stage::Convert => "convert",
            Stage::Preprocess => "preprocess",
            Stage::Network => "network",
            Stage::Postprocess => "postprocess",
            Stage::Fit => "fit",
            Stage::Track => "track",
            Stage::ReId => "reid",
            Stage::Retarget => "retarget",
            Stage::Avatars => "avatars",
            Stage::Render => "render",
            Stage::Present => "present",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Durations of every stage for one frame, in milliseconds. Stages that did not run are `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FrameTimings {
    pub seq: u64,
    ms: [Option<f32>; Stage::COUNT],
}

impl FrameTimings {
    pub fn new(seq: u64) -> Self {
        FrameTimings {
            seq,
            ms: [None; Stage::COUNT],
        }
    }

    /// Records (or adds to, when a stage runs several times per frame) a stage's duration.
    pub fn add(&mut self, stage: Stage, duration: Duration) {
        let ms = duration.as_secs_f32() * 1000.0;
        let slot = &mut self.ms[stage.index()];
        *slot = Some(slot.unwrap_or(0.0) + ms);
    }

    /// Times `f` as `stage` and returns its result.
    pub fn time<T>(&mut self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.add(stage, start.elapsed());
        out
    }

    pub fn get(&self, stage: Stage) -> Option<f32> {
        self.ms[stage.index()]
    }

    /// Sum of all recorded stages.
    pub fn total(&self) -> f32 {
        self.ms.iter().flatten().sum()
    }

    /// The CSV header matching [`FrameTimings::csv_row`].
    pub fn csv_header() -> String {
        let mut header = String::from("frame");
        for stage in Stage::ALL {
            header.push(',');
            header.push_str(stage.name());
            header.push_str("_ms");
        }
        header.push_str(",total_ms");
        header
    }

    /// One CSV row: the frame number then one column per stage (empty where the stage did not run).
    pub fn csv_row(&self) -> String {
        use std::fmt::Write;
        let mut row = self.seq.to_string();
        for value in self.ms {
            row.push(',');
            if let Some(ms) = value {
                let _ = write!(row, "{ms:.3}");
            }
        }
        let _ = write!(row, ",{:.3}", self.total());
        row
    }
}

/// Summary statistics of one stage over the recent frames, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageStats {
    pub last: f32,
    pub median: f32,
    pub p95: f32,
    pub samples: usize,
}

/// A ring buffer of the most recent frames' timings. Pushing never allocates.
#[derive(Clone, Debug)]
pub struct TimingRing {
    frames: Vec<FrameTimings>,
    next: usize,
    len: usize,
}

impl TimingRing {
    pub fn with_capacity(capacity: usize) -> Self {
        assert!(
            capacity > 0,
            "a timing ring needs room for at least one frame"
        );
        TimingRing {
            frames: vec![FrameTimings::default(); capacity],
            next: 0,
            len: 0,
        }
    }

    pub fn push(&mut self, timings: FrameTimings) {
        self.frames[self.next] = timings;
        self.next = (self.next + 1) % self.frames.len();
        self.len = (self.len + 1).min(self.frames.len());
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Frames from oldest to newest.
    pub fn iter(&self) -> impl Iterator<Item = &FrameTimings> {
        let cap = self.frames.len();
        let start = (self.next + cap - self.len) % cap;
        (0..self.len).map(move |i| &self.frames[(start + i) % cap])
    }

    pub fn latest(&self) -> Option<&FrameTimings> {
        self.iter().last()
    }

    /// Last / median / p95 of one stage over the frames where it ran; `None` if it never ran.
    pub fn stats(&self, stage: Stage) -> Option<StageStats> {
        let values: Vec<f32> = self.iter().filter_map(|f| f.get(stage)).collect();
        let last = self.iter().filter_map(|f| f.get(stage)).last()?;
        Some(summarize(values, last))
    }

    /// Statistics of the per-frame total over all stages.
    pub fn total_stats(&self) -> Option<StageStats> {
        let values: Vec<f32> = self.iter().map(|f| f.total()).collect();
        let last = *values.last()?;
        Some(summarize(values, last))
    }
}

fn summarize(mut values: Vec<f32>, last: f32) -> StageStats {
    values.sort_by(|a, b| a.total_cmp(b));
    StageStats {
        last,
        median: percentile(&values, 0.5),
        p95: percentile(&values, 0.95),
        samples: values.len(),
    }
}

/// Nearest-rank percentile of sorted values (`q` in [0, 1]).
pub fn percentile(sorted: &[f32], q: f32) -> f32 {
    if sorted.is_empty() {
        return f32::NAN;
    }
    let rank = (q * sorted.len() as f32).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_only_the_newest_frames() {
        let mut ring = TimingRing::with_capacity(3);
        for seq in 0..5 {
            let mut t = FrameTimings::new(seq);
            t.add(Stage::Capture, Duration::from_millis(seq + 1));
            ring.push(t);
        }
        let seqs: Vec<u64> = ring.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert_eq!(ring.latest().unwrap().seq, 4);
    }

    #[test]
    fn stats_give_median_and_p95() {
        let mut ring = TimingRing::with_capacity(100);
        for i in 1..=100u64 {
            let mut t = FrameTimings::new(i);
            t.add(Stage::Network, Duration::from_micros(i * 1000));
            ring.push(t);
        }
        let s = ring.stats(Stage::Network).unwrap();
        assert!((s.median - 50.0).abs() < 1e-3, "median {}", s.median);
        assert!((s.p95 - 95.0).abs() < 1e-3, "p95 {}", s.p95);
        assert!((s.last - 100.0).abs() < 1e-3);
        assert_eq!(s.samples, 100);
        assert!(ring.stats(Stage::Fit).is_none());
    }

    #[test]
    fn repeated_stage_accumulates_and_csv_leaves_missing_stages_empty() {
        let mut t = FrameTimings::new(7);
        t.add(Stage::Network, Duration::from_micros(1500));
        t.add(Stage::Network, Duration::from_micros(500));
        t.add(Stage::Capture, Duration::from_micros(250));
        assert_eq!(t.get(Stage::Network), Some(2.0));
        let header = FrameTimings::csv_header();
        let row = t.csv_row();
        assert_eq!(header.split(',').count(), row.split(',').count());
        assert!(header.starts_with("frame,capture_ms,convert_ms"));
        assert_eq!(row, "7,0.250,,,2.000,,,,,,,,,2.250");
    }
}
