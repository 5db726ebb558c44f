//! The lock-free hand-offs around the control thread (ARCHITECTURE.md §3): the inference trigger,
//! the newest-wins action result slot, the command outbox (a ring of one) to the publisher
//! thread and the inputs written by Zenoh callbacks. Every operation the control thread calls
//! is a few atomic instructions and at most one futex wake: no lock, no allocation.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;

use crossbeam::queue::ArrayQueue;

use super::chunk::ActionChunk;
use super::estop_store::EStopStore;
use super::ControlState;
use crate::command_record::{CommandRecord, RECORD_LEN};
use crate::ACTION_DIM;
use vla_model::policy::StageTimings;

/// What the inference thread produces for the control thread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActionResult {
    /// The tick (schedule index) whose trigger latched the frame.
    pub trigger_tick: u64,
    /// The actions for the coming steps, the first for the step that starts on arrival.
    pub chunk: ActionChunk,
    pub tokens: [u32; ACTION_DIM],
    /// The instruction number ([`ControlInputs::instruction`]) the prediction ran with.
    pub instruction: u64,
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

    /// Takes back a request the worker has not picked up: a chunk arrived that covers the
    /// coming steps, and a prediction asked for before it would only restart it.
    pub fn withdraw(&self) {
        self.requested_tick.store(NO_TICK, Ordering::Release);
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

/// Commands on their way from the control thread to the publisher thread: a ring of one.
/// A record the publisher has not taken yet is replaced by the newer one, so a publisher
/// that was held up sends the newest command, never a burst of old ones. A STOP is not lost
/// that way: once a STOP-causing event happened, the newer records are STOP too (e-stop and
/// faults latch, and the final STOP is the last record of all).
pub struct CommandOutbox {
    slot: ArrayQueue<OutboxRecord>,
    publisher: OnceLock<Thread>,
    closed: AtomicBool,
    /// Records replaced before the publisher took them.
    dropped: AtomicU64,
    /// The newest record's seq and gripper (f32 bits), for a last-resort STOP sent by
    /// someone else than the control thread (see [`CommandOutbox::last_resort_stop`]).
    newest_seq: AtomicU64,
    newest_gripper_bits: AtomicU32,
    sent: AtomicBool,
}

/// One record in the outbox with the CLOCK_MONOTONIC time it was handed over, by which the
/// publisher judges its age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxRecord {
    pub bytes: [u8; RECORD_LEN],
    pub handed_over_ns: u64,
}

impl OutboxRecord {
    /// Whether the record commands STOP (state field, bytes 6..8).
    pub fn is_stop(&self) -> bool {
        u16::from_le_bytes([self.bytes[6], self.bytes[7]]) == ControlState::Stop as u16
    }
}

/// Records the outbox holds: one, the newest.
pub const OUTBOX_CAPACITY: usize = 1;

impl Default for CommandOutbox {
    fn default() -> Self {
        Self {
            slot: ArrayQueue::new(OUTBOX_CAPACITY),
            publisher: OnceLock::new(),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            newest_seq: AtomicU64::new(0),
            newest_gripper_bits: AtomicU32::new(0),
            sent: AtomicBool::new(false),
        }
    }
}

impl CommandOutbox {
    /// An outbox that keeps up to `records` records instead of one (tests that look at every
    /// tick's command).
    #[cfg(test)]
    pub(crate) fn keeping(records: usize) -> Self {
        Self {
            slot: ArrayQueue::new(records),
            ..Self::default()
        }
    }

    /// Called once by the publisher thread itself, before it waits for records.
    pub fn register_publisher(&self) {
        let _ = self.publisher.set(std::thread::current());
    }

    /// Hands `record` over, handed over at `now_monotonic_ns`; replaces a record not taken yet.
    pub fn send(&self, record: &[u8; RECORD_LEN], now_monotonic_ns: u64) {
        self.note_newest(record);
        let item = OutboxRecord {
            bytes: *record,
            handed_over_ns: now_monotonic_ns,
        };
        if self.slot.force_push(item).is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.wake();
    }

