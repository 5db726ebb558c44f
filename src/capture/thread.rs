//! The capture thread and its hand-off: a "latest frame wins" slot. The thread fills frames
//! from a small pool of reused buffers and never blocks on its consumer; the consumer takes
//! the newest frame and hands its previous one back to the pool.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam::queue::ArrayQueue;

use super::{CaptureError, CaptureStats, Frame, FrameSource};
use crate::control::clock;

/// Frames in circulation besides the consumer's: one being filled, one in the slot.
const CAPTURE_FRAMES: usize = 2;

/// Single-slot hand-off of the newest frame plus the camera's liveness counters.
pub struct LatestFrame {
    slot: ArrayQueue<Frame>,
    pool: ArrayQueue<Frame>,
    /// CLOCK_MONOTONIC when the newest frame arrived; 0 before the first.
    last_frame_monotonic_ns: AtomicU64,
    frames: AtomicU64,
    drops: AtomicU64,
    corrupt: AtomicU64,
    stalls: AtomicU64,
    reopens: AtomicU64,
    /// Set when the source failed for good; the camera then counts as silent.
    failed: AtomicBool,
}

impl Default for LatestFrame {
    fn default() -> Self {
        Self::new()
    }
}

impl LatestFrame {
    pub fn new() -> Self {
        Self::with_held_frames(1)
    }

    /// A hand-off whose consumer holds up to `held` frames at once (a camera paired with
    /// another keeps its newest two), so that steady-state capture still reuses its buffers.
    pub fn with_held_frames(held: usize) -> Self {
        let frames = CAPTURE_FRAMES + held.max(1);
        let pool = ArrayQueue::new(frames);
        for _ in 0..frames {
            let _ = pool.push(Frame::default());
        }
        Self {
            slot: ArrayQueue::new(1),
            pool,
            last_frame_monotonic_ns: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        }
    }

    /// A buffer to fill: from the pool, or a fresh one if the pool ran dry.
    pub fn buffer(&self) -> Frame {
        self.pool.pop().unwrap_or_default()
    }

    /// Makes `frame` the newest; an older frame still in the slot goes back to the pool.
    pub fn publish(&self, frame: Frame, arrival_monotonic_ns: u64) {
        if let Some(replaced) = self.slot.force_push(frame) {
            let _ = self.pool.push(replaced);
        }
        self.last_frame_monotonic_ns
            .store(arrival_monotonic_ns, Ordering::Release);
        self.frames.fetch_add(1, Ordering::Relaxed);
    }

    /// The newest frame not taken yet, if any.
    pub fn take_newest(&self) -> Option<Frame> {
        self.slot.pop()
    }

    /// Returns a frame the consumer is done with.
    pub fn recycle(&self, frame: Frame) {
        let _ = self.pool.push(frame);
    }

    /// CLOCK_MONOTONIC arrival time of the newest frame; 0 before the first.
    pub fn last_frame_monotonic_ns(&self) -> u64 {
        self.last_frame_monotonic_ns.load(Ordering::Acquire)
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// The source failed for good: the camera counts as silent from now on.
    pub(crate) fn mark_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }

    pub fn stats(&self) -> CaptureStats {
        CaptureStats {
            frames: self.frames.load(Ordering::Relaxed),
            drops: self.drops.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            stalls: self.stalls.load(Ordering::Relaxed),
            reopens: self.reopens.load(Ordering::Relaxed),
        }
    }

    fn store_source_stats(&self, stats: CaptureStats) {
        self.drops.store(stats.drops, Ordering::Relaxed);
        self.corrupt.store(stats.corrupt, Ordering::Relaxed);
        self.stalls.store(stats.stalls, Ordering::Relaxed);
        self.reopens.store(stats.reopens, Ordering::Relaxed);
    }
}

/// Who watches the capture thread: told at every turn of its loop (at least once per camera
/// wait), and when it ends on its own after the source failed for good.
pub trait CaptureWatch: Send + 'static {
    fn alive(&self);
    fn ended(&self);
    /// Runs the capture loop; a watcher may catch a panic in it.
    fn run(&self, capture: &mut dyn FnMut()) {
        capture();
    }
}

/// A running capture thread; [`CaptureThread::stop`] ends it and releases the source.
pub struct CaptureThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl CaptureThread {
    /// Runs `source` (already started) on its own thread, publishing into `latest`.
    pub fn spawn(
        source: Box<dyn FrameSource>,
        latest: Arc<LatestFrame>,
    ) -> Result<Self, CaptureError> {
        Self::spawn_watched(source, latest, None)
    }

    /// [`CaptureThread::spawn`], reporting to `watch`.
    pub fn spawn_watched(
        source: Box<dyn FrameSource>,
        latest: Arc<LatestFrame>,
        watch: Option<Box<dyn CaptureWatch>>,
    ) -> Result<Self, CaptureError> {
        Self::spawn_named("vla-capture", source, latest, watch)
    }

