//! What an arm driver should check before it acts on a command record, beyond the record's
//! own integrity: its age, the continuity of `seq`, and STOP latching until the next ACT.
//! The example drivers (`examples/arm_driver.rs`, `examples/arm_driver.py`,
//! `examples/cpp/vla_command.hpp`'s `vla::Guard`) all follow these rules:
//!
//! - **Age.** A record older than the maximum age when it arrives (receive time minus its
//!   tick time, both CLOCK_REALTIME: the clocks of the service and the driver must be
//!   synchronised, e.g. by PTP or chrony, when they run on different machines) halts the arm.
//!   The maximum age is two tick periods unless the driver sets one; the period is learned
//!   from the records themselves, as the smallest tick-time step between two consecutive
//!   `seq` (a skipped slot only makes a step longer). Until a period is known, no record can
//!   be judged and the arm stays halted.
//! - **Gaps.** Records missing for longer than the maximum age (the tick-time span between
//!   the last record seen and the next one) halt the arm; one lost record within it does not.
//!   A `seq` that does not increase means a new stream (a restarted service): the arm halts
//!   and the period is learned again.
//! - **Silence.** No record for longer than the maximum age halts the arm.
//! - **STOP latches.** After STOP (or any halt), HOLD keeps the arm halted; only an ACT that
//!   passes the checks moves it again. The service itself leaves STOP only through a new
//!   `arm` request, so an ACT after a STOP comes from a newer arming.

use crate::config::ACTION_DIM;
use crate::control::command_record::CommandRecord;
use crate::control::ControlState;

/// Why the arm must halt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaltReason {
    /// A STOP command.
    Stop,
    /// The record was older than the maximum age when it arrived.
    Stale,
    /// Records were missing for longer than the maximum age.
    Gap,
    /// `seq` did not increase: a new stream (the service restarted).
    Restart,
    /// No period learned yet: the record's age cannot be judged.
    Unjudged,
    /// No record for longer than the maximum age.
    Silence,
    /// The payload did not decode (length, CRC, magic, version, state).
    BadRecord,
}

impl HaltReason {
    /// The name the example drivers print (and `vla::describe` returns in C++).
    pub fn name(self) -> &'static str {
        match self {
            HaltReason::Stop => "stop",
            HaltReason::Stale => "stale",
            HaltReason::Gap => "gap",
            HaltReason::Restart => "restart",
            HaltReason::Unjudged => "unjudged",
            HaltReason::Silence => "silence",
            HaltReason::BadRecord => "bad-record",
        }
    }
}

/// What to do with one record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Carry out this ACT's deltas.
    Move([f32; ACTION_DIM]),
    /// Keep still (HOLD); a halted arm stays halted.
    Hold,
    /// Halt the arm; it stays halted until an ACT passes the checks.
    Halt(HaltReason),
}

/// The checks of one driver, fed every record (or undecodable payload) as it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandGuard {
    fixed_max_age_ns: Option<u64>,
    period_ns: Option<u64>,
    /// `seq` and tick time of the newest record seen.
    last: Option<(u64, u64)>,
    halted: bool,
}

impl CommandGuard {
    /// `max_age_ns`: the oldest record to act on; `None` for two learned tick periods.
    /// The arm starts halted.
    pub fn new(max_age_ns: Option<u64>) -> Self {
        Self {
            fixed_max_age_ns: max_age_ns,
            period_ns: None,
            last: None,
            halted: true,
        }
    }

    /// The maximum age in use; `None` until a period is learned (without a fixed one).
    pub fn max_age_ns(&self) -> Option<u64> {
        self.fixed_max_age_ns
            .or(self.period_ns.map(|p| p.saturating_mul(2)))
    }

    pub fn halted(&self) -> bool {
        self.halted
    }

