//! The headless GPU rig: draw offscreen on whatever adapter wgpu finds (Mesa's lavapipe in CI)
//! and assert on the pixels read back.

use polyface::render::{FrameView, Gpu, OffscreenTarget, PixelRect};

use crate::support::{colour_distance, draw_offscreen, in_ci, quadrants};

pub fn gpu_or_skip() -> Option<Gpu> {
    match Gpu::headless() {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            assert!(!in_ci(), "CI=true but no GPU adapter: {e:#}");
            eprintln!("skipped: {e:#}");
            None
        }
    }
}

#[test]
fn camera_view_is_drawn_aspect_preserved_with_exact_colours() {
    let Some(gpu) = gpu_or_skip() else { return };
    let target = OffscreenTarget::new(&gpu.device, 200, 100);
    let mut view = FrameView::new(&gpu.device, OffscreenTarget::FORMAT);
    let frame = polyface::render::rgb_to_rgba_image(&quadrants(64, 64, 0));
    view.upload(&gpu.device, &gpu.queue, &frame);

    let area = PixelRect {
        x: 0.0,
        y: 0.0,
        width: 200.0,
        height: 100.0,
    };
    let drawn = draw_offscreen(&gpu, &target, |pass| view.draw(pass, area, (200, 100)));
    let pixels = target.read_pixels(&gpu.device, &gpu.queue).unwrap();

    // A square frame in a 2:1 target: pillarboxed to the middle 100×100.
    assert_eq!(
        drawn,
        Some(PixelRect {
            x: 50.0,
            y: 0.0,
            width: 100.0,
            height: 100.0
        })
    );
    let at = |x, y| {
        let p = pixels.get_pixel(x, y).0;
        [p[0], p[1], p[2]]
    };
    for (x, y) in [(10, 50), (190, 50), (49, 10)] {
        assert_eq!(at(x, y), [0, 0, 0], "pillarbox bar at ({x},{y})");
    }
    for ((x, y), want) in [
        ((70, 20), [220, 30, 30]),
        ((130, 20), [30, 200, 40]),
        ((70, 80), [30, 40, 220]),
        ((130, 80), [240, 240, 240]),
    ] {
        let got = at(x, y);
        assert!(
            colour_distance(got, want) <= 1.0,
            "({x},{y}): {got:?} vs {want:?}"
        );
    }
}

#[test]
fn overlay_draws_boxes_and_points_in_frame_coordinates() {
    use glam::Vec2;
    use polyface::render::Overlay;
    let Some(gpu) = gpu_or_skip() else { return };
    let target = OffscreenTarget::new(&gpu.device, 200, 100);
    let mut overlay = Overlay::new(&gpu.device, OffscreenTarget::FORMAT);
    // A 400×400 frame shown pillarboxed in the middle 100×100 of the target: scale 1/4.
    overlay.rect(
        Vec2::new(40.0, 40.0),
        Vec2::new(360.0, 360.0),
        8.0,
        [0.0, 1.0, 0.0, 1.0],
    );
    overlay.point(Vec2::new(200.0, 200.0), 20.0, [1.0, 0.0, 0.0, 1.0]);
    overlay.upload(&gpu.device, &gpu.queue, (400, 400));
    let rect = PixelRect {
        x: 50.0,
        y: 0.0,
        width: 100.0,
        height: 100.0,
    };
    draw_offscreen(&gpu, &target, |pass| overlay.draw(pass, rect));
    let pixels = target.read_pixels(&gpu.device, &gpu.queue).unwrap();
    let at = |x: u32, y: u32| {
        let p = pixels.get_pixel(x, y).0;
        [p[0], p[1], p[2]]
    };
    // Box edge at frame x = 40 → target x = 50 + 10; centre dot at target (100, 50).
    assert_eq!(at(60, 50), [0, 255, 0]);
    assert_eq!(at(140, 50), [0, 255, 0]);
    assert_eq!(at(100, 10), [0, 255, 0]);
    assert_eq!(at(100, 50), [255, 0, 0]);
    assert_eq!(at(80, 50), [0, 0, 0], "inside the box, away from the dot");
    assert_eq!(at(20, 50), [0, 0, 0], "outside the frame's rectangle");
}
