//! A camera stream of fixed size must not allocate per frame: after the first frame of a
//! size, `Preprocessor::run` reuses its tap tables and scratch buffers. Counted with a global
//! allocator wrapper around the steady-state calls (this file holds a single test so that
//! nothing else allocates meanwhile).
// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use vla_rt::preprocess::{load_image, Preprocessor};

struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// GlobalAlloc contract; the counter is a relaxed atomic and touches no allocated memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (through `alloc` above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn steady_state_frames_do_not_allocate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut preprocessor =
        Preprocessor::from_config_file(&root.join("engines/openvla-tiny/preprocessor_config.json"))
            .unwrap();
    let mut out = vec![0f32; preprocessor.output_len()];
    for case in [
        "case1_640x480_nonascii",
        "case2_320x240",
        "case0_224_square",
    ] {
        let frame = load_image(
            &root
                .join("tests/fixtures/openvla-tiny")
                .join(case)
                .join("image.png"),
        )
        .unwrap();
        // The first frame of a size builds the tap tables and sizes the buffers.
        preprocessor.run(&frame, &mut out).unwrap();

        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..200 {
            preprocessor.run(&frame, &mut out).unwrap();
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(
            allocations, 0,
            "{case}: {allocations} allocations in 200 frames"
        );
    }
}