    /// Judges `record`, received at `now_unix_ns` (CLOCK_REALTIME).
    pub fn check(&mut self, record: &CommandRecord, now_unix_ns: u64) -> Verdict {
        let mut sequence_problem = None;
        if let Some((seq, tick_ns)) = self.last {
            if record.seq <= seq {
                self.period_ns = None;
                sequence_problem = Some(HaltReason::Restart);
            } else if record.seq == seq + 1 {
                let step = record.tick_time_ns.saturating_sub(tick_ns);
                if step > 0 {
                    self.period_ns = Some(self.period_ns.map_or(step, |p| p.min(step)));
                }
            } else {
                let span = record.tick_time_ns.saturating_sub(tick_ns);
                if self.max_age_ns().is_none_or(|max| span > max) {
                    sequence_problem = Some(HaltReason::Gap);
                }
            }
        }
        self.last = Some((record.seq, record.tick_time_ns));
        let age_problem = match self.max_age_ns() {
            None => Some(HaltReason::Unjudged),
            Some(max) if now_unix_ns.saturating_sub(record.tick_time_ns) > max => {
                Some(HaltReason::Stale)
            }
            Some(_) => None,
        };
        let reason = if record.state == ControlState::Stop {
            Some(HaltReason::Stop)
        } else {
            sequence_problem.or(age_problem)
        };
        match (reason, record.state) {
            (Some(reason), _) => {
                self.halted = true;
                Verdict::Halt(reason)
            }
            (None, ControlState::Act) => {
                self.halted = false;
                Verdict::Move(record.action)
            }
            (None, _) => Verdict::Hold,
        }
    }

    /// A payload that did not decode: halt.
    pub fn bad_record(&mut self) -> Verdict {
        self.halted = true;
        Verdict::Halt(HaltReason::BadRecord)
    }

