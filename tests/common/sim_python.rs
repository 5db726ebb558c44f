//! Running `sim/` scripts from a test (included with `#[path]`, beside `skip.rs`): whether
//! python3 has the simulator's packages, and one run of a script that prints JSON.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::skip;

/// Whether python3 imports sim/requirements.txt's packages; otherwise the test skips, or
/// fails under CI (`skip::missing_tool`), naming itself as `test`.
pub fn python_ready(test: &str) -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import mujoco, zenoh, PIL, numpy"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match probe {
        Ok(output) if output.status.success() => true,
        Ok(output) => {
            skip::missing_tool(&format!(
                "{test}: python3 lacks the simulator's packages (pip install -r sim/requirements.txt): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
            false
        }
        Err(e) => {
            skip::missing_tool(&format!("{test}: cannot run python3: {e}"));
            false
        }
    }
}

/// What a script printed and how it ended.
pub struct ScriptRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `python3 <args>` in the repository, failing the test when it runs over `limit`.
pub fn run_script(args: &[&str], limit: Duration) -> ScriptRun {
    let script = args.first().copied().unwrap_or("python3");
    let started = Instant::now();
    let mut child = Command::new("python3")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {script}: {e}"));
    // Read both pipes while it runs: a full pipe would stall it until the deadline.
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        out_pipe.read_to_string(&mut text).map(|_| text)
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        err_pipe.read_to_string(&mut text).map(|_| text)
    });
    let deadline = started + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            let stderr = err_reader.join().unwrap().unwrap_or_default();
            panic!("{script} ran over {limit:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ScriptRun {
        status,
        stdout: out_reader.join().unwrap().unwrap(),
        stderr: err_reader.join().unwrap().unwrap(),
    }
}