    /// [`CaptureThread::spawn_watched`] on a thread called `thread_name` (the supervision
    /// tells the cameras' threads apart by name).
    pub fn spawn_named(
        thread_name: &str,
        mut source: Box<dyn FrameSource>,
        latest: Arc<LatestFrame>,
        watch: Option<Box<dyn CaptureWatch>>,
    ) -> Result<Self, CaptureError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let name = source.describe();
        let handle = std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || {
                match &watch {
                    Some(watch) => watch.run(&mut || {
                        capture_loop(source.as_mut(), &latest, &stop_flag, Some(watch.as_ref()));
                        if latest.has_failed() {
                            watch.ended();
                        }
                    }),
                    None => capture_loop(source.as_mut(), &latest, &stop_flag, None),
                }
                source.stop();
            })
            .map_err(|e| CaptureError::Io {
                source_name: name,
                message: format!("cannot start the capture thread: {e}"),
            })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Leaves the thread behind without waiting for it (it is stalled); it ends with the
    /// process.
    pub fn abandon(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.handle = None;
    }

    /// Asks the thread to finish and waits for it (at most one frame period or stall timeout).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                log::error!("capture thread panicked");
            }
        }
    }
}

impl Drop for CaptureThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn capture_loop(
    source: &mut dyn FrameSource,
    latest: &LatestFrame,
    stop: &AtomicBool,
    watch: Option<&dyn CaptureWatch>,
) {
    let mut frame = latest.buffer();
    let mut last_error_logged_ns = 0u64;
    while !stop.load(Ordering::Acquire) {
        if let Some(watch) = watch {
            watch.alive();
        }
        match source.next_frame(&mut frame) {
            Ok(()) => {
                let filled = std::mem::replace(&mut frame, latest.buffer());
                latest.publish(filled, clock::monotonic_ns());
                latest.store_source_stats(source.stats());
            }
            Err(e) if e.is_transient() => {
                latest.store_source_stats(source.stats());
                let now = clock::monotonic_ns();
                if now.saturating_sub(last_error_logged_ns) > 1_000_000_000 {
                    log::warn!("{e}");
                    last_error_logged_ns = now;
                }
            }
            Err(e) => {
                log::error!("{e}; capture stopped");
                latest.mark_failed();
                return;
            }
        }
    }
}

impl vla_control::tick_loop::FrameHealth for LatestFrame {
    fn has_failed(&self) -> bool {
        LatestFrame::has_failed(self)
    }

    fn last_frame_monotonic_ns(&self) -> u64 {
        LatestFrame::last_frame_monotonic_ns(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::RgbImage;

    fn frame(sequence: u64) -> Frame {
        Frame {
            image: RgbImage {
                width: 1,
                height: 1,
                data: vec![sequence as u8; 3],
            },
            capture_time_ns: sequence,
            sequence,
        }
    }

    #[test]
    fn the_newest_frame_wins() {
        let latest = LatestFrame::new();
        assert!(latest.take_newest().is_none());
        latest.publish(frame(1), 10);
        latest.publish(frame(2), 20);
        latest.publish(frame(3), 30);
        assert_eq!(latest.take_newest().unwrap().sequence, 3);
        assert!(latest.take_newest().is_none());
        assert_eq!(latest.last_frame_monotonic_ns(), 30);
        assert_eq!(latest.stats().frames, 3);
    }

    #[test]
    fn buffers_are_reused() {
        let latest = LatestFrame::new();
        let mut buffer = latest.buffer();
        buffer.image.data = Vec::with_capacity(1234);
        let pointer = buffer.image.data.as_ptr();
        latest.publish(buffer, 1);
        let taken = latest.take_newest().unwrap();
        latest.recycle(taken);
        // The recycled buffer keeps its allocation and comes back from the pool.
        let found = (0..CAPTURE_FRAMES + 2)
            .map(|_| latest.buffer())
            .any(|f| f.image.data.as_ptr() == pointer && f.image.data.capacity() == 1234);
        assert!(found);
    }

    struct CountingSource {
        n: u64,
        fail_at: u64,
    }

    impl FrameSource for CountingSource {
        fn start(&mut self) -> Result<(), CaptureError> {
            Ok(())
        }
        fn next_frame(&mut self, out: &mut Frame) -> Result<(), CaptureError> {
            std::thread::sleep(std::time::Duration::from_millis(1));
            self.n += 1;
            if self.n == 2 {
                return Err(CaptureError::Corrupt {
                    source_name: "counting".into(),
                    message: "bad frame".into(),
                });
            }
            if self.n >= self.fail_at {
                return Err(CaptureError::Io {
                    source_name: "counting".into(),
                    message: "gone".into(),
                });
            }
            out.sequence = self.n;
            Ok(())
        }
        fn stats(&self) -> CaptureStats {
            CaptureStats::default()
        }
        fn stop(&mut self) {}
        fn describe(&self) -> String {
            "counting".into()
        }
    }

    #[test]
    fn thread_rides_out_transient_errors_and_stops_on_fatal_ones() {
        let latest = Arc::new(LatestFrame::new());
        let source = Box::new(CountingSource { n: 0, fail_at: 6 });
        let mut thread = CaptureThread::spawn(source, Arc::clone(&latest)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !latest.has_failed() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        thread.stop();
        assert!(latest.has_failed());
        // Frames 1, 3, 4 and 5 arrived; frame 2 was corrupt and skipped.
        assert_eq!(latest.stats().frames, 4);
        assert_eq!(latest.take_newest().unwrap().sequence, 5);
    }
}
