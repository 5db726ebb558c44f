//! A synthetic camera: a coloured block moving over a textured background, paced at the
//! configured frame rate. Every image is a pure function of its frame number, so runs repeat
//! exactly, and the scene moves, so a policy's actions change from frame to frame.

use super::{CaptureError, CaptureStats, Frame, FrameSource};
use crate::config::CameraConfig;
use crate::control::clock;

pub struct SyntheticSource {
    width: u32,
    height: u32,
    period_ns: u64,
    /// The background, rendered once at start: `[height, width, 3]`.
    background: Vec<u8>,
    next_frame_number: u64,
    /// CLOCK_MONOTONIC time the first frame was due.
    start_ns: u64,
    stats: CaptureStats,
}

impl SyntheticSource {
    pub fn new(config: &CameraConfig) -> Result<Self, CaptureError> {
        if config.width == 0 || config.height == 0 || config.fps == 0 {
            return Err(CaptureError::Config {
                source_name: "synthetic".into(),
                message: format!(
                    "needs a size and a frame rate, got {}x{}@{}",
                    config.width, config.height, config.fps
                ),
            });
        }
        Ok(Self {
            width: config.width,
            height: config.height,
            period_ns: 1_000_000_000 / u64::from(config.fps),
            background: Vec::new(),
            next_frame_number: 0,
            start_ns: 0,
            stats: CaptureStats::default(),
        })
    }
}

/// Side of the moving block: a fifth of the shorter image side.
fn block_side(width: u32, height: u32) -> u32 {
    (width.min(height) / 5).max(1)
}

/// Writes the textured background: a soft diagonal gradient with a fine checker, so that
/// the vision encoders see structure everywhere.
fn render_background(width: u32, height: u32, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            let checker = if ((x / 8) + (y / 8)) % 2 == 0 { 24 } else { 0 };
            let r = 90 + (x * 60 / width) as u8 + checker;
            let g = 100 + (y * 50 / height) as u8 + checker;
            let b = 120 + ((x + y) * 40 / (width + height)) as u8;
            out.extend_from_slice(&[r, g, b]);
        }
    }
}

/// Top-left corner and colour of the block in frame `n`: a Lissajous path that takes about
/// four seconds at 30 fps to come round, and a hue that cycles with it.
fn block_at(n: u64, width: u32, height: u32) -> (u32, u32, [u8; 3]) {
    let side = block_side(width, height);
    let t = n as f64 / 30.0;
    let fx = 0.5 + 0.45 * (t * std::f64::consts::TAU / 4.0).sin();
    let fy = 0.5 + 0.45 * (t * std::f64::consts::TAU / 3.0).cos();
    let x = (fx * f64::from(width - side)) as u32;
    let y = (fy * f64::from(height - side)) as u32;
    const COLOURS: [[u8; 3]; 4] = [[220, 30, 30], [30, 180, 40], [30, 60, 220], [230, 200, 20]];
    (x, y, COLOURS[((n / 60) % 4) as usize])
}

/// Renders frame `n` into `out` (`[height, width, 3]` RGB), given the pre-rendered background.
pub fn render_frame(n: u64, width: u32, height: u32, background: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(background);
    let side = block_side(width, height);
    let (bx, by, colour) = block_at(n, width, height);
    for y in by..by + side {
        let row = (y * width) as usize * 3;
        for x in bx..bx + side {
            let at = row + x as usize * 3;
            out[at..at + 3].copy_from_slice(&colour);
        }
    }
}

impl FrameSource for SyntheticSource {
    fn start(&mut self) -> Result<(), CaptureError> {
        render_background(self.width, self.height, &mut self.background);
        self.next_frame_number = 0;
        self.start_ns = clock::monotonic_ns();
        Ok(())
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<(), CaptureError> {
        if self.background.is_empty() {
            return Err(CaptureError::Config {
                source_name: "synthetic".into(),
                message: "next_frame called before start".into(),
            });
        }
        let n = self.next_frame_number;
        let due = self.start_ns + n * self.period_ns;
        let now = clock::monotonic_ns();
        if now > due + self.period_ns {
            // Fell behind (the consumer started late): restart the schedule instead of
            // producing a burst of frames.
            self.start_ns = now - n * self.period_ns;
        } else {
            clock::sleep_until_monotonic(due);
        }
        render_frame(
            n,
            self.width,
            self.height,
            &self.background,
            &mut frame.image.data,
        );
        frame.image.width = self.width;
        frame.image.height = self.height;
        frame.capture_time_ns = clock::realtime_ns();
        frame.sequence = n;
        self.next_frame_number += 1;
        self.stats.frames += 1;
        Ok(())
    }

    fn stats(&self) -> CaptureStats {
        self.stats
    }

    fn stop(&mut self) {
        self.background = Vec::new();
    }

    fn describe(&self) -> String {
        format!(
            "synthetic {}x{}@{}",
            self.width,
            self.height,
            1_000_000_000 / self.period_ns
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn camera(width: u32, height: u32, fps: u32) -> CameraConfig {
        CameraConfig {
            width,
            height,
            fps,
            ..CameraConfig::default()
        }
    }

    #[test]
    fn frames_are_a_function_of_their_number() {
        let mut a = SyntheticSource::new(&camera(64, 48, 1000)).unwrap();
        let mut b = SyntheticSource::new(&camera(64, 48, 1000)).unwrap();
        a.start().unwrap();
        b.start().unwrap();
        let mut fa = Frame::default();
        let mut fb = Frame::default();
        for n in 0..5 {
            a.next_frame(&mut fa).unwrap();
            b.next_frame(&mut fb).unwrap();
            assert_eq!(fa.sequence, n);
            assert_eq!(fa.image, fb.image);
            assert_eq!(fa.image.data.len(), 64 * 48 * 3);
        }
        assert_eq!(a.stats().frames, 5);
    }

    #[test]
    fn the_block_moves_and_is_drawn() {
        let (w, h) = (160, 120);
        let mut background = Vec::new();
        render_background(w, h, &mut background);
        let mut first = Vec::new();
        let mut later = Vec::new();
        render_frame(0, w, h, &background, &mut first);
        render_frame(20, w, h, &background, &mut later);
        assert_ne!(first, later);
        let (x0, y0, colour) = block_at(0, w, h);
        let (x1, y1, _) = block_at(20, w, h);
        assert_ne!((x0, y0), (x1, y1));
        let centre = ((y0 + 12) * w + x0 + 12) as usize * 3;
        assert_eq!(&first[centre..centre + 3], &colour);
        // The block stays inside the image over a whole cycle.
        for n in 0..400 {
            let (x, y, _) = block_at(n, w, h);
            assert!(x + block_side(w, h) <= w && y + block_side(w, h) <= h);
        }
    }

    #[test]
    fn next_frame_before_start_is_an_error() {
        let mut source = SyntheticSource::new(&camera(64, 48, 30)).unwrap();
        let mut frame = Frame::default();
        assert!(source.next_frame(&mut frame).is_err());
    }
}
