//! Heartbeats of the service's worker threads, and the faults they reveal.
//!
//! Every worker checks in with its heartbeat: one relaxed atomic store of CLOCK_MONOTONIC,
//! no lock, no allocation, so the control tick may do it too. The control, capture,
//! inference, publisher and status threads check in at least every 100 ms (the capture
//! thread once per camera wait); a Zenoh callback marks itself busy while it runs, and so
//! does the inference thread while a prediction runs. A worker that panicked, or has not
//! checked in within its limit (or stayed busy past its busy limit), is a [`Fault`]: the
//! control loop publishes STOP (cause `worker fault`) and ends. The watchdog thread
//! (`crate::service::supervision`) does the looking.
//!
//! With the `fault-injection` feature (tests only; the service's release build leaves it
//! off), [`crate::fault_injection::FaultInjection`] (the `VLA_RT_TEST_FAULT` environment
//! variable of `vla-rt run`) makes one worker panic or stall at a check-in. It can only take a
//! worker away, which ends in STOP; it never produces a command.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::clock;
#[cfg(feature = "fault-injection")]
use crate::fault_injection::{FaultInjection, InjectedFault, FAULT_INJECTION_ENV};

/// The supervised threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Worker {
    Control = 0,
    Capture = 1,
    Inference = 2,
    Publisher = 3,
    Status = 4,
    /// The instruction and e-stop subscribers' callbacks, on Zenoh's threads.
    Callbacks = 5,
    /// The second camera's capture thread (`[wrist_camera]`).
    WristCapture = 6,
}

const WORKER_COUNT: usize = 7;

pub const WORKERS: [Worker; WORKER_COUNT] = [
    Worker::Control,
    Worker::Capture,
    Worker::Inference,
    Worker::Publisher,
    Worker::Status,
    Worker::Callbacks,
    Worker::WristCapture,
];

impl Worker {
    /// The name used in logs, faults and [`FaultInjection`].
    pub fn name(self) -> &'static str {
        match self {
            Worker::Control => "control",
            Worker::Capture => "capture",
            Worker::Inference => "inference",
            Worker::Publisher => "publisher",
            Worker::Status => "status",
            Worker::Callbacks => "callback",
            Worker::WristCapture => "wrist-capture",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        WORKERS.into_iter().find(|w| w.name() == name)
    }

    /// The worker that runs on the thread called `thread_name` (the service names its
    /// threads `vla-<worker>`); Zenoh's own threads run the callbacks.
    fn of_thread(thread_name: &str) -> Option<Self> {
        match thread_name {
            "vla-control" => Some(Worker::Control),
            "vla-capture" => Some(Worker::Capture),
            "vla-inference" => Some(Worker::Inference),
            "vla-publish" => Some(Worker::Publisher),
            "vla-status" => Some(Worker::Status),
            WRIST_CAPTURE_THREAD => Some(Worker::WristCapture),
            _ => None,
        }
    }
}

/// The wrist camera's capture thread (Linux keeps 15 bytes of a thread's name).
pub const WRIST_CAPTURE_THREAD: &str = "vla-wrist-cap";

/// What went wrong with a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Panicked,
    Stalled,
}

/// A worker that died or stalled; the service stops and `vla-rt run` exits with code 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// `None` for a panic on a thread that is not one of the service's (seen by the panic
    /// hook).
    pub worker: Option<Worker>,
    pub kind: FaultKind,
    /// The panic message, or how long the worker was silent.
    pub detail: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = self.worker.map_or("a", Worker::name);
        match self.kind {
            FaultKind::Panicked => write!(f, "{who} thread panicked: {}", self.detail),
            FaultKind::Stalled => write!(f, "{who} thread stalled: {}", self.detail),
        }
    }
}

/// How long each worker may go without checking in, in ns; 0: not watched that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest gap between two check-ins of a worker that is not busy.
    pub idle_ns: [u64; WORKER_COUNT],
    /// Longest time a worker may stay busy (a prediction, a callback).
    pub busy_ns: [u64; WORKER_COUNT],
}

