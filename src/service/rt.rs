//! Real-time set-up: locked memory (`mlockall`) for the process and SCHED_FIFO for the
//! threads on the command path. What happens when the system refuses is the config's call:
//! `realtime = "try"` warns and carries on, `"require"` refuses to start.

use crate::config::RealtimeMode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("real-time set-up ({what}): {message}")]
pub struct RealtimeError {
    pub what: &'static str,
    pub message: String,
}

/// Locks memory so that page faults never stall the control thread: everything mapped now is
/// made resident and locked, and later mappings are locked page by page as they are first
/// touched (`MCL_ONFAULT`). Locking later mappings whole would make every thread stack and
/// allocator arena Zenoh creates on a reconnect resident in full, 2 MiB at a time, for pages
/// that are never used; the control and publisher threads touch their own stacks at start
/// ([`prefault_stack`]) and allocate nothing after it. A kernel without `MCL_ONFAULT` (before
/// Linux 4.4) gets `MCL_FUTURE` alone.
pub fn lock_memory() -> Result<(), RealtimeError> {
    let lock = |flags: libc::c_int| {
        // SAFETY: mlockall has no memory-safety preconditions; it only changes paging policy.
        if unsafe { libc::mlockall(flags) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let refused = |e: std::io::Error| RealtimeError {
        what: "mlockall",
        message: e.to_string(),
    };
    lock(libc::MCL_CURRENT).map_err(refused)?;
    match lock(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            lock(libc::MCL_CURRENT | libc::MCL_FUTURE).map_err(refused)
        }
        other => other.map_err(refused),
    }
}

/// How much of a real-time thread's stack [`prefault_stack`] touches: far more than a tick's
/// deepest call needs, and well inside the 2 MiB a Rust thread gets.
pub const PREFAULT_STACK_BYTES: usize = 256 * 1024;

/// Touches the next [`PREFAULT_STACK_BYTES`] of the calling thread's stack, so that under
/// `MCL_ONFAULT` those pages are resident and locked before the thread's first tick.
pub fn prefault_stack() {
    let mut pages = [0u8; PREFAULT_STACK_BYTES];
    // Through black_box, so that the writes are not optimised away.
    std::hint::black_box(&mut pages);
}

/// Puts the calling thread under SCHED_FIFO at `priority` (1-99).
pub fn make_current_thread_fifo(priority: i32) -> Result<(), RealtimeError> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `pthread_self()` is the calling thread, alive for the duration of the call, and
    // `param` is a valid sched_param.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        return Err(RealtimeError {
            what: "SCHED_FIFO",
            message: format!(
                "priority {priority}: {} (needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least {priority})",
                std::io::Error::from_raw_os_error(rc)
            ),
        });
    }
    Ok(())
}

/// Applies `mode` to one step of the set-up: `Ok` when it worked or may be skipped (after a
/// warning), `Err` when `require` makes the failure fatal.
pub fn apply(
    mode: RealtimeMode,
    step: impl FnOnce() -> Result<(), RealtimeError>,
) -> Result<bool, RealtimeError> {
    match mode {
        RealtimeMode::Off => Ok(false),
        RealtimeMode::Try => match step() {
            Ok(()) => Ok(true),
            Err(e) => {
                log::warn!("{e}; running without it (control.realtime = \"try\")");
                Ok(false)
            }
        },
        RealtimeMode::Require => step().map(|()| true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Result<(), RealtimeError> {
        Err(RealtimeError {
            what: "SCHED_FIFO",
            message: "Operation not permitted".into(),
        })
    }

    #[test]
    fn modes_decide_what_a_refusal_means() {
        assert_eq!(apply(RealtimeMode::Off, refused), Ok(false));
        assert_eq!(apply(RealtimeMode::Try, refused), Ok(false));
        assert_eq!(apply(RealtimeMode::Try, || Ok(())), Ok(true));
        assert!(apply(RealtimeMode::Require, refused).is_err());
    }

    #[test]
    fn invalid_priority_is_refused_with_its_value() {
        let err = make_current_thread_fifo(0).unwrap_err();
        assert!(err.to_string().contains("priority 0"), "{err}");
    }
}
