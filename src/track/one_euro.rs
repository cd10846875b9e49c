//! The One-Euro filter (Casiez, Roussel, Vogel, CHI 2012): a low-pass filter whose cutoff rises
//! with speed, so still input is smoothed hard (no jitter) and fast motion passes with little lag.

/// Filter settings. `min_cutoff` (Hz) sets smoothing at rest: lower = less jitter, more lag.
/// `beta` sets how fast the cutoff rises with speed (per unit of the signal per second): higher
/// = less lag in fast motion. `derivative_cutoff` (Hz) smooths the speed estimate.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OneEuroParams {
    pub min_cutoff: f32,
    pub beta: f32,
    pub derivative_cutoff: f32,
}

impl OneEuroParams {
    pub const fn new(min_cutoff: f32, beta: f32) -> Self {
        OneEuroParams {
            min_cutoff,
            beta,
            derivative_cutoff: 1.0,
        }
    }
}

fn alpha(cutoff: f32, dt: f32) -> f32 {
    let tau = 1.0 / (2.0 * std::f32::consts::PI * cutoff.max(1e-3));
    1.0 / (1.0 + tau / dt)
}

/// One filtered scalar channel.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OneEuro {
    value: Option<f32>,
    derivative: f32,
}

impl OneEuro {
    /// Filters `x` sampled `dt` seconds after the previous sample.
    pub fn filter(&mut self, x: f32, dt: f32, params: &OneEuroParams) -> f32 {
        if !x.is_finite() {
            return self.value.unwrap_or(x);
        }
        let Some(previous) = self.value else {
            self.value = Some(x);
            self.derivative = 0.0;
            return x;
        };
        if dt <= 0.0 {
            return previous;
        }
        let raw_derivative = (x - previous) / dt;
        self.derivative += alpha(params.derivative_cutoff, dt) * (raw_derivative - self.derivative);
        let cutoff = params.min_cutoff + params.beta * self.derivative.abs();
        let filtered = previous + alpha(cutoff, dt) * (x - previous);
        self.value = Some(filtered);
        filtered
    }

    pub fn reset(&mut self) {
        *self = OneEuro::default();
    }
}

/// A bank of channels filtered with the same settings.
#[derive(Clone, Debug, Default)]
pub struct OneEuroBank {
    channels: Vec<OneEuro>,
}

impl OneEuroBank {
    pub fn filter(&mut self, values: &mut [f32], dt: f32, params: &OneEuroParams) {
        if self.channels.len() != values.len() {
            self.channels = vec![OneEuro::default(); values.len()];
        }
        for (value, channel) in values.iter_mut().zip(&mut self.channels) {
            *value = channel.filter(*value, dt, params);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(i: usize) -> f32 {
        let mut x = (i as u32).wrapping_mul(2654435761) ^ 0x5bd1e995;
        x ^= x >> 15;
        x = x.wrapping_mul(2246822519);
        (x >> 8) as f32 / (1 << 24) as f32 - 0.5
    }

    #[test]
    fn still_noisy_input_is_smoothed_hard() {
        let params = OneEuroParams::new(1.0, 0.01);
        let mut filter = OneEuro::default();
        let out: Vec<f32> = (0..600)
            .map(|i| filter.filter(100.0 + 2.0 * noise(i), 1.0 / 30.0, &params))
            .collect();
        let tail = &out[300..];
        let mean = tail.iter().sum::<f32>() / tail.len() as f32;
        let std = (tail.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / tail.len() as f32).sqrt();
        // Raw noise std is 2/sqrt(12) ≈ 0.58; a first-order low-pass at 1 Hz sampled at 30 Hz
        // keeps sqrt(α/(2−α)) ≈ 0.31 of white noise.
        assert!(std < 0.35 * 0.58, "std {std}");
        assert!((mean - 100.0).abs() < 0.2);
    }

    #[test]
    fn fast_motion_follows_with_little_lag() {
        let params = OneEuroParams::new(1.0, 0.05);
        let mut filter = OneEuro::default();
        let dt = 1.0 / 30.0;
        let mut last = 0.0;
        for i in 0..60 {
            // 300 units per second ramp.
            last = filter.filter(10.0 * i as f32, dt, &params);
        }
        let lag_units = 590.0 - last;
        let lag_seconds = lag_units / 300.0;
        assert!(lag_seconds < 0.05, "lag {lag_seconds} s");
        let mut slow = OneEuro::default();
        let mut slow_last = 0.0;
        for i in 0..60 {
            slow_last = slow.filter(10.0 * i as f32, dt, &OneEuroParams::new(1.0, 0.0));
        }
        assert!(590.0 - slow_last > 3.0 * lag_units, "beta reduces lag");
    }

    #[test]
    fn first_sample_and_bad_samples_pass_through_safely() {
        let params = OneEuroParams::new(1.0, 0.1);
        let mut filter = OneEuro::default();
        assert_eq!(filter.filter(5.0, 0.0, &params), 5.0);
        assert_eq!(filter.filter(f32::NAN, 0.03, &params), 5.0);
        assert!(filter.filter(6.0, 0.03, &params).is_finite());
    }
}
