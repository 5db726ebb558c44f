//! Loopback TCP ports for the services under test, for the tests of both packages (included
//! with `#[path]`).
//!
//! A port taken by binding port 0 and releasing it is in the kernel's ephemeral range, where
//! any outgoing connection (a Zenoh client's, say) or another port-0 bind may take it before
//! the service binds it. Ports here come from below that range, which the kernel never hands
//! out on its own, and each is reserved with an exclusive `flock` on a file of its own in
//! the temporary folder, held until the test process exits: no two test processes (of either
//! package) get the same port, and within a process each port is given out once.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

/// The first port handed out; the last is the one below the kernel's ephemeral range.
const FIRST: u16 = 20_000;

/// The held reservations and the next port to try.
static RESERVED: Mutex<(Vec<File>, u32)> = Mutex::new((Vec::new(), 0));

/// The lowest port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A loopback port no other test process holds and nothing listens on, reserved for this
/// process until it exits.
pub fn free_port() -> u16 {
    let last = ephemeral_low().saturating_sub(1);
    assert!(last > FIRST, "the ephemeral port range starts at {last}");
    let span = u32::from(last - FIRST) + 1;
    let dir = std::env::temp_dir().join("vla-rt-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    // Processes start at different places, so that they rarely contend for a port.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = FIRST + ((start + reserved.1) % span) as u16;
        reserved.1 += 1;
        let Ok(file) = File::create(dir.join(format!("{port}.lock"))) else {
            continue;
        };
        // SAFETY: `flock` on a descriptor this function owns (kept open in `RESERVED`).
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        // Held by no test process; something else may still listen there.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        reserved.0.push(file);
        return port;
    }
    panic!("no free port from {FIRST} to {last}");
}
