//! Two cameras, one observation: a checkpoint that takes a third-person and a wrist image
//! (OpenVLA-OFT's `num_images_in_input` 2) sees frames captured at nearly the same time.
//!
//! The primary camera (`[camera]`) sets the time: each prediction is made on its newest
//! frame, paired with the wrist frame (`[wrist_camera]`) whose capture time is nearest, if
//! the two are at most `[control] frame_pair_tolerance_ms` apart. The wrist camera's newest
//! two frames are kept, since the one before the newest may be the nearer; when the nearest
//! one is still to come (every wrist frame so far was captured before the primary's), the
//! pairing waits for it a little: up to the tolerance plus one wrist frame period. Without a
//! pair the step is a miss, as it is without a new frame.
//!
//! The control loop judges the cameras together ([`Cameras`]): the older of their newest
//! frames is the one that counts, and either camera failing is a failed camera.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::thread::LatestFrame;
use super::Frame;

/// The longest the pairing waits for a wrist frame, whatever the tolerance and frame rate:
/// the inference thread checks in with the supervision while it waits, but a step is not held
/// up for long.
pub const MAX_PAIR_WAIT: Duration = Duration::from_millis(200);

/// The wrist camera's frames as the inference thread holds them.
pub struct WristFrames {
    latest: Arc<LatestFrame>,
    older: Option<Frame>,
    newer: Option<Frame>,
}

/// What stands in the way of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpaired {
    /// The wrist camera has not sent a frame yet.
    NoFrame,
    /// The nearest wrist frame was captured this far (ns) from the primary frame.
    TooFarApart { skew_ns: u64 },
}

impl WristFrames {
    pub fn new(latest: Arc<LatestFrame>) -> Self {
        Self {
            latest,
            older: None,
            newer: None,
        }
    }

    /// Takes the camera's newest frame, if it sent one since the last call; the frame before
    /// it is kept, the one before that goes back to the camera.
    pub fn refresh(&mut self) {
        if let Some(frame) = self.latest.take_newest() {
            if let Some(dropped) = self.older.take() {
                self.latest.recycle(dropped);
            }
            self.older = self.newer.replace(frame);
        }
    }

    /// The newest frame taken, if any.
    pub fn newest(&self) -> Option<&Frame> {
        self.newer.as_ref()
    }

    /// Which held frame was captured nearest to `capture_time_ns`, and how far from it.
    fn nearest(&self, capture_time_ns: u64) -> Option<(bool, u64)> {
        let skew = |frame: &Frame| frame.capture_time_ns.abs_diff(capture_time_ns);
        let newer = self.newer.as_ref().map(skew)?;
        match self.older.as_ref().map(skew) {
            Some(older) if older < newer => Some((false, older)),
            _ => Some((true, newer)),
        }
    }

    /// The wrist frame captured nearest to `capture_time_ns` and how far apart (ns), if that
    /// is at most `tolerance_ns`. While every wrist frame so far was captured before
    /// `capture_time_ns` and none is near enough, waits for newer ones until `wait` has
    /// passed, calling `check_in` every millisecond or so.
    pub fn pair_with(
        &mut self,
        capture_time_ns: u64,
        tolerance_ns: u64,
        wait: Duration,
        mut check_in: impl FnMut(),
    ) -> Result<(&Frame, u64), Unpaired> {
        let deadline = Instant::now() + wait.min(MAX_PAIR_WAIT);
        let (newer, skew_ns) = loop {
            self.refresh();
            let Some((newer, skew_ns)) = self.nearest(capture_time_ns) else {
                return Err(Unpaired::NoFrame);
            };
            let nearest_is_yet_to_come = self
                .newer
                .as_ref()
                .is_some_and(|frame| frame.capture_time_ns < capture_time_ns);
            if skew_ns <= tolerance_ns || !nearest_is_yet_to_come || Instant::now() >= deadline {
                break (newer, skew_ns);
            }
            check_in();
            std::thread::sleep(Duration::from_millis(1));
        };
        if skew_ns > tolerance_ns {
            return Err(Unpaired::TooFarApart { skew_ns });
        }
        let frame = if newer { &self.newer } else { &self.older };
        frame
            .as_ref()
            .map(|frame| (frame, skew_ns))
            .ok_or(Unpaired::NoFrame)
    }
}

impl Drop for WristFrames {
    fn drop(&mut self) {
        for frame in [self.older.take(), self.newer.take()].into_iter().flatten() {
            self.latest.recycle(frame);
        }
    }
}

/// Every camera of the service, as the control loop judges them.
pub struct Cameras {
    pub primary: Arc<LatestFrame>,
    pub wrist: Option<Arc<LatestFrame>>,
}

impl vla_control::tick_loop::FrameHealth for Cameras {
    fn has_failed(&self) -> bool {
        self.primary.has_failed() || self.wrist.as_ref().is_some_and(|w| w.has_failed())
    }