    fn note_newest(&self, record: &[u8; RECORD_LEN]) {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&record[8..16]);
        let mut gripper = [0u8; 4];
        gripper.copy_from_slice(&record[56..60]);
        self.newest_seq
            .store(u64::from_le_bytes(seq), Ordering::Relaxed);
        self.newest_gripper_bits
            .store(u32::from_le_bytes(gripper), Ordering::Relaxed);
        self.sent.store(true, Ordering::Release);
    }

    pub fn receive(&self) -> Option<OutboxRecord> {
        self.slot.pop()
    }

    /// No more records will come; the publisher sends what is left and ends.
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

    /// Hands over a STOP that follows the newest record (next seq, zero deltas, gripper
    /// kept) and closes the outbox: for when the control thread died and cannot send its
    /// final STOP. Not for the control thread (it builds its own records).
    pub fn last_resort_stop(&self, now_unix_ns: u64, now_monotonic_ns: u64) -> CommandRecord {
        let mut action = [0.0f32; ACTION_DIM];
        let seq = if self.sent.load(Ordering::Acquire) {
            action[ACTION_DIM - 1] =
                f32::from_bits(self.newest_gripper_bits.load(Ordering::Relaxed));
            self.newest_seq.load(Ordering::Relaxed).saturating_add(1)
        } else {
            0
        };
        let record = CommandRecord {
            state: ControlState::Stop,
            seq,
            tick_time_ns: now_unix_ns,
            capture_time_ns: 0,
            action,
        };
        let mut bytes = [0u8; RECORD_LEN];
        record.encode(&mut bytes);
        self.send(&bytes, now_monotonic_ns);
        self.close();
        record
    }

    fn wake(&self) {
        if let Some(publisher) = self.publisher.get() {
            publisher.unpark();
        }
    }
}

/// Inputs the control thread reads every tick, written from other threads (Zenoh callbacks,
/// signal handling, the owner of the service). The control thread only loads atomics; the
/// writers of the e-stop persist it first (see [`EStopStore`]).
#[derive(Default)]
pub struct ControlInputs {
    estop_latched: AtomicBool,
    /// Stop requests ever received; a stop and a release between two ticks still give one
    /// STOP tick.
    estop_requests: AtomicU64,
    /// Where the latch is persisted; the lock orders file and flag between writers.
    estop_store: Mutex<Option<EStopStore>>,
    /// Latch changes that could not be written to disk (the latch changed in memory anyway).
    estop_persist_failures: AtomicU64,
    arm_requests: AtomicU64,
    disarm_requests: AtomicU64,
    /// Payloads on the arm key that were neither `arm` nor `disarm`.
    ignored_arm_payloads: AtomicU64,
    /// Instructions applied since start: a change drops the chunks in progress.
    instruction: AtomicU64,
    /// The policy takes the robot's state (OpenVLA-OFT proprio): without a fresh one, STOP.
    proprio_required: AtomicBool,
    /// CLOCK_MONOTONIC when the newest valid robot state arrived; 0 before the first.
    last_proprio_ns: AtomicU64,
    shutdown: AtomicBool,
}

impl ControlInputs {
    /// Inputs whose e-stop latch is persisted in `store`, starting `latched`.
    pub fn with_estop_store(store: EStopStore, latched: bool) -> Self {
        let inputs = Self::default();
        inputs.estop_latched.store(latched, Ordering::Release);
        if let Ok(mut slot) = inputs.estop_store.lock() {
            *slot = Some(store);
        }
        inputs
    }

    /// Latches the e-stop: on disk first (when persisted), then for the control thread.
    pub fn request_estop(&self) {
        self.change_latch(true);
        self.estop_requests.fetch_add(1, Ordering::AcqRel);
    }

    /// Releases the latch (on disk first). The service stays in STOP until an `arm`.
    pub fn release_estop(&self) {
        self.change_latch(false);
    }

    fn change_latch(&self, latched: bool) {
        let guard = match self.estop_store.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(store) = guard.as_ref() {
            if let Err(e) = store.write(latched) {
                // The latch must change all the same: a stop is never held back by a disk.
                self.estop_persist_failures.fetch_add(1, Ordering::Relaxed);
                log::error!("{e}; the e-stop changed in memory only");
            }
        }
        self.estop_latched.store(latched, Ordering::Release);
        drop(guard);
    }

    pub fn estop_latched(&self) -> bool {
        self.estop_latched.load(Ordering::Acquire)
    }

    pub fn estop_requests(&self) -> u64 {
        self.estop_requests.load(Ordering::Acquire)
    }

    pub fn estop_persist_failures(&self) -> u64 {
        self.estop_persist_failures.load(Ordering::Relaxed)
    }

    /// An operator's `arm`: the control thread arms at its next tick unless a stop
    /// condition holds.
    pub fn request_arm(&self) {
        self.arm_requests.fetch_add(1, Ordering::AcqRel);
    }

