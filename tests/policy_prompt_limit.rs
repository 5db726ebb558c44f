//! The prompt path refuses an instruction whose prompt would not fit the KV cache before it
//! allocates anything sized by it, and names the limit (a byte-counting global allocator
//! measures the peak of live memory during the call).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use vla_rt::backend::cpu::CpuPolicy;
use vla_rt::policy::{Policy, PolicyError, PolicyOptions};
use vla_rt::preprocess::RgbImage;

struct PeakAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: defers every operation to the system allocator unchanged; it only counts bytes.
unsafe impl GlobalAlloc for PeakAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grow(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: PeakAllocator = PeakAllocator;

/// Bytes by which live memory rose above its level at the start, at most, while `f` ran.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.load(Ordering::SeqCst);
    PEAK.store(start, Ordering::SeqCst);
    let value = f();
    (value, PEAK.load(Ordering::SeqCst).saturating_sub(start))
}

fn image() -> RgbImage {
    RgbImage {
        width: 224,
        height: 224,
        data: (0..224 * 224 * 3).map(|i| (i % 251) as u8).collect(),
    }
}

/// One test: the counter is global, so nothing else may allocate while it measures.
#[test]
fn over_long_prompts_are_refused_before_allocation_and_name_the_limit() {
    let options = PolicyOptions {
        unnorm_key: Some("tiny_bridge".into()),
        ..PolicyOptions::default()
    };
    let mut policy = CpuPolicy::load(&common::tiny_model_dir(), &options).unwrap();
    let limit = policy.runner().max_prompt_tokens();
    let image = image();
    // Warm-up: thread pools and scratch start lazily.
    policy.predict(&image, "pick up the block").unwrap();
    let (normal, normal_peak) = peak_growth(|| policy.predict(&image, "pick up the block"));
    normal.unwrap();

    // 1 MB of text: refused from its length, before it is lower-cased or tokenized. Before
    // this check, the tiny model's prompt path took hundreds of MB for it (7B: gigabytes).
    let huge = "pick up the block ".repeat(1 << 16);
    let (result, huge_peak) = peak_growth(|| policy.predict(&image, &huge));
    let message = match result {
        Err(PolicyError::Model(e)) => e.to_string(),
        other => panic!("a 1 MB instruction gave {other:?}"),
    };
    assert!(
        message.starts_with(&format!("instruction too long: {} bytes;", huge.len())),
        "{message}"
    );
    assert!(
        message.contains(&format!("at most {limit} tokens")),
        "{message}"
    );
    assert!(
        huge_peak <= normal_peak + (64 << 10),
        "the refused 1 MB instruction raised live memory by {huge_peak} bytes \
         (a normal prediction: {normal_peak})"
    );

    // Within the byte bound but over the token limit: every digit is its own token.
    let digits = "0123456789".repeat(100);
    let err = policy.check_instruction(&digits).unwrap_err().to_string();
    assert!(
        err.contains("prompt tokens;") && err.contains(&format!("at most {limit} tokens")),
        "{err}"
    );
    let err = policy.predict(&image, &digits).unwrap_err().to_string();
    assert!(err.contains("prompt tokens;"), "{err}");
    // The limit is exact: the longest prompt that fits still runs.
    let ids = policy.runner().prompt_ids("pick up the block").unwrap();
    let fits = format!("pick up the block{}", " the".repeat(limit - ids.len()));
    let fitting = policy.runner().prompt_ids(&fits);
    assert!(
        matches!(&fitting, Ok(ids) if ids.len() <= limit),
        "{fitting:?}"
    );
    policy.predict(&image, &fits).unwrap();
}