    /// The older of the cameras' newest arrivals (0, "none yet", while one has sent none).
    fn last_frame_monotonic_ns(&self) -> u64 {
        let primary = self.primary.last_frame_monotonic_ns();
        self.wrist
            .as_ref()
            .map_or(primary, |w| primary.min(w.last_frame_monotonic_ns()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vla_control::tick_loop::FrameHealth;

    const MS: u64 = 1_000_000;

    fn frame(capture_time_ns: u64) -> Frame {
        Frame {
            capture_time_ns,
            sequence: capture_time_ns,
            ..Frame::default()
        }
    }

    fn wrist_with(times: &[u64]) -> WristFrames {
        let latest = Arc::new(LatestFrame::with_held_frames(2));
        let mut wrist = WristFrames::new(Arc::clone(&latest));
        for &t in times {
            latest.publish(frame(t), t);
            wrist.refresh();
        }
        wrist
    }

    fn paired(wrist: &mut WristFrames, at: u64, tolerance: u64) -> Result<(u64, u64), Unpaired> {
        wrist
            .pair_with(at, tolerance, Duration::ZERO, || {})
            .map(|(frame, skew)| (frame.capture_time_ns, skew))
    }

    #[test]
    fn the_nearest_of_the_newest_two_wrist_frames_is_paired() {
        // Wrist frames at 100 and 133 ms; a primary frame at 110 ms is nearer the older one.
        let mut wrist = wrist_with(&[67 * MS, 100 * MS, 133 * MS]);
        assert_eq!(
            paired(&mut wrist, 110 * MS, 25 * MS),
            Ok((100 * MS, 10 * MS))
        );
        assert_eq!(
            paired(&mut wrist, 130 * MS, 25 * MS),
            Ok((133 * MS, 3 * MS))
        );
        // The frame at 67 ms went back to the camera: 80 ms pairs with 100 ms, not 67 ms.
        assert_eq!(
            paired(&mut wrist, 80 * MS, 25 * MS),
            Ok((100 * MS, 20 * MS))
        );
    }

    #[test]
    fn frames_further_apart_than_the_tolerance_are_not_paired() {
        let mut wrist = wrist_with(&[100 * MS, 133 * MS]);
        assert_eq!(
            paired(&mut wrist, 200 * MS, 25 * MS),
            Err(Unpaired::TooFarApart { skew_ns: 67 * MS })
        );
        assert_eq!(
            paired(&mut wrist, 40 * MS, 25 * MS),
            Err(Unpaired::TooFarApart { skew_ns: 60 * MS })
        );
        // Exactly the tolerance apart is a pair.
        assert_eq!(
            paired(&mut wrist, 158 * MS, 25 * MS),
            Ok((133 * MS, 25 * MS))
        );
        assert_eq!(
            paired(&mut wrist_with(&[]), 100 * MS, 25 * MS),
            Err(Unpaired::NoFrame)
        );
    }

    #[test]
    fn the_pairing_waits_for_a_wrist_frame_still_to_come() {
        let latest = Arc::new(LatestFrame::with_held_frames(2));
        let mut wrist = WristFrames::new(Arc::clone(&latest));
        latest.publish(frame(100 * MS), 1);
        // The primary frame was captured at 150 ms: the wrist frame of 140 ms arrives 30 ms
        // after the pairing began, within its wait.
        let camera = {
            let latest = Arc::clone(&latest);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                latest.publish(frame(140 * MS), 2);
            })
        };
        let mut check_ins = 0;
        let pair = wrist
            .pair_with(150 * MS, 25 * MS, Duration::from_secs(5), || check_ins += 1)
            .map(|(frame, skew)| (frame.capture_time_ns, skew));
        camera.join().unwrap();
        assert_eq!(pair, Ok((140 * MS, 10 * MS)));
        assert!(check_ins > 0, "the wait checked in with the supervision");

        // A wrist camera already past the primary frame's time is not waited for.
        let started = Instant::now();
        let mut wrist = wrist_with(&[100 * MS, 200 * MS]);
        assert_eq!(
            wrist
                .pair_with(150 * MS, 25 * MS, Duration::from_secs(5), || {})
                .map(|(f, _)| f.capture_time_ns),
            Err(Unpaired::TooFarApart { skew_ns: 50 * MS })
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn the_wait_for_a_wrist_frame_is_bounded() {
        let mut wrist = wrist_with(&[100 * MS]);
        let started = Instant::now();
        assert_eq!(
            wrist
                .pair_with(500 * MS, 25 * MS, Duration::from_secs(30), || {})
                .map(|(f, _)| f.capture_time_ns),
            Err(Unpaired::TooFarApart { skew_ns: 400 * MS })
        );
        let waited = started.elapsed();
        assert!(
            waited >= MAX_PAIR_WAIT && waited < MAX_PAIR_WAIT * 5,
            "waited {waited:?}"
        );
    }

    #[test]
    fn the_cameras_count_as_fresh_as_the_older_newest_frame_and_fail_with_either() {
        let primary = Arc::new(LatestFrame::new());
        let wrist = Arc::new(LatestFrame::new());
        let cameras = Cameras {
            primary: Arc::clone(&primary),
            wrist: Some(Arc::clone(&wrist)),
        };
        primary.publish(frame(1), 500);
        assert_eq!(cameras.last_frame_monotonic_ns(), 0, "the wrist sent none");
        wrist.publish(frame(1), 300);
        assert_eq!(cameras.last_frame_monotonic_ns(), 300);
        wrist.publish(frame(2), 900);
        assert_eq!(cameras.last_frame_monotonic_ns(), 500);
        assert!(!cameras.has_failed());
        wrist.mark_failed();
        assert!(cameras.has_failed());

        let alone = Cameras {
            primary: Arc::clone(&primary),
            wrist: None,
        };
        assert_eq!(alone.last_frame_monotonic_ns(), 500);
        assert!(!alone.has_failed());
    }
}
