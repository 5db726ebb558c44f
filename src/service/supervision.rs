//! The watchdog thread (`vla-watchdog`): it reads the workers' heartbeats
//! ([`crate::control::heartbeat`]) every 50 ms or faster and
//!
//! - reports the first worker found dead or stalled as the service's [`Fault`]: the control
//!   thread sees it at its next wake-up (within 100 ms), publishes STOP with the cause
//!   `worker fault` and ends; the service then shuts down in order and `vla-rt run` exits
//!   with code 3, so that systemd restarts it;
//! - sends systemd's `WATCHDOG=1` on its own schedule (every quarter of `WATCHDOG_USEC`,
//!   whatever the control rate, from `READY=1` on), and only while no fault is known and the control thread
//!   checked in within `min(worker_timeout_ms, WATCHDOG_USEC / 2)`. A stalled control thread
//!   cannot publish its own STOP: withholding the pings lets systemd kill and restart the
//!   process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::capture::thread::CaptureWatch;
use crate::control::clock;
use crate::control::heartbeat::{panic_text, Fault, FaultKind, Limits, Supervision, Worker};
use crate::service::notify::SystemdNotifier;

/// A capture thread's heartbeat: the camera's worker (`Capture` or `WristCapture`).
pub struct CaptureHeartbeat(pub Arc<Supervision>, pub Worker);

impl CaptureWatch for CaptureHeartbeat {
    fn alive(&self) {
        self.0.check_in(self.1);
    }

    fn ended(&self) {
        self.0.ended(self.1);
    }

    fn run(&self, capture: &mut dyn FnMut()) {
        let _ = self.0.guard(self.1, capture);
    }
}

/// How often the watchdog thread looks at the heartbeats (at most).
const EXAMINE_INTERVAL: Duration = Duration::from_millis(50);

/// The `vla-watchdog` thread: finds faults and sends systemd's `WATCHDOG=1`.
pub struct WatchdogThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl WatchdogThread {
    /// Starts watching `supervision` (every worker counts as just checked in); `notifier`
    /// gets the pings when it has a watchdog period (`WATCHDOG_USEC`).
    pub fn spawn(
        supervision: Arc<Supervision>,
        notifier: Option<SystemdNotifier>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        supervision.restart_clocks(clock::monotonic_ns());
        let handle = std::thread::Builder::new()
            .name("vla-watchdog".into())
            .spawn(move || {
                let watching = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    watch(&supervision, notifier, &stop_flag);
                }));
                if let Err(payload) = watching {
                    supervision.report(Fault {
                        worker: None,
                        kind: FaultKind::Panicked,
                        detail: format!("watchdog: {}", panic_text(payload.as_ref())),
                    });
                }
            })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

impl Drop for WatchdogThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// When pings are due, and how fresh the control thread's check-in must be for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingSchedule {
    pub interval_ns: u64,
    pub control_limit_ns: u64,
}

impl PingSchedule {
    /// Pings every quarter of `WATCHDOG_USEC`, so that two pings are never more than half of
    /// it apart even when one round is late; the control thread must have checked in within
    /// its limit and within half of `WATCHDOG_USEC`.
    pub fn new(watchdog_usec: u64, limits: &Limits) -> Self {
        let watchdog_ns = watchdog_usec.saturating_mul(1_000);
        Self {
            interval_ns: (watchdog_ns / 4).max(1),
            control_limit_ns: limits.control_ns().min(watchdog_ns / 2),
        }
    }
}

fn watch(supervision: &Supervision, mut notifier: Option<SystemdNotifier>, stop: &AtomicBool) {
    let schedule = notifier
        .as_ref()
        .and_then(SystemdNotifier::watchdog_usec)
        .map(|usec| PingSchedule::new(usec, supervision.limits()));
    let round = schedule.map_or(EXAMINE_INTERVAL, |s| {
        EXAMINE_INTERVAL.min(Duration::from_nanos((s.interval_ns / 2).max(1_000_000)))
    });
    let mut last_ping_ns = 0u64;
    let mut control_stall_logged = false;
    while !stop.load(Ordering::Acquire) {
        let now = clock::monotonic_ns();
        if !supervision.has_fault() {
            if let Some(fault) = supervision.examine(now) {
                supervision.report(fault);
            }
        }
        if let (Some(schedule), Some(notifier)) = (schedule, notifier.as_mut()) {
            let control_fresh = supervision.control_silence_ns(now) <= schedule.control_limit_ns;
            if !control_fresh && !control_stall_logged {
                log::error!(
                    "control thread silent for {} ms: withholding WATCHDOG=1",
                    supervision.control_silence_ns(now) / 1_000_000
                );
            }
            control_stall_logged = !control_fresh;
            // Not before READY=1: the manager counts the watchdog from there.
            let healthy = control_fresh && !supervision.has_fault() && notifier.ready();
            if healthy && now.saturating_sub(last_ping_ns) >= schedule.interval_ns {
                notifier.watchdog();
                last_ping_ns = now;
            }
        }
        std::thread::park_timeout(round);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceConfig;

    fn limits(ms: u64) -> Limits {
        let mut config = ServiceConfig::builtin();
        config.control.worker_timeout_ms = ms;
        config.watchdog_limits()
    }

    #[test]
    fn pings_come_at_a_quarter_of_the_watchdog_period() {
        let schedule = PingSchedule::new(2_000_000, &limits(1000));
        assert_eq!(schedule.interval_ns, 500_000_000);
        assert_eq!(schedule.control_limit_ns, 1_000_000_000);
        let schedule = PingSchedule::new(400_000, &limits(1000));
        assert_eq!(schedule.interval_ns, 100_000_000);
        assert_eq!(schedule.control_limit_ns, 200_000_000);
    }
}
