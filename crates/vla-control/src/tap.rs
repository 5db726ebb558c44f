//! A copy of every command for whoever keeps a record of the session (the MCAP recorder).
//! The control thread calls the tap once per tick, right after handing the command to the
//! publisher: an implementation must return at once, allocate nothing, take no lock and never
//! block; when it cannot keep up it drops and counts.

use crate::command_record::RECORD_LEN;

pub trait CommandTap: Send + Sync {
    /// `record` is the encoded command as published; `stop_cause` names why a STOP is one
    /// (`"none"` otherwise); `chunk_step` is the step, within its chunk, an ACT executes.
    fn command(&self, record: &[u8; RECORD_LEN], stop_cause: &'static str, chunk_step: Option<u32>);
}