    /// An operator's `disarm`: HOLD from the next tick on.
    pub fn request_disarm(&self) {
        self.disarm_requests.fetch_add(1, Ordering::AcqRel);
    }

    pub fn arm_requests(&self) -> u64 {
        self.arm_requests.load(Ordering::Acquire)
    }

    pub fn disarm_requests(&self) -> u64 {
        self.disarm_requests.load(Ordering::Acquire)
    }

    /// A new instruction is in force (the inference thread applied it): what is left of the
    /// chunks in progress is dropped at the next tick. Returns the new instruction number,
    /// which the predictions made with it carry.
    pub fn instruction_applied(&self) -> u64 {
        self.instruction.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// From now on the robot's state must keep arriving ([`ControlInputs::proprio_arrived`]).
    pub fn require_proprio(&self) {
        self.proprio_required.store(true, Ordering::Release);
    }

    pub fn proprio_required(&self) -> bool {
        self.proprio_required.load(Ordering::Acquire)
    }

    /// A valid robot state arrived at CLOCK_MONOTONIC `now_ns`.
    pub fn proprio_arrived(&self, now_ns: u64) {
        self.last_proprio_ns.store(now_ns, Ordering::Release);
    }

    /// CLOCK_MONOTONIC of the newest valid robot state; 0 before the first.
    pub fn last_proprio_ns(&self) -> u64 {
        self.last_proprio_ns.load(Ordering::Acquire)
    }

    /// The number of the instruction in force.
    pub fn instruction(&self) -> u64 {
        self.instruction.load(Ordering::Acquire)
    }

    pub fn ignore_arm_payload(&self) {
        self.ignored_arm_payloads.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ignored_arm_payloads(&self) -> u64 {
        self.ignored_arm_payloads.load(Ordering::Relaxed)
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
            chunk: ActionChunk::single([0.0; ACTION_DIM]),
            tokens: [0; ACTION_DIM],
            instruction: 0,
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

    fn record(state: ControlState, seq: u64, gripper: f32) -> [u8; RECORD_LEN] {
        let mut bytes = [0u8; RECORD_LEN];
        CommandRecord {
            state,
            seq,
            tick_time_ns: 1_000 + seq,
            capture_time_ns: 0,
            action: [0.01, 0.0, 0.0, 0.0, 0.0, 0.0, gripper],
        }
        .encode(&mut bytes);
        bytes
    }

    #[test]
    fn outbox_keeps_only_the_newest_record() {
        let outbox = CommandOutbox::default();
        for seq in 0..5 {
            outbox.send(&record(ControlState::Act, seq, 0.5), 100 + seq);
        }
        assert_eq!(outbox.dropped(), 4);
        let newest = outbox.receive().unwrap();
        assert_eq!(CommandRecord::decode(&newest.bytes).unwrap().seq, 4);
        assert_eq!(newest.handed_over_ns, 104);
        assert!(!newest.is_stop());
        assert_eq!(outbox.receive(), None);
    }

    #[test]
    fn last_resort_stop_follows_the_newest_record() {
        let outbox = CommandOutbox::default();
        outbox.send(&record(ControlState::Act, 41, 0.25), 7);
        let _ = outbox.receive();
        let stop = outbox.last_resort_stop(5_000, 9);
        assert_eq!(stop.state, ControlState::Stop);
        assert_eq!(stop.seq, 42);
        assert_eq!(stop.action, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25]);
        assert!(outbox.is_closed());
        let queued = outbox.receive().unwrap();
        assert!(queued.is_stop());
        assert_eq!(CommandRecord::decode(&queued.bytes).unwrap(), stop);
        // Nothing sent before: the STOP starts the sequence.
        assert_eq!(CommandOutbox::default().last_resort_stop(1, 1).seq, 0);
    }

    #[test]
    fn a_persisted_latch_is_on_disk_before_the_flag_and_survives() {
        let dir = std::env::temp_dir().join(format!("vla-rt-inputs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = EStopStore::open(&dir, "arm").unwrap();
        let inputs = ControlInputs::with_estop_store(store, false);
        assert!(!inputs.estop_latched());
        inputs.request_estop();
        assert!(inputs.estop_latched());
        let reopened = EStopStore::open(&dir, "arm").unwrap();
        assert_eq!(
            reopened.read(),
            super::super::estop_store::StoredState::Latched
        );
        inputs.release_estop();
        assert_eq!(
            reopened.read(),
            super::super::estop_store::StoredState::Released
        );
        assert_eq!(inputs.estop_persist_failures(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
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
