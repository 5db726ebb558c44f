//! A decode step (f32, INT8 or INT4 weights) allocates nothing once the state has run a
//! prefill: the KV cache and every
//! scratch buffer are preallocated and written in place (counting global allocator).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use vla_rt::model::linear::QuantFormat;
use vla_rt::model::openvla::OpenVla;

struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers every operation to the system allocator unchanged; it only counts calls.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations of six decode steps of the tiny checkpoint with its Llama in `format`
/// (f32 when `None`), after a prefill of the real length and two warm-up steps (thread
/// pools and their buffers start lazily).
fn decode_allocations(format: Option<QuantFormat>) -> usize {
    let mut model = OpenVla::load(&common::tiny_model_dir()).expect("tiny checkpoint loads");
    if let Some(format) = format {
        model
            .llama_mut()
            .for_each_linear_mut(&mut |name, linear| linear.quantize(name, format))
            .expect("tiny Llama quantizes");
    }
    let llama = model.llama();
    let hidden = llama.config().hidden_size;
    let mut state = model.new_llama_state();
    let mut logits = vec![0.0f32; llama.config().vocab_size];
    let prefill: Vec<f32> = (0..283 * hidden)
        .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
        .collect();
    llama.forward(&mut state, &prefill, &mut logits).unwrap();
    llama.step(&mut state, 31900, &mut logits).unwrap();
    llama.step(&mut state, 31901, &mut logits).unwrap();

    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for token in 31902..31908 {
        llama.step(&mut state, token, &mut logits).unwrap();
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert_eq!(state.len(), 283 + 8);
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// One test for every format: the counter is global, so nothing else may run while it counts.
/// The steps run on a thread of a rayon pool: called from outside a pool, rayon queues each
/// parallel product on its global injector, which allocates a block every 63 jobs; that is
/// rayon's, not the model's, and this test is about the model's buffers.
#[test]
fn decode_steps_do_not_allocate() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for format in [None, Some(QuantFormat::Int8), Some(QuantFormat::Int4)] {
        assert_eq!(
            pool.install(|| decode_allocations(format)),
            0,
            "decode steps allocated ({})",
            format.map_or("f32".to_string(), |f| format!("{f:?}"))
        );
    }
}