    /// Called when no record came for a while: halts (once) when the newest record is older
    /// than the maximum age at `now_unix_ns`. `Some` when it just halted.
    pub fn check_silence(&mut self, now_unix_ns: u64) -> Option<HaltReason> {
        if self.halted {
            return None;
        }
        let (_, tick_ns) = self.last?;
        let max = self.max_age_ns()?;
        if now_unix_ns.saturating_sub(tick_ns) > max {
            self.halted = true;
            return Some(HaltReason::Silence);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const T0: u64 = 1_800_000_000_000_000_000;
    const PERIOD: u64 = 100 * MS;

    fn record(state: ControlState, seq: u64) -> CommandRecord {
        CommandRecord {
            state,
            seq,
            tick_time_ns: T0 + seq * PERIOD,
            capture_time_ns: 0,
            action: [0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        }
    }

    /// Received 5 ms after its tick.
    fn on_time(guard: &mut CommandGuard, state: ControlState, seq: u64) -> Verdict {
        let r = record(state, seq);
        guard.check(&r, r.tick_time_ns + 5 * MS)
    }

    fn moved(verdict: Verdict) -> bool {
        matches!(verdict, Verdict::Move(_))
    }

    #[test]
    fn nothing_moves_before_the_period_is_known() {
        let mut guard = CommandGuard::new(None);
        assert!(guard.halted());
        assert_eq!(
            on_time(&mut guard, ControlState::Act, 0),
            Verdict::Halt(HaltReason::Unjudged)
        );
        assert!(moved(on_time(&mut guard, ControlState::Act, 1)));
        assert_eq!(guard.max_age_ns(), Some(200 * MS));
        assert!(!guard.halted());
    }

    #[test]
    fn an_old_record_halts_and_a_fresh_act_resumes() {
        let mut guard = CommandGuard::new(None);
        on_time(&mut guard, ControlState::Hold, 0);
        on_time(&mut guard, ControlState::Act, 1);
        // Arrives 250 ms after its tick: over two periods.
        let late = record(ControlState::Act, 2);
        assert_eq!(
            guard.check(&late, late.tick_time_ns + 250 * MS),
            Verdict::Halt(HaltReason::Stale)
        );
        assert!(guard.halted());
        // 200 ms is still within the limit.
        let edge = record(ControlState::Act, 3);
        assert!(moved(guard.check(&edge, edge.tick_time_ns + 200 * MS)));
    }

    #[test]
    fn one_lost_record_is_tolerated_and_a_longer_gap_halts() {
        let mut guard = CommandGuard::new(None);
        on_time(&mut guard, ControlState::Act, 0);
        on_time(&mut guard, ControlState::Act, 1);
        // seq 2 lost: 200 ms between 1 and 3, not more than the maximum age.
        assert!(moved(on_time(&mut guard, ControlState::Act, 3)));
        // seq 4 and 5 lost: 300 ms.
        assert_eq!(
            on_time(&mut guard, ControlState::Act, 6),
            Verdict::Halt(HaltReason::Gap)
        );
        assert!(moved(on_time(&mut guard, ControlState::Act, 7)));
    }

    #[test]
    fn stop_latches_through_hold_until_act() {
        let mut guard = CommandGuard::new(None);
        on_time(&mut guard, ControlState::Act, 0);
        assert!(moved(on_time(&mut guard, ControlState::Act, 1)));
        assert_eq!(
            on_time(&mut guard, ControlState::Stop, 2),
            Verdict::Halt(HaltReason::Stop)
        );
        assert_eq!(on_time(&mut guard, ControlState::Hold, 3), Verdict::Hold);
        assert!(guard.halted());
        assert_eq!(on_time(&mut guard, ControlState::Hold, 4), Verdict::Hold);
        assert!(guard.halted());
        assert!(moved(on_time(&mut guard, ControlState::Act, 5)));
        assert!(!guard.halted());
        // A stale STOP still stops.
        let old_stop = record(ControlState::Stop, 6);
        assert_eq!(
            guard.check(&old_stop, old_stop.tick_time_ns + 10_000 * MS),
            Verdict::Halt(HaltReason::Stop)
        );
    }

    #[test]
    fn a_restarted_stream_halts_and_learns_its_period_again() {
        let mut guard = CommandGuard::new(None);
        on_time(&mut guard, ControlState::Act, 10);
        assert!(moved(on_time(&mut guard, ControlState::Act, 11)));
        assert_eq!(
            on_time(&mut guard, ControlState::Act, 0),
            Verdict::Halt(HaltReason::Restart)
        );
        assert_eq!(guard.max_age_ns(), None);
        assert!(moved(on_time(&mut guard, ControlState::Act, 1)));
        // A repeated seq is no new record either.
        assert_eq!(
            on_time(&mut guard, ControlState::Act, 1),
            Verdict::Halt(HaltReason::Restart)
        );
    }

    #[test]
    fn silence_and_bad_records_halt() {
        let mut guard = CommandGuard::new(None);
        on_time(&mut guard, ControlState::Act, 0);
        on_time(&mut guard, ControlState::Act, 1);
        let last_tick = record(ControlState::Act, 1).tick_time_ns;
        assert_eq!(guard.check_silence(last_tick + 150 * MS), None);
        assert_eq!(
            guard.check_silence(last_tick + 201 * MS),
            Some(HaltReason::Silence)
        );
        // Reported once.
        assert_eq!(guard.check_silence(last_tick + 900 * MS), None);
        assert!(moved(on_time(&mut guard, ControlState::Act, 2)));
        assert_eq!(guard.bad_record(), Verdict::Halt(HaltReason::BadRecord));
        assert!(guard.halted());
    }

    #[test]
    fn a_fixed_maximum_age_judges_the_first_record() {
        let mut guard = CommandGuard::new(Some(50 * MS));
        let r = record(ControlState::Act, 0);
        assert!(moved(guard.check(&r, r.tick_time_ns + 40 * MS)));
        let r = record(ControlState::Act, 1);
        assert_eq!(
            guard.check(&r, r.tick_time_ns + 60 * MS),
            Verdict::Halt(HaltReason::Stale)
        );
    }
}
