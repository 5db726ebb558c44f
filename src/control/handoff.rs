//! The lock-free hand-offs around the control thread (ARCHITECTURE.md §3): the inference trigger,
//! the newest-wins action result slot, the command outbox to the publisher thread and the
//! inputs written by Zenoh callbacks. Every operation the control thread calls is a few
//! atomic instructions and at most one futex wake: no lock, no allocation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;

use crossbeam::queue::ArrayQueue;

use crate::config::ACTION_DIM;
use crate::policy::StageTimings;
use crate::transport::record::RECORD_LEN;

/// What the inference thread produces for the control thread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActionResult {
    /// The tick (schedule index) whose trigger latched the frame.
    pub trigger_tick: u64,
    pub action: [f32; ACTION_DIM],
    pub tokens: [u32; ACTION_DIM],
    /// Capture time of the frame, ns since the Unix epoch.
    pub capture_time_ns: u64,
    pub timings: StageTimings,
}

/// Newest-wins slot of capacity one: a result not taken in time is replaced by a newer one.
pub struct ResultSlot(ArrayQueue<ActionResult>);

impl Default for ResultSlot {
    fn default() -> Self {
        Self(ArrayQueue::new(1))
    }
}

impl ResultSlot {
    pub fn post(&self, result: ActionResult) {
        let _ = self.0.force_push(result);
    }

    pub fn take(&self) -> Option<ActionResult> {
        self.0.pop()
    }
}

const NO_TICK: u64 = u64::MAX;

/// The control thread's request for a new action: the newest requesting tick wins.
pub struct InferenceTrigger {
    requested_tick: AtomicU64,
    worker: OnceLock<Thread>,
}

impl Default for InferenceTrigger {
    fn default() -> Self {
        Self {
            requested_tick: AtomicU64::new(NO_TICK),
            worker: OnceLock::new(),
        }
    }
}

impl InferenceTrigger {
    /// Called once by the inference thread itself, before it waits for triggers.
    pub fn register_worker(&self) {
        let _ = self.worker.set(std::thread::current());
    }

    /// Asks for an action from the newest frame, latched at tick `tick`.
    pub fn fire(&self, tick: u64) {
        self.requested_tick.store(tick, Ordering::Release);
        if let Some(worker) = self.worker.get() {
            worker.unpark();
        }
    }

    /// The newest requested tick, if any.
    pub fn requested(&self) -> Option<u64> {
        match self.requested_tick.load(Ordering::Acquire) {
            NO_TICK => None,
            tick => Some(tick),
        }
    }

    /// Wakes the worker without a new request (to make it notice a shutdown).
    pub fn wake(&self) {
        if let Some(worker) = self.worker.get() {
            worker.unpark();
        }
    }
}

/// Commands on their way from the control thread to the publisher thread. A full outbox
/// drops its oldest record, so the newest command (a STOP included) always goes out.
pub struct CommandOutbox {
    queue: ArrayQueue<[u8; RECORD_LEN]>,
    publisher: OnceLock<Thread>,
    closed: AtomicBool,
    dropped: AtomicU64,
}

/// Records the outbox holds before it drops the oldest.
pub const OUTBOX_CAPACITY: usize = 16;

impl Default for CommandOutbox {
    fn default() -> Self {
        Self {
            queue: ArrayQueue::new(OUTBOX_CAPACITY),
            publisher: OnceLock::new(),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }
}

impl CommandOutbox {
    /// Called once by the publisher thread itself, before it waits for records.
    pub fn register_publisher(&self) {
        let _ = self.publisher.set(std::thread::current());
    }

    pub fn send(&self, record: &[u8; RECORD_LEN]) {
        if self.queue.force_push(*record).is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.wake();
    }

    pub fn receive(&self) -> Option<[u8; RECORD_LEN]> {
        self.queue.pop()
    }

    /// No more records will come; the publisher drains what is queued and ends.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn wake(&self) {
        if let Some(publisher) = self.publisher.get() {
            publisher.unpark();
        }
    }
}

/// Inputs the control thread reads every tick, written from other threads (Zenoh callbacks,
/// signal handling, the owner of the service).
#[derive(Default)]
pub struct ControlInputs {
    estop_latched: AtomicBool,
    /// Stop requests ever received; a stop and a release between two ticks still give one
    /// STOP tick.
    estop_requests: AtomicU64,
    shutdown: AtomicBool,
}

impl ControlInputs {
    pub fn request_estop(&self) {
        self.estop_latched.store(true, Ordering::Release);
        self.estop_requests.fetch_add(1, Ordering::AcqRel);
    }

    pub fn release_estop(&self) {
        self.estop_latched.store(false, Ordering::Release);
    }

    pub fn estop_latched(&self) -> bool {
        self.estop_latched.load(Ordering::Acquire)
    }

    pub fn estop_requests(&self) -> u64 {
        self.estop_requests.load(Ordering::Acquire)
    }

    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(tick: u64) -> ActionResult {
        ActionResult {
            trigger_tick: tick,
            action: [0.0; ACTION_DIM],
            tokens: [0; ACTION_DIM],
            capture_time_ns: 0,
            timings: StageTimings::default(),
        }
    }

    #[test]
    fn result_slot_keeps_the_newest() {
        let slot = ResultSlot::default();
        slot.post(result(1));
        slot.post(result(2));
        assert_eq!(slot.take().map(|r| r.trigger_tick), Some(2));
        assert_eq!(slot.take(), None);
    }

    #[test]
    fn trigger_reports_the_newest_tick() {
        let trigger = InferenceTrigger::default();
        assert_eq!(trigger.requested(), None);
        trigger.fire(3);
        trigger.fire(4);
        assert_eq!(trigger.requested(), Some(4));
    }

    #[test]
    fn full_outbox_drops_the_oldest_and_keeps_the_newest() {
        let outbox = CommandOutbox::default();
        for i in 0..(OUTBOX_CAPACITY as u8 + 2) {
            outbox.send(&[i; RECORD_LEN]);
        }
        assert_eq!(outbox.dropped(), 2);
        assert_eq!(outbox.receive().unwrap()[0], 2);
        let mut last = 0;
        while let Some(record) = outbox.receive() {
            last = record[0];
        }
        assert_eq!(last, OUTBOX_CAPACITY as u8 + 1);
    }

    #[test]
    fn estop_requests_are_counted_even_when_released_at_once() {
        let inputs = ControlInputs::default();
        inputs.request_estop();
        inputs.release_estop();
        assert!(!inputs.estop_latched());
        assert_eq!(inputs.estop_requests(), 1);
    }
}
