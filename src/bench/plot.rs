//! PNG line charts drawn with plotters into an RGB buffer (text from egui's bundled font, so no
//! system fonts are needed): `polyface bench --plot FILE.png` draws latency against the number of
//! faces, one line per pipeline (median, with the p95 as a lighter line); [`line_chart`] serves
//! any other series over time (the soak run's memory and latency).

use std::sync::Once;

use anyhow::{Context, Result};
use image::RgbImage;
use plotters::prelude::*;

use super::BenchResult;

const SIZE: (u32, u32) = (900, 560);
const COLOURS: [[u8; 3]; 4] = [
    [230, 110, 60],
    [60, 140, 230],
    [90, 190, 90],
    [180, 90, 200],
];

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub colour: [u8; 3],
    /// Line width in pixels.
    pub width: u32,
    /// Marks every point with a dot.
    pub dots: bool,
    pub points: Vec<(f64, f64)>,
}

/// A line chart with axes, grid and a legend.
pub struct Chart<'a> {
    pub size: (u32, u32),
    pub caption: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// Tick marks on the x axis at exactly these values (e.g. the face counts), else automatic.
    pub x_ticks: Option<Vec<f64>>,
    pub series: Vec<Series>,
}

fn register_font() {
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        // plotters keeps the font for the process; the bundled one always parses
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

fn colour(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// Draws `chart` into an image.
pub fn line_chart(chart: &Chart) -> Result<RgbImage> {
    register_font();
    let (w, h) = chart.size;
    let mut buffer = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let points = || chart.series.iter().flat_map(|s| s.points.iter());
        let x_max = points().map(|p| p.0).fold(1e-9, f64::max);
        let x_min = points().map(|p| p.0).fold(x_max, f64::min).min(0.0);
        let y_max = points().map(|p| p.1).fold(1e-9, f64::max) * 1.1;
        let mut ctx = ChartBuilder::on(&root)
            .caption(chart.caption, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(x_min..x_max * 1.02, 0.0..y_max)?;
        let mut mesh = ctx.configure_mesh();
        mesh.x_desc(chart.x_label)
            .y_desc(chart.y_label)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .light_line_style(RGBColor(240, 240, 240));
        let ticks = chart.x_ticks.clone();
        let format_x = move |v: &f64| match &ticks {
            Some(t) if !t.iter().any(|k| (k - v).abs() < 1e-9) => String::new(),
            _ => format!("{v}"),
        };
        if chart.x_ticks.is_some() {
            mesh.x_labels(x_max.ceil() as usize + 1)
                .x_label_formatter(&format_x);
        }
        mesh.draw()?;
        for s in &chart.series {
            let style = ShapeStyle::from(colour(s.colour)).stroke_width(s.width);
            ctx.draw_series(LineSeries::new(s.points.iter().copied(), style))?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
            if s.dots {
                ctx.draw_series(
                    s.points
                        .iter()
                        .map(|&p| Circle::new(p, 4, colour(s.colour).filled())),
                )?;
            }
        }
        ctx.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 16))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .draw()?;
        root.present()?;
    }
    RgbImage::from_raw(w, h, buffer).context("chart buffer size")
}

/// Latency (ms) against faces for every pipeline in `results`, written as a PNG.
pub fn write_plot(results: &[BenchResult], device: &str, path: &std::path::Path) -> Result<()> {
    let mut pipelines: Vec<&str> = results.iter().map(|r| r.pipeline.as_str()).collect();
    pipelines.dedup();
    let mut faces: Vec<f64> = results.iter().map(|r| r.faces as f64).collect();
    faces.sort_by(f64::total_cmp);
    faces.dedup();
    let mut series = Vec::new();
    for (i, p) in pipelines.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let mut rows: Vec<&BenchResult> = results.iter().filter(|r| r.pipeline == *p).collect();
        rows.sort_by_key(|r| r.faces);
        series.push(Series {
            name: format!("{} median", p.to_uppercase()),
            colour: c,
            width: 3,
            dots: true,
            points: rows
                .iter()
                .map(|r| (r.faces as f64, r.median_ms as f64))
                .collect(),
        });
        series.push(Series {
            name: format!("{} p95", p.to_uppercase()),
            colour: c.map(|v| ((v as u16 + 2 * 255) / 3) as u8),
            width: 2,
            dots: false,
            points: rows
                .iter()
                .map(|r| (r.faces as f64, r.p95_ms as f64))
                .collect(),
        });
    }
    let image = line_chart(&Chart {
        size: SIZE,
        caption: &format!("polyface bench · {device}"),
        x_label: "faces in the frame",
        y_label: "ms per frame",
        x_ticks: Some(faces),
        series,
    })?;
    image
        .save(path)
        .with_context(|| format!("{}: cannot write the plot", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_draws_both_pipelines_in_their_colours() {
        let row = |p: &str, faces, ms| BenchResult {
            pipeline: p.into(),
            faces,
            faces_found: faces,
            median_ms: ms,
            p95_ms: ms * 1.2,
            stages: Default::default(),
        };
        let results = vec![
            row("sfn", 1, 8.0),
            row("sfn", 10, 25.0),
            row("mfn", 1, 11.0),
            row("mfn", 10, 11.5),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        write_plot(&results, "test cpu", &path).unwrap();
        let img = image::open(&path).unwrap().into_rgb8();
        assert_eq!(img.dimensions(), SIZE);
        let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
        assert!(count(COLOURS[0]) > 200 && count(COLOURS[1]) > 200);
        // axis text is drawn: dark pixels left of the plot area
        let dark = (0..60)
            .flat_map(|x| (0..SIZE.1).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&v| v < 120))
            .count();
        assert!(dark > 50, "axis labels drawn ({dark} dark pixels)");
        // the SFN line rises to the right: its colour sits higher at 10 faces than at 1 (the
        // legend's swatch, left of x = 120, is left out)
        let highest = |c: [u8; 3], x0: u32, x1: u32| {
            (x0..x1)
                .flat_map(|x| (0..SIZE.1).map(move |y| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0 == c)
                .map(|(_, y)| y)
                .min()
                .unwrap()
        };
        assert!(highest(COLOURS[0], 800, 880) < highest(COLOURS[0], 130, 200));
    }
}