/// A prediction in progress counts as stalled only after this long, or ten control periods
/// if that is longer: a 7B model on a CPU legitimately takes tens of seconds, and the arm is
/// in STOP long before (`stop_after_misses`).
pub const MIN_PREDICTION_LIMIT: Duration = Duration::from_secs(60);

impl Limits {
    /// The limits of a service whose workers check in within `worker_timeout_ns`, whose
    /// camera may normally wait `camera_wait_ns` for a frame, and whose control period is
    /// `period_ns`.
    pub fn new(worker_timeout_ns: u64, camera_wait_ns: u64, period_ns: u64) -> Self {
        let timeout_ns = worker_timeout_ns;
        let prediction_ns = (MIN_PREDICTION_LIMIT.as_nanos() as u64)
            .max(period_ns.saturating_mul(10))
            .max(timeout_ns);
        let mut idle_ns = [timeout_ns; WORKER_COUNT];
        idle_ns[Worker::Capture as usize] = timeout_ns.saturating_add(camera_wait_ns);
        // Only a service with a wrist camera runs its thread, and sets its limit.
        idle_ns[Worker::WristCapture as usize] = 0;
        // Callbacks run only when a sample arrives: they are watched while busy only.
        idle_ns[Worker::Callbacks as usize] = 0;
        let mut busy_ns = [0; WORKER_COUNT];
        busy_ns[Worker::Inference as usize] = prediction_ns;
        busy_ns[Worker::Callbacks as usize] = timeout_ns;
        Self { idle_ns, busy_ns }
    }

    /// The control thread's limit, by which the watchdog decides to ping.
    pub fn control_ns(&self) -> u64 {
        self.idle_ns[Worker::Control as usize]
    }
}

#[derive(Default)]
struct Heartbeat {
    /// CLOCK_MONOTONIC of the newest check-in.
    last_ns: AtomicU64,
    /// CLOCK_MONOTONIC when the oldest running busy section began; 0 when not busy.
    busy_since_ns: AtomicU64,
    busy_sections: AtomicU32,
    /// The worker ended on its own in an orderly way (a camera that failed for good); it is
    /// not watched any more.
    ended: AtomicBool,
}

/// The heartbeats of one service's workers and the fault, if any.
pub struct Supervision {
    hearts: [Heartbeat; WORKER_COUNT],
    limits: Limits,
    fault_seen: AtomicBool,
    fault: Mutex<Option<Fault>>,
    #[cfg(feature = "fault-injection")]
    injection: Option<FaultInjection>,
    #[cfg(feature = "fault-injection")]
    injection_fired: AtomicBool,
    #[cfg(feature = "fault-injection")]
    started_ns: u64,
}

impl Supervision {
    pub fn new(limits: Limits) -> Self {
        let now = clock::monotonic_ns();
        let supervision = Self {
            hearts: Default::default(),
            limits,
            fault_seen: AtomicBool::new(false),
            fault: Mutex::new(None),
            #[cfg(feature = "fault-injection")]
            injection: None,
            #[cfg(feature = "fault-injection")]
            injection_fired: AtomicBool::new(false),
            #[cfg(feature = "fault-injection")]
            started_ns: now,
        };
        supervision.restart_clocks(now);
        supervision
    }

    /// Arms a test fault (`VLA_RT_TEST_FAULT`), timed from this supervision's creation.
    #[cfg(feature = "fault-injection")]
    pub fn with_fault_injection(mut self, injection: Option<FaultInjection>) -> Self {
        self.injection = injection;
        self
    }

    /// Counts every worker as just checked in (when the watching begins, after start-up).
    pub fn restart_clocks(&self, now_ns: u64) {
        for heart in &self.hearts {
            heart.last_ns.fetch_max(now_ns, Ordering::Relaxed);
        }
    }

