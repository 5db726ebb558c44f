//! The service: wires the capture thread, the inference worker, the control loop, the
//! publisher and the status reporter together (DESIGN.md §2), with real-time set-up,
//! signals and systemd notification.

pub mod notify;
pub mod signals;
