//! Whether a test may skip for want of a tool, for the tests of both packages (included with
//! `#[path]`): one rule for all of them. Under CI (`CI` set to any non-empty value) a missing
//! tool fails the test; elsewhere the test says what it skipped and why.
#![allow(dead_code)]

/// Whether `CI` is set to a non-empty value.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|value| !value.is_empty())
}

/// A tool the test needs is missing (`why` names it and how to install it): panics under CI,
/// otherwise prints `skipped: <why>` and returns, for the caller to skip.
pub fn missing_tool(why: &str) {
    assert!(
        !under_ci(),
        "{why} (CI is set: a missing tool fails the test)"
    );
    eprintln!("skipped: {why}");
}