    /// `worker` is alive. A few atomic operations; never allocates unless a test fault fires.
    #[inline]
    pub fn check_in(&self, worker: Worker) {
        let now = clock::monotonic_ns();
        self.hearts[worker as usize]
            .last_ns
            .store(now, Ordering::Relaxed);
        #[cfg(feature = "fault-injection")]
        if let Some(injection) = &self.injection {
            if injection.worker == worker {
                self.maybe_inject(injection, now);
            }
        }
    }

    #[cfg(feature = "fault-injection")]
    #[cold]
    fn maybe_inject(&self, injection: &FaultInjection, now_ns: u64) {
        let due = self
            .started_ns
            .saturating_add(injection.after.as_nanos() as u64);
        if now_ns < due || self.injection_fired.swap(true, Ordering::AcqRel) {
            return;
        }
        let name = injection.worker.name();
        match injection.fault {
            InjectedFault::Panic => {
                log::warn!("{FAULT_INJECTION_ENV}: the {name} thread panics now");
                panic!("{FAULT_INJECTION_ENV}: injected panic in the {name} thread");
            }
            InjectedFault::Stall(Some(duration)) => {
                log::warn!("{FAULT_INJECTION_ENV}: the {name} thread stalls for {duration:?}");
                std::thread::sleep(duration);
                log::warn!("{FAULT_INJECTION_ENV}: the {name} thread runs again");
            }
            InjectedFault::Stall(None) => {
                log::warn!("{FAULT_INJECTION_ENV}: the {name} thread stalls for good");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
        }
    }

    /// Runs `work` as a busy section of `worker` (a prediction, a callback): the worker
    /// is judged by its busy limit meanwhile.
    pub fn busy<R>(&self, worker: Worker, work: impl FnOnce() -> R) -> R {
        let heart = &self.hearts[worker as usize];
        let now = clock::monotonic_ns();
        if heart.busy_sections.fetch_add(1, Ordering::AcqRel) == 0 {
            heart.busy_since_ns.store(now, Ordering::Release);
        }
        struct Leave<'a>(&'a Heartbeat);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                if self.0.busy_sections.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.0.busy_since_ns.store(0, Ordering::Release);
                }
                self.0
                    .last_ns
                    .store(clock::monotonic_ns(), Ordering::Relaxed);
            }
        }
        let _leave = Leave(heart);
        work()
    }

    /// Runs `work`, turning a panic into a fault of `worker`; `None` when it panicked.
    pub fn guard<R>(&self, worker: Worker, work: impl FnOnce() -> R) -> Option<R> {
        let outer = GUARDED_WORKER.with(|current| current.replace(Some(worker)));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        GUARDED_WORKER.with(|current| current.set(outer));
        match outcome {
            Ok(value) => Some(value),
            Err(payload) => {
                self.report(Fault {
                    worker: Some(worker),
                    kind: FaultKind::Panicked,
                    detail: panic_text(payload.as_ref()),
                });
                None
            }
        }
    }

    /// `worker` ended on its own in an orderly way; it is not watched any more.
    pub fn ended(&self, worker: Worker) {
        self.hearts[worker as usize]
            .ended
            .store(true, Ordering::Release);
    }

    /// Records `fault` unless one is known already (the first one is the cause).
    pub fn report(&self, fault: Fault) {
        let mut slot = match self.fault.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        if slot.is_none() {
            log::error!("{fault}: stopping the service");
            *slot = Some(fault);
        }
        self.fault_seen.store(true, Ordering::Release);
    }

    /// Whether a fault is known. One atomic load: the control thread asks every wake-up.
    #[inline]
    pub fn has_fault(&self) -> bool {
        self.fault_seen.load(Ordering::Acquire)
    }

    pub fn fault(&self) -> Option<Fault> {
        match self.fault.lock() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The first worker (other than the control thread) found dead or stalled at `now_ns`.
    pub fn examine(&self, now_ns: u64) -> Option<Fault> {
        if let Some(fault) = panic_seen_by_hook() {
            return Some(fault);
        }
        for worker in WORKERS {
            if worker == Worker::Control {
                continue;
            }
            let heart = &self.hearts[worker as usize];
            if heart.ended.load(Ordering::Acquire) {
                continue;
            }
            let busy_since = heart.busy_since_ns.load(Ordering::Acquire);
            let (since, limit, what) = if busy_since != 0 {
                (busy_since, self.limits.busy_ns[worker as usize], "busy for")
            } else {
                (
                    heart.last_ns.load(Ordering::Relaxed),
                    self.limits.idle_ns[worker as usize],
                    "no check-in for",
                )
            };
            let silent = now_ns.saturating_sub(since);
            if limit > 0 && silent > limit {
                return Some(Fault {
                    worker: Some(worker),
                    kind: FaultKind::Stalled,
                    detail: format!(
                        "{what} {} ms (limit {} ms)",
                        silent / 1_000_000,
                        limit / 1_000_000
                    ),
                });
            }
        }
        None
    }

    /// How long ago the control thread checked in.
    pub fn control_silence_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(
            self.hearts[Worker::Control as usize]
                .last_ns
                .load(Ordering::Relaxed),
        )
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_string()
    }
}

