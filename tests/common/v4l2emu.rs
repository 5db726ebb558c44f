//! The emulated V4L2 device for tests: builds `tests/v4l2emu/v4l2emu.c` with `cc` into the
//! target's test directory, runs code under `LD_PRELOAD`, and reproduces the emulator's
//! pattern formula (tests/v4l2emu/README.md) to check pixels.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Marks a test process re-executed under the emulator.
pub const CHILD_ENV: &str = "VLA_RT_TEST_V4L2EMU_CHILD";
/// The device path the emulator answers for.
pub const DEVICE: &str = "/dev/video42";

/// The emulator library, compiled once per test binary with `-Wall -Wextra -Werror`.
pub fn library() -> &'static Path {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("v4l2emu");
        std::fs::create_dir_all(&dir).unwrap();
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/v4l2emu/v4l2emu.c");
        let output = dir.join("libv4l2emu.so");
        // Built under a private name, then renamed: test binaries build it concurrently.
        let private = dir.join(format!("libv4l2emu.{}.so", std::process::id()));
        let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let result = Command::new(&compiler)
            .args([
                "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
            ])
            .arg(&private)
            .arg(&source)
            .args(["-ldl", "-lpthread"])
            .output()
            .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
        assert!(
            result.status.success(),
            "building the V4L2 emulator failed:\n{}",
            String::from_utf8_lossy(&result.stderr)
        );
        std::fs::rename(&private, &output).unwrap();
        output
    })
}

pub fn in_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

#[path = "bounded.rs"]
mod bounded;
pub use bounded::run_bounded;

/// A command with the emulator preloaded for [`DEVICE`] and the given `V4L2EMU_*` settings.
pub fn emulated(program: impl AsRef<std::ffi::OsStr>, settings: &[(&str, &str)]) -> Command {
    let mut command = Command::new(program);
    command
        .env("LD_PRELOAD", library())
        .env("V4L2EMU_PATH", DEVICE)
        .env_remove("V4L2EMU_FAULTS")
        .env_remove("V4L2EMU_MJPEG_DIR");
    for (key, value) in settings {
        command.env(key, value);
    }
    command
}

/// Re-runs test `name` of this binary under the emulator and fails if the child fails.
pub fn run_test_in_child(name: &str, settings: &[(&str, &str)], timeout: Duration) {
    let mut command = emulated(std::env::current_exe().unwrap(), settings);
    command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env("RUST_LOG", "debug");
    let output = run_bounded(command, timeout);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child test {name} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The emulator's pattern (README.md): eight vertical colour bars, and a grey (128) block of
/// side `height / 8` in cell `sequence % cells` of a `(width / side) x 8` grid, row-major.
pub fn pattern_rgb(width: u32, height: u32, sequence: u64, x: u32, y: u32) -> [u8; 3] {
    const BARS: [[u8; 3]; 8] = [
        [255, 255, 255],
        [255, 255, 0],
        [0, 255, 255],
        [0, 255, 0],
        [255, 0, 255],
        [255, 0, 0],
        [0, 0, 255],
        [0, 0, 0],
    ];
    let side = height / 8;
    let columns = width / side;
    let cell = (sequence % u64::from(columns * 8)) as u32;
    let (block_x, block_y) = ((cell % columns) * side, (cell / columns) * side);
    if (block_x..block_x + side).contains(&x) && (block_y..block_y + side).contains(&y) {
        return [128; 3];
    }
    BARS[(x * 8 / width) as usize]
}

/// Centre of the block for `sequence`.
pub fn block_centre(width: u32, height: u32, sequence: u64) -> (u32, u32) {
    let side = height / 8;
    let columns = width / side;
    let cell = (sequence % u64::from(columns * 8)) as u32;
    (
        (cell % columns) * side + side / 2,
        (cell / columns) * side + side / 2,
    )
}

/// Checks an RGB frame against the pattern for `sequence`: every sampled pixel whose
/// neighbourhood of `margin` pixels is one colour must be within `tolerance`, after mapping the
/// expected colour through `expect` (identity for RGB sources, luma for GREY).
pub fn assert_pattern(
    rgb: &[u8],
    width: u32,
    height: u32,
    sequence: u64,
    margin: u32,
    tolerance: u8,
    expect: fn([u8; 3]) -> [u8; 3],
) {
    assert_eq!(rgb.len(), (width * height * 3) as usize, "frame size");
    let mut checked = 0;
    let (bx, by) = block_centre(width, height, sequence);
    let mut points: Vec<(u32, u32)> = vec![(bx, by)];
    for y in (margin..height.saturating_sub(margin)).step_by(7) {
        for x in (margin..width.saturating_sub(margin)).step_by(5) {
            points.push((x, y));
        }
    }
    for (x, y) in points {
        let want = pattern_rgb(width, height, sequence, x, y);
        let uniform = [(0, 0), (margin, 0), (0, margin), (margin, margin)]
            .iter()
            .all(|&(dx, dy)| {
                [
                    (x + dx, y + dy),
                    (x.saturating_sub(dx), y.saturating_sub(dy)),
                ]
                .iter()
                .all(|&(px, py)| {
                    px < width
                        && py < height
                        && pattern_rgb(width, height, sequence, px, py) == want
                })
            });
        if !uniform {
            continue;
        }
        let want = expect(want);
        let at = ((y * width + x) * 3) as usize;
        let got = &rgb[at..at + 3];
        for channel in 0..3 {
            assert!(
                got[channel].abs_diff(want[channel]) <= tolerance,
                "sequence {sequence}: pixel ({x}, {y}) is {got:?}, expected {want:?} ± {tolerance}"
            );
        }
        checked += 1;
    }
    assert!(checked > 100, "only {checked} pixels were checkable");
}

pub fn identity(rgb: [u8; 3]) -> [u8; 3] {
    rgb
}

/// Full-range BT.601 luma, as the emulator's GREY frames carry.
pub fn luma(rgb: [u8; 3]) -> [u8; 3] {
    let [r, g, b] = rgb.map(u32::from);
    [((77 * r + 150 * g + 29 * b + 128) >> 8) as u8; 3]
}

/// Writes one JPEG per grid cell (`frame_0000.jpg`, ...) of the pattern at `width x height`
/// into `dir`, for the emulator's MJPEG stream.
pub fn write_mjpeg_frames(dir: &Path, width: u32, height: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let side = height / 8;
    let cells = (width / side) * 8;
    for sequence in 0..u64::from(cells) {
        let mut rgb = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                rgb.extend_from_slice(&pattern_rgb(width, height, sequence, x, y));
            }
        }
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 92)
            .encode(&rgb, width, height, image::ExtendedColorType::Rgb8)
            .unwrap();
        std::fs::write(dir.join(format!("frame_{sequence:04}.jpg")), jpeg).unwrap();
    }
}

/// A fresh directory under the target's test directory.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("v4l2emu")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
