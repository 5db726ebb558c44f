//! Transport: the command record ([`record`]) and everything Zenoh ([`zenoh_io`]): the
//! session, the command publisher, status, the liveliness token and the instruction and
//! e-stop subscribers.

pub mod record;

/// A Zenoh error as one line, without the source location Zenoh appends to its messages.
pub fn zenoh_error_text(error: &dyn std::fmt::Display) -> String {
    let text = error.to_string();
    let text = match text.rfind(" at /") {
        Some(at) if text[at..].contains(".rs:") => text[..at].to_string(),
        _ => text,
    };
    text.trim_end_matches('.').replace('\n', " ")
}
