//! The control stage: the fixed-rate loop, the ACT/HOLD/STOP state machine and the safety
//! filter. After start the tick allocates nothing, takes no lock and never panics.

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

pub mod clock;
pub mod estop_store;
pub mod handoff;
pub mod heartbeat;
pub mod limits;
pub mod safety;
pub mod stats;
pub mod supervisor;
pub mod tap;
pub mod tick_loop;
