#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `scripts/setup.sh --check` judges libclang the way bindgen's loader (clang-sys) does: a
//! folder holding only `libclang-cpp` (another library, the one a fresh Debian image with
//! llvm-14 has) or a file named `libclang.so` that is not a shared library is no libclang,
//! and the failure line names the package to install. Needs `python3`, like the script.

#[path = "common/skip.rs"]
mod skip;

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vla-rt-setup-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The script's output with `LIBCLANG_PATH` set to `libclang_path`, or `None` (with the
/// reason printed) when python3 is missing outside CI.
fn check_with_libclang_path(libclang_path: Option<&std::path::Path>) -> Option<String> {
    let has_python = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_python {
        skip::missing_tool("no python3 (scripts/setup.sh installs it)");
        return None;
    }
    let mut command = Command::new(repo().join("scripts/setup.sh"));
    command.arg("--check");
    match libclang_path {
        Some(path) => command.env("LIBCLANG_PATH", path),
        None => command.env_remove("LIBCLANG_PATH"),
    };
    let out = command.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // Any failure must be reported as a non-zero exit, and a clean pass as zero.
    assert_eq!(out.status.success(), !text.contains("FAILED"), "{text}");
    Some(text)
}

fn libclang_line(text: &str) -> Option<&str> {
    text.lines().find(|l| l.contains("FAILED libclang"))
}

#[test]
fn libclang_cpp_alone_is_not_the_libclang_bindgen_loads() {
    let dir = temp_dir("cpp");
    // Only the name matters here: the file is never opened.
    std::fs::write(dir.join("libclang-cpp.so.14"), b"\x7fELF\x02").unwrap();
    let Some(text) = check_with_libclang_path(Some(&dir)) else {
        return;
    };
    let line = libclang_line(&text).unwrap_or_else(|| panic!("no libclang failure:\n{text}"));
    assert!(line.contains("apt-get install libclang-dev"), "{line}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_libclang_so_that_is_not_a_shared_library_is_refused() {
    let dir = temp_dir("text");
    std::fs::write(dir.join("libclang.so"), b"INPUT(-lclang-14)\n").unwrap();
    let Some(text) = check_with_libclang_path(Some(&dir)) else {
        return;
    };
    let line = libclang_line(&text).unwrap_or_else(|| panic!("no libclang failure:\n{text}"));
    assert!(line.contains("libclang-dev"), "{line}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// This crate was just built, so bindgen found a libclang that parses the V4L2 header: the
/// script's check must find it too.
#[test]
fn the_libclang_the_build_used_passes_the_check() {
    let Some(text) = check_with_libclang_path(None) else {
        return;
    };
    assert_eq!(libclang_line(&text), None, "{text}");
}
