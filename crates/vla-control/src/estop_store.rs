//! The e-stop latch on disk, so that a crash, a restart or a reboot does not release it.
//!
//! One small file per robot, `<state_dir>/<robot_id>.estop`, holding `latched` or
//! `released`. It is replaced atomically (a temporary file, fsync, rename, fsync of the
//! folder), so a power cut leaves either the old or the new state, never a torn one. It is
//! written by whoever changes the latch (the Zenoh e-stop callback) before the in-memory
//! flag the control thread reads, so a STOP caused by an e-stop is only published once the
//! latch is on disk. The control thread never touches the file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::safety_config::EStopMissing;

#[derive(Debug, thiserror::Error)]
pub enum EStopStoreError {
    #[error("e-stop state {path}: {message}")]
    Io { path: String, message: String },
}

const LATCHED: &str = "latched";
const RELEASED: &str = "released";

/// What the file said at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredState {
    Latched,
    Released,
    /// No file, or one that could not be read or understood.
    Missing,
}

#[derive(Debug)]
pub struct EStopStore {
    path: PathBuf,
    temp_path: PathBuf,
    dir: PathBuf,
}

impl EStopStore {
    /// The store of `robot_id` in `state_dir` (created if missing).
    pub fn open(state_dir: &Path, robot_id: &str) -> Result<Self, EStopStoreError> {
        std::fs::create_dir_all(state_dir).map_err(|e| EStopStoreError::Io {
            path: state_dir.display().to_string(),
            message: format!("cannot create the folder: {e}"),
        })?;
        Ok(Self {
            path: state_dir.join(format!("{robot_id}.estop")),
            // One temporary name per process: two services (a misconfiguration, or tests)
            // writing at once must not rename each other's half-written file.
            temp_path: state_dir.join(format!(".{robot_id}.estop.{}.tmp", std::process::id())),
            dir: state_dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file says.
    pub fn read(&self) -> StoredState {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => match text.trim() {
                LATCHED => StoredState::Latched,
                RELEASED => StoredState::Released,
                _ => StoredState::Missing,
            },
            Err(_) => StoredState::Missing,
        }
    }

    /// Whether the service starts latched, and a note for the log when the file did not say.
    pub fn initial_latch(&self, missing: EStopMissing) -> (bool, Option<String>) {
        match self.read() {
            StoredState::Latched => (true, None),
            StoredState::Released => (false, None),
            StoredState::Missing => {
                let latched = missing == EStopMissing::Latched;
                let exists = self.path.exists();
                let what = if exists { "unreadable" } else { "missing" };
                let meaning = if latched {
                    "latched (control.estop_missing = \"latched\"): put `release` on the e-stop release key to start"
                } else {
                    "released (control.estop_missing = \"released\")"
                };
                (
                    latched,
                    Some(format!(
                        "e-stop state {} {what}: taken as {meaning}",
                        self.path.display()
                    )),
                )
            }
        }
    }

    /// Writes the state atomically and durably.
    pub fn write(&self, latched: bool) -> Result<(), EStopStoreError> {
        let io = |what: &str, path: &Path, e: std::io::Error| EStopStoreError::Io {
            path: path.display().to_string(),
            message: format!("{what}: {e}"),
        };
        let text = if latched { LATCHED } else { RELEASED };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.temp_path)
            .map_err(|e| io("cannot create", &self.temp_path, e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .map_err(|e| io("cannot write", &self.temp_path, e))?;
        file.sync_all()
            .map_err(|e| io("cannot sync", &self.temp_path, e))?;
        drop(file);
        std::fs::rename(&self.temp_path, &self.path)
            .map_err(|e| io("cannot rename into place", &self.path, e))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| io("cannot sync the folder", &self.dir, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vla-rt-estop-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn round_trips_and_survives_a_new_store() {
        let dir = temp_dir("round");
        let store = EStopStore::open(&dir, "arm1").unwrap();
        assert_eq!(store.read(), StoredState::Missing);
        store.write(true).unwrap();
        assert_eq!(
            EStopStore::open(&dir, "arm1").unwrap().read(),
            StoredState::Latched
        );
        store.write(false).unwrap();
        assert_eq!(store.read(), StoredState::Released);
        assert_eq!(
            std::fs::read_to_string(dir.join("arm1.estop")).unwrap(),
            "released\n"
        );
        // No temporary file is left behind, and other robots have their own file.
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert_eq!(
            EStopStore::open(&dir, "arm2").unwrap().read(),
            StoredState::Missing
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_or_garbled_files_follow_the_config() {
        let dir = temp_dir("missing");
        let store = EStopStore::open(&dir, "arm").unwrap();
        let (latched, note) = store.initial_latch(EStopMissing::Latched);
        assert!(latched);
        assert!(note.unwrap().contains("missing"));
        assert!(!store.initial_latch(EStopMissing::Released).0);
        std::fs::write(store.path(), "lat").unwrap();
        let (latched, note) = store.initial_latch(EStopMissing::Latched);
        assert!(latched);
        assert!(note.unwrap().contains("unreadable"));
        store.write(false).unwrap();
        assert_eq!(store.initial_latch(EStopMissing::Latched), (false, None));
        store.write(true).unwrap();
        assert_eq!(store.initial_latch(EStopMissing::Released), (true, None));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_folder_is_named() {
        let dir = temp_dir("file");
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        std::fs::write(&dir, "not a folder").unwrap();
        let err = EStopStore::open(&dir, "arm").unwrap_err().to_string();
        assert!(err.contains(&dir.display().to_string()), "{err}");
        std::fs::remove_file(&dir).unwrap();
    }
}
