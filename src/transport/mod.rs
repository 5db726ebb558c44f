//! Transport: the checks a driver makes before acting on a command record ([`guard`]; the
//! record itself is [`crate::control::command_record`]) and everything Zenoh ([`zenoh_io`]): the session, the command publisher,
//! status, the liveliness token and the instruction, arm and e-stop subscribers; and what the
//! session's configuration exposes ([`security`]).

pub mod guard;
pub mod security;
pub mod zenoh_io;

/// A Zenoh error as one line, without the source locations (` at /…/x.rs:61.`) Zenoh
/// appends to its messages.
pub fn zenoh_error_text(error: &dyn std::fmt::Display) -> String {
    let mut text = error.to_string().replace('\n', " ");
    while let Some(at) = text.find(" at /") {
        let rest = &text[at..];
        let Some(rs) = rest.find(".rs:") else { break };
        let digits = rest[rs + 4..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - rs - 4);
        let mut end = at + rs + 4 + digits;
        if text[end..].starts_with('.') {
            end += 1;
        }
        text.replace_range(at..end, "");
    }
    text.trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn zenoh_source_locations_are_dropped() {
        let raw = "Can not create a new TCP listener bound to tcp/127.0.0.1:1: [127.0.0.1:1: \
                   Address already in use (os error 98) at /root/.cargo/registry/src/x/\
                   zenoh-link-commons-1.10.2/src/tcp.rs:61.]";
        assert_eq!(
            super::zenoh_error_text(&raw),
            "Can not create a new TCP listener bound to tcp/127.0.0.1:1: [127.0.0.1:1: \
             Address already in use (os error 98)]"
        );
    }
}
