//! Turning measured latencies into a control rate the machine sustains.

/// The control rates offered, from the `[control] rate_hz` values robots commonly run at.
const RATES_HZ: [f64; 14] = [
    200.0, 100.0, 50.0, 30.0, 25.0, 20.0, 15.0, 10.0, 5.0, 4.0, 2.0, 1.0, 0.5, 0.25,
];

/// Headroom kept above the p99 policy latency: one action must be ready within one action
/// step of the previous one, with margin for load the calibration did not see.
pub const MARGIN: f64 = 1.25;

/// Ticks per action step, and per policy latency, that the recommended rate gives at least.
pub const TICKS_PER_STEP: f64 = 4.0;

/// A recommended control rate and why.
#[derive(Debug, Clone, PartialEq)]
pub struct RateChoice {
    pub rate_hz: f64,
    /// The policy's p99 × [`MARGIN`] fits one action step: actions arrive before each step
    /// is used up, so the arm moves at the training data's speed.
    pub keeps_up: bool,
    /// One line for the summary.
    pub reason: String,
}

/// The control rate for a policy whose actions are steps of `1 / action_hz` and whose p99
/// latency is `p99_ms`. The arm's speed does not depend on the rate (each action is spread
/// over its step), so the rate only decides how finely a step is cut and how long a fresh
/// action waits for its first tick: the slowest usual rate that cuts every step into at
/// least [`TICKS_PER_STEP`] ticks and picks a result up within a quarter of the policy's
/// latency (the fastest usual rate when none is fast enough). `None` when a figure is not
/// a positive finite number.
pub fn recommend(action_hz: f64, p99_ms: f64) -> Option<RateChoice> {
    if !(p99_ms.is_finite() && p99_ms > 0.0 && action_hz.is_finite() && action_hz > 0.0) {
        return None;
    }
    let step_ms = 1000.0 / action_hz;
    let for_steps = TICKS_PER_STEP * action_hz;
    let for_latency = TICKS_PER_STEP * 1000.0 / p99_ms;
    let needed = for_steps.max(for_latency);
    let fastest = RATES_HZ[0];
    let rate_hz = RATES_HZ
        .iter()
        .rev()
        .copied()
        .find(|&hz| hz >= needed)
        .unwrap_or(fastest);
    let keeps_up = p99_ms * MARGIN <= step_ms;
    let why = if for_steps >= for_latency {
        format!("{TICKS_PER_STEP} ticks per {step_ms:.0} ms action step ({action_hz} Hz actions)")
    } else {
        format!("a result waits at most a quarter of the p99 {p99_ms:.1} ms for its tick")
    };
    let pace = if keeps_up {
        format!(
            "p99 {p99_ms:.1} ms x {MARGIN} margin = {:.1} ms fits the {step_ms:.0} ms step: the arm moves at the training data's speed",
            p99_ms * MARGIN
        )
    } else {
        format!(
            "p99 {p99_ms:.1} ms x {MARGIN} margin = {:.1} ms is over the {step_ms:.0} ms step: steps will end before the next action (HOLD), the arm moves slower than trained",
            p99_ms * MARGIN
        )
    };
    Some(RateChoice {
        rate_hz,
        keeps_up,
        reason: format!("{why}; {pace}"),
    })
}

/// The `q`-quantile (0..=1) of `samples` by linear interpolation between order statistics.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_cuts_steps_finely_and_picks_results_up_quickly() {
        // 5 Hz actions, 30 ms policy: 4 ticks per 200 ms step needs 20 Hz, a quarter of
        // 30 ms needs 133 Hz: 200 Hz.
        let choice = recommend(5.0, 30.0).unwrap();
        assert_eq!(choice.rate_hz, 200.0);
        assert!(choice.keeps_up);
        // A 150 ms policy: 26.7 Hz for the latency, 20 Hz for the steps: 30 Hz.
        let choice = recommend(5.0, 150.0).unwrap();
        assert_eq!(choice.rate_hz, 30.0);
        assert!(choice.keeps_up, "{choice:?}");
        // A 400 ms policy cannot keep up with 5 Hz actions (400 x 1.25 > 200 ms): 20 Hz
        // for the steps, and the summary says the arm will be slower.
        let choice = recommend(5.0, 400.0).unwrap();
        assert_eq!(choice.rate_hz, 20.0);
        assert!(!choice.keeps_up);
        assert!(
            choice.reason.contains("slower than trained"),
            "{}",
            choice.reason
        );
        // 3 Hz actions (Fractal), 100 ms policy: 12 Hz for the steps, 40 Hz for the latency.
        assert_eq!(recommend(3.0, 100.0).unwrap().rate_hz, 50.0);
        // A 1 ms policy: the fastest offered rate.
        assert_eq!(recommend(5.0, 1.0).unwrap().rate_hz, 200.0);
        assert_eq!(recommend(5.0, f64::NAN), None);
        assert_eq!(recommend(0.0, 30.0), None);
    }

    #[test]
    fn quantile_interpolates_order_statistics() {
        let s = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&s, 0.5), 3.0);
        assert_eq!(quantile(&s, 0.0), 1.0);
        assert_eq!(quantile(&s, 1.0), 5.0);
        assert_eq!(quantile(&s, 0.25), 2.0);
        assert!((quantile(&[1.0, 2.0], 0.99) - 1.99).abs() < 1e-12);
    }
}
