//! A test hook (feature `fault-injection`, which the service's release build leaves off):
//! `VLA_RT_TEST_FAULT` makes one worker panic or stall at a check-in, so that tests can watch
//! the supervision answer with STOP and exit code 3.

use std::time::Duration;

use crate::heartbeat::Worker;

/// The environment variable that arms a [`FaultInjection`] in `vla-rt run`.
pub const FAULT_INJECTION_ENV: &str = "VLA_RT_TEST_FAULT";

/// A test hook: `<worker>:panic:<after_ms>` or `<worker>:stall:<after_ms>[:<for_ms>]`
/// makes the worker panic, or stop checking in (for `for_ms`, or for good), at its first
/// check-in `after_ms` after the service started. `<worker>` is one of `control`, `capture`,
/// `inference`, `publisher`, `status`, `callback` (fires in the next instruction or e-stop
/// callback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultInjection {
    pub worker: Worker,
    pub fault: InjectedFault,
    pub after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFault {
    Panic,
    /// Stop checking in for this long (`None`: for good).
    Stall(Option<Duration>),
}

impl std::str::FromStr for FaultInjection {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "`{text}` is not <worker>:panic:<after_ms> or <worker>:stall:<after_ms>[:<for_ms>] \
                 (workers: control, capture, inference, publisher, status, callback)"
            )
        };
        let parts: Vec<&str> = text.trim().split(':').collect();
        let ms = |s: &str| s.parse::<u64>().map(Duration::from_millis).ok();
        let worker = parts.first().and_then(|w| Worker::from_name(w));
        let after = parts.get(2).and_then(|s| ms(s));
        let (Some(worker), Some(after)) = (worker, after) else {
            return Err(usage());
        };
        let fault = match (parts.get(1).copied(), parts.len()) {
            (Some("panic"), 3) => InjectedFault::Panic,
            (Some("stall"), 3) => InjectedFault::Stall(None),
            (Some("stall"), 4) => InjectedFault::Stall(Some(ms(parts[3]).ok_or_else(usage)?)),
            _ => return Err(usage()),
        };
        Ok(Self {
            worker,
            fault,
            after,
        })
    }
}
