//! A mutation fuzzer on stable Rust for the harnesses of `vla_rt::fuzzing`, for machines
//! without the nightly toolchain or the time for cargo-fuzz's instrumented build: random
//! mutations (bit flips, interesting values, inserts, deletes, duplicates, splices, cuts) of
//! the corpus files, each run through the target's harness; an input that panics is saved to
//! `fuzz/artifacts/<target>/`. Not coverage-guided: `fuzz/run.sh` (libFuzzer) goes deeper.
//!
//! ```sh
//! cargo run --release --example fuzz_mutate -- TARGET SECONDS [SEED]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: [&[u8]; 10] = [
    &[0],
    &[0xff],
    &[0x7f],
    &[0x80],
    &[0, 0],
    &[0xff, 0xff],
    &[0xff, 0xff, 0xff, 0xff],
    &[0, 0, 0, 0x80],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
    &[1, 0, 0, 0, 0, 0, 0, 0],
];

fn mutate(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(6) {
        let len = data.len();
        match rng.below(8) {
            0 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                data[at] = rng.next() as u8;
            }
            2 => {
                let value = INTERESTING[rng.below(INTERESTING.len())];
                let at = rng.below(len + 1);
                let end = (at + value.len()).min(len);
                data.splice(at..end, value.iter().copied());
            }
            3 => {
                let at = rng.below(len + 1);
                let count = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..count).map(|_| rng.next() as u8).collect();
                data.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(32)).min(len);
                data.drain(at..end);
            }
            5 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(64)).min(len);
                let chunk = data[at..end].to_vec();
                let to = rng.below(len + 1);
                data.splice(to..to, chunk);
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                let to = rng.below(len + 1);
                data.truncate(to);
                data.extend_from_slice(&other[from..]);
            }
            _ => data.truncate(rng.below(len + 1)),
        }
    }
    data.truncate(65_536);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(target), Some(seconds)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: fuzz_mutate TARGET SECONDS [SEED]");
        std::process::exit(2);
    };
    let Some(&(_, harness)) = vla_rt::fuzzing::TARGETS.iter().find(|(n, _)| n == target) else {
        eprintln!("fuzz_mutate: unknown target `{target}`");
        std::process::exit(2);
    };
    let seconds: u64 = seconds.parse().expect("SECONDS is a number");
    let seed: u64 = args
        .get(3)
        .map(|s| s.parse().expect("SEED is a number"))
        .unwrap_or(0x5eed_0000_0000_0001);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut corpus = Vec::new();
    for entry in std::fs::read_dir(root.join("corpus").join(target)).unwrap() {
        corpus.push(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let artifacts = root.join("artifacts").join(target);
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng(seed | 1);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut executions, mut crashes) = (0u64, 0u64);
    let mut first_crash = None;
    while Instant::now() < deadline {
        for _ in 0..64 {
            let mut input = corpus[rng.below(corpus.len())].clone();
            mutate(&mut rng, &mut input, &corpus);
            executions += 1;
            if std::panic::catch_unwind(|| harness(&input)).is_err() {
                crashes += 1;
                std::fs::create_dir_all(&artifacts).unwrap();
                let name = format!("crash-{:016x}", rng.next());
                std::fs::write(artifacts.join(&name), &input).unwrap();
                first_crash.get_or_insert(name);
            }
        }
    }
    println!(
        "fuzz_mutate: {target}: {seconds} s, {executions} executions, {crashes} crashes{}",
        first_crash.map_or(String::new(), |n| format!(
            " (first: fuzz/artifacts/{target}/{n})"
        ))
    );
}
