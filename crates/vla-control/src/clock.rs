//! The two clocks of the runtime: CLOCK_MONOTONIC for schedules and ages, CLOCK_REALTIME for
//! the timestamps that leave the process. Nothing here allocates.

const NS_PER_S: u64 = 1_000_000_000;

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks used here exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(NS_PER_S)
        .saturating_add(ts.tv_nsec as u64)
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in nanoseconds since the Unix epoch.
pub fn realtime_ns() -> u64 {
    read(libc::CLOCK_REALTIME)
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline_ns` (absolute, so wake-up errors never
/// accumulate); returns at once if it has passed. Interrupted sleeps are resumed.
pub fn sleep_until_monotonic(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / NS_PER_S) as libc::time_t,
        tv_nsec: (deadline_ns % NS_PER_S) as libc::c_long,
    };
    loop {
        // SAFETY: `ts` is a valid timespec; with TIMER_ABSTIME the remainder pointer is unused
        // and may be null.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_an_absolute_deadline() {
        let start = monotonic_ns();
        let deadline = start + 5_000_000;
        sleep_until_monotonic(deadline);
        assert!(monotonic_ns() >= deadline);
        // A deadline in the past returns at once.
        sleep_until_monotonic(start);
    }

    #[test]
    fn realtime_is_after_2020() {
        assert!(realtime_ns() > 1_577_836_800 * NS_PER_S);
    }
}
