//! # vla-control
//!
//! The real-time core of vla-rt: the fixed-rate loop, the ACT/HOLD/STOP state machine, the
//! safety filter and motion limits, pacing, heartbeats, and the 64-byte command record.
//! After start the tick allocates nothing, takes no lock and never panics.
//!
//! It knows no transport, camera or init system: the service injects them through
//! [`tick_loop::FrameHealth`], [`tick_loop::TickNotifier`], a termination check and the
//! [`handoff::CommandOutbox`] (ARCHITECTURE.md §1).

/// Number of action dimensions a command carries (ARCHITECTURE.md §9: dx, dy, dz, droll, dpitch,
/// dyaw, gripper).
pub const ACTION_DIM: usize = 7;

/// What a command tells the arm (ARCHITECTURE.md §5); the discriminant is the wire value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[repr(u16)]
pub enum ControlState {
    /// A fresh, filtered action.
    Act = 0,
    /// No fresh action in time: zero deltas, gripper kept.
    Hold = 1,
    /// E-stop, dead camera, repeated policy failure or shutdown.
    Stop = 2,
}

impl ControlState {
    pub fn from_wire(value: u16) -> Option<Self> {
        match value {
            0 => Some(Self::Act),
            1 => Some(Self::Hold),
            2 => Some(Self::Stop),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Act => "ACT",
            Self::Hold => "HOLD",
            Self::Stop => "STOP",
        }
    }
}

pub mod chunk;
pub mod clock;
pub mod command_record;
pub mod estop_store;
#[cfg(feature = "fault-injection")]
pub mod fault_injection;
pub mod handoff;
pub mod heartbeat;
pub mod limits;
pub mod safety;
pub mod safety_config;
pub mod stats;
pub mod supervisor;
pub mod tap;
pub mod tick_loop;
