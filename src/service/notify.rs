//! systemd notification (`sd_notify` protocol): from the control thread `READY=1` after the
//! first tick, `STATUS=...` once a second and `STOPPING=1` on shutdown; from the watchdog
//! thread ([`crate::service::supervision`]) `WATCHDOG=1`, on its own schedule. The socket is
//! connected once at start and every message is a pre-built byte string or formatted into a
//! stack buffer, so a tick never allocates.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {path}: {message}")]
    Socket { path: String, message: String },
    #[error("WATCHDOG_USEC `{value}` is not a number of microseconds")]
    WatchdogUsec { value: String },
}

pub struct SystemdNotifier {
    socket: UnixDatagram,
    /// `WATCHDOG_USEC`, when the manager watches this process.
    watchdog_usec: Option<u64>,
    last_status_ns: u64,
    ready_sent: bool,
    /// Set once `READY=1` went out, shared with the clones (the watchdog pings only after).
    ready_flag: Arc<AtomicBool>,
    /// Sends that failed (the manager went away); never fatal for the control loop.
    pub failed_sends: u64,
}

const STATUS_INTERVAL_NS: u64 = 1_000_000_000;

/// A `STATUS=` line built on the stack.
pub struct StatusLine {
    buffer: [u8; 192],
    len: usize,
}

impl Default for StatusLine {
    fn default() -> Self {
        Self {
            buffer: [0; 192],
            len: 0,
        }
    }
}

impl std::fmt::Write for StatusLine {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let bytes = s.as_bytes();
        let room = self.buffer.len() - self.len;
        let n = bytes.len().min(room);
        self.buffer[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        if n < bytes.len() {
            return Err(std::fmt::Error);
        }
        Ok(())
    }
}

impl StatusLine {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl SystemdNotifier {
    /// Connects to `NOTIFY_SOCKET` when the service manager set it; `None` otherwise.
    pub fn from_env() -> Result<Option<Self>, NotifyError> {
        let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let watchdog_usec = match std::env::var("WATCHDOG_USEC") {
            Ok(value) => {
                let for_us = std::env::var("WATCHDOG_PID")
                    .ok()
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_none_or(|pid| pid == std::process::id());
                let usec = value
                    .parse::<u64>()
                    .map_err(|_| NotifyError::WatchdogUsec { value })?;
                for_us.then_some(usec)
            }
            Err(_) => None,
        };
        Self::connect(&path, watchdog_usec).map(Some)
    }

    /// Connects to the socket at `path` (`@name` for an abstract socket).
    pub fn connect(path: &str, watchdog_usec: Option<u64>) -> Result<Self, NotifyError> {
        let socket_error = |e: std::io::Error| NotifyError::Socket {
            path: path.to_string(),
            message: e.to_string(),
        };
        let socket = UnixDatagram::unbound().map_err(socket_error)?;
        if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .map_err(socket_error)?;
            socket.connect_addr(&address).map_err(socket_error)?;
        } else {
            socket.connect(path).map_err(socket_error)?;
        }
        socket.set_nonblocking(true).map_err(socket_error)?;
        Ok(Self {
            socket,
            watchdog_usec: watchdog_usec.filter(|&us| us > 0),
            last_status_ns: 0,
            ready_sent: false,
            ready_flag: Arc::new(AtomicBool::new(false)),
            failed_sends: 0,
        })
    }

    fn send(&mut self, message: &[u8]) {
        if self.socket.send(message).is_err() {
            self.failed_sends += 1;
        }
    }

    /// A second sender on the same socket (for the watchdog thread).
    pub fn try_clone(&self) -> Result<Self, NotifyError> {
        let socket = self.socket.try_clone().map_err(|e| NotifyError::Socket {
            path: "NOTIFY_SOCKET".into(),
            message: e.to_string(),
        })?;
        Ok(Self {
            socket,
            watchdog_usec: self.watchdog_usec,
            last_status_ns: 0,
            ready_sent: self.ready_sent,
            ready_flag: Arc::clone(&self.ready_flag),
            failed_sends: 0,
        })
    }