thread_local! {
    /// The worker whose guarded work runs on this thread, for the panic hook (Zenoh's
    /// threads run the callbacks).
    static GUARDED_WORKER: std::cell::Cell<Option<Worker>> = const { std::cell::Cell::new(None) };
}

/// The first panic anywhere in the process, once [`install_panic_hook`] ran.
static HOOKED_PANIC: OnceLock<Fault> = OnceLock::new();

/// Makes a panic on any thread of the process (one not caught by [`Supervision::guard`]
/// too: a Zenoh runtime thread, a thread of the model) a fault of every running service.
/// For the binary; the previous hook still prints the message.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Recorded before the previous hook prints, which can take seconds (a backtrace is
        // symbolised), so the fault is known at once rather than taken for a stall.
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let message = panic_text(info.payload());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let worker = GUARDED_WORKER
            .try_with(std::cell::Cell::get)
            .ok()
            .flatten()
            .or_else(|| Worker::of_thread(name));
        let _ = HOOKED_PANIC.set(Fault {
            worker,
            kind: FaultKind::Panicked,
            detail: format!("{message} (thread `{name}`{location})"),
        });
        previous(info);
    }));
}

fn panic_seen_by_hook() -> Option<Fault> {
    HOOKED_PANIC.get().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "fault-injection")]
    use crate::fault_injection::{FaultInjection, InjectedFault};
    use std::sync::Arc;

    /// The bundled service's camera wait (500 ms stall timeout) and 10 Hz control rate.
    fn limits(ms: u64) -> Limits {
        Limits::new(ms * 1_000_000, 500_000_000, 100_000_000)
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn injection_syntax() {
        let parsed: FaultInjection = "publisher:stall:2000:1000".parse().unwrap();
        assert_eq!(
            parsed,
            FaultInjection {
                worker: Worker::Publisher,
                fault: InjectedFault::Stall(Some(Duration::from_secs(1))),
                after: Duration::from_secs(2),
            }
        );
        let parsed: FaultInjection = "callback:panic:0".parse().unwrap();
        assert_eq!(
            (parsed.worker, parsed.fault),
            (Worker::Callbacks, InjectedFault::Panic)
        );
        for bad in [
            "",
            "publisher",
            "publisher:panic",
            "publisher:explode:10",
            "nobody:panic:10",
            "publisher:panic:10:5",
            "capture:stall:x",
        ] {
            let err = bad.parse::<FaultInjection>().unwrap_err();
            assert!(err.contains("<worker>:panic:<after_ms>"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_silent_worker_is_a_stall_and_a_busy_one_gets_its_busy_limit() {
        let supervision = Supervision::new(limits(1000));
        let start = clock::monotonic_ns();
        for worker in WORKERS {
            supervision.check_in(worker);
        }
        assert_eq!(supervision.examine(start + 500_000_000), None);
        // Every worker went silent: a stall once the first limit passed.
        let fault = supervision.examine(start + 1_500_000_000).unwrap();
        assert_eq!(fault.kind, FaultKind::Stalled);
        assert!(fault.worker.is_some());
        assert!(fault.detail.contains("limit 1000 ms"), "{fault}");

        // A prediction running for 30 s is not a stall; one running for 61 s is.
        let supervision = Arc::new(Supervision::new(limits(1000)));
        let (entered_tx, entered_rx) = crossbeam::channel::bounded(1);
        let (release_tx, release_rx) = crossbeam::channel::bounded::<()>(1);
        let busy = {
            let supervision = Arc::clone(&supervision);
            std::thread::spawn(move || {
                supervision.busy(Worker::Inference, || {
                    entered_tx.send(clock::monotonic_ns()).unwrap();
                    release_rx.recv().unwrap();
                });
            })
        };
        let entered = entered_rx.recv().unwrap();
        let only_inference = |now| {
            for worker in WORKERS {
                if worker != Worker::Inference {
                    supervision.hearts[worker as usize]
                        .last_ns
                        .store(now, Ordering::Relaxed);
                }
            }
            supervision.examine(now)
        };
        assert_eq!(only_inference(entered + 30_000_000_000), None);
        let fault = only_inference(entered + 61_000_000_000).unwrap();
        assert_eq!(
            (fault.worker, fault.kind),
            (Some(Worker::Inference), FaultKind::Stalled)
        );
        release_tx.send(()).unwrap();
        busy.join().unwrap();
    }

    #[test]
    fn an_ended_worker_is_not_watched_and_the_control_thread_is_not_a_stall() {
        let supervision = Supervision::new(limits(1000));
        supervision.ended(Worker::Capture);
        let now = clock::monotonic_ns() + 5_000_000_000;
        for worker in [Worker::Inference, Worker::Publisher, Worker::Status] {
            supervision.hearts[worker as usize]
                .last_ns
                .store(now, Ordering::Relaxed);
        }
        // Capture ended, callbacks idle, control silent: no fault (the watchdog pings say it).
        assert_eq!(supervision.examine(now), None);
        assert!(supervision.control_silence_ns(now) >= 5_000_000_000);
    }

    #[test]
    fn a_panic_becomes_the_first_fault() {
        let supervision = Supervision::new(limits(1000));
        assert!(!supervision.has_fault());
        let out = supervision.guard(Worker::Publisher, || -> u32 { panic!("boom") });
        assert_eq!(out, None);
        assert!(supervision.has_fault());
        supervision.report(Fault {
            worker: Some(Worker::Status),
            kind: FaultKind::Stalled,
            detail: "later".into(),
        });
        let fault = supervision.fault().unwrap();
        assert_eq!(fault.worker, Some(Worker::Publisher));
        assert_eq!(fault.to_string(), "publisher thread panicked: boom");
        assert_eq!(supervision.guard(Worker::Status, || 7), Some(7));
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn an_injected_panic_fires_once_after_its_delay() {
        let injection: FaultInjection = "status:panic:0".parse().unwrap();
        let supervision = Supervision::new(limits(1000)).with_fault_injection(Some(injection));
        // Other workers are not affected.
        supervision.check_in(Worker::Publisher);
        assert_eq!(
            supervision.guard(Worker::Status, || supervision.check_in(Worker::Status)),
            None
        );
        assert_eq!(
            supervision.guard(Worker::Status, || supervision.check_in(Worker::Status)),
            Some(())
        );
        let late: FaultInjection = "status:panic:600000".parse().unwrap();
        let supervision = Supervision::new(limits(1000)).with_fault_injection(Some(late));
        assert_eq!(
            supervision.guard(Worker::Status, || supervision.check_in(Worker::Status)),
            Some(())
        );
    }
}