    /// `WATCHDOG_USEC` when the service manager expects `WATCHDOG=1` from this process.
    pub fn watchdog_usec(&self) -> Option<u64> {
        self.watchdog_usec
    }

    /// Called by the control thread after every tick: `READY=1` after the first, and the
    /// `STATUS=` text `write_status` fills once a second.
    pub fn after_tick(&mut self, now_ns: u64, write_status: impl FnOnce(&mut StatusLine)) {
        if !self.ready_sent {
            self.send(b"READY=1");
            self.ready_sent = true;
            self.ready_flag.store(true, Ordering::Release);
        }
        if now_ns.saturating_sub(self.last_status_ns) >= STATUS_INTERVAL_NS {
            let mut line = StatusLine::default();
            let _ = std::fmt::Write::write_str(&mut line, "STATUS=");
            write_status(&mut line);
            let bytes = line.buffer;
            let len = line.len;
            self.send(&bytes[..len]);
            self.last_status_ns = now_ns;
        }
    }

    /// Whether `READY=1` went out (from this notifier or the one it was cloned from).
    pub fn ready(&self) -> bool {
        self.ready_flag.load(Ordering::Acquire)
    }

    /// `WATCHDOG=1`: everything checked in recently.
    pub fn watchdog(&mut self) {
        self.send(b"WATCHDOG=1");
    }

    pub fn stopping(&mut self) {
        self.send(b"STOPPING=1");
    }
}

impl vla_control::tick_loop::TickNotifier for SystemdNotifier {
    fn after_tick(&mut self, now_ns: u64, write_status: &mut dyn FnMut(&mut dyn std::fmt::Write)) {
        SystemdNotifier::after_tick(self, now_ns, |line| write_status(line));
    }

    fn stopping(&mut self) {
        SystemdNotifier::stopping(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;

    fn receive_all(socket: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buffer = [0u8; 512];
        while let Ok(n) = socket.recv(&mut buffer) {
            out.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
        out
    }

    #[test]
    fn sends_ready_status_watchdog_and_stopping() {
        let name = format!("vla-rt-notify-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let manager = UnixDatagram::bind_addr(&address).unwrap();
        manager.set_nonblocking(true).unwrap();

        let mut notifier = SystemdNotifier::connect(&format!("@{name}"), Some(100_000)).unwrap();
        assert_eq!(notifier.watchdog_usec(), Some(100_000));
        // Ticks of 10 ms for 2 s: READY once, STATUS once a second, no WATCHDOG from ticks.
        let period = 10_000_000;
        let start = 5_000_000_000;
        let mut messages = Vec::new();
        for tick in 0..200u64 {
            notifier.after_tick(start + tick * period, |line| {
                let _ = write!(line, "state=ACT tick={tick}");
            });
            messages.extend(receive_all(&manager));
        }
        assert_eq!(
            messages,
            [
                "READY=1",
                "STATUS=state=ACT tick=0",
                "STATUS=state=ACT tick=100"
            ]
        );
        let mut watchdog = notifier.try_clone().unwrap();
        assert!(watchdog.ready());
        watchdog.watchdog();
        notifier.stopping();
        assert_eq!(receive_all(&manager), ["WATCHDOG=1", "STOPPING=1"]);
        assert_eq!(notifier.failed_sends, 0);
        assert_eq!(
            SystemdNotifier::connect(&format!("@{name}"), Some(0))
                .unwrap()
                .watchdog_usec(),
            None
        );
    }

    #[test]
    fn status_line_truncates_instead_of_growing() {
        let mut line = StatusLine::default();
        let long = "x".repeat(300);
        assert!(write!(line, "{long}").is_err());
        assert_eq!(line.as_bytes().len(), 192);
    }

    #[test]
    fn missing_socket_is_named() {
        let err = SystemdNotifier::connect("/nonexistent/notify.sock", None)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("/nonexistent/notify.sock"),
            "{err}"
        );
    }
}
