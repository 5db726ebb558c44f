//! Helpers shared by the integration tests: fixture paths, an `.npy` reader, error metrics.
#![allow(dead_code)]

pub mod oft;
pub mod skip;
pub mod synth;

use std::path::{Path, PathBuf};

/// The crate root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled tiny checkpoint the fixtures were computed with.
pub fn tiny_model_dir() -> PathBuf {
    repo_root().join("engines/openvla-tiny")
}

/// `tests/fixtures/openvla-tiny`.
pub fn tiny_fixture_dir() -> PathBuf {
    repo_root().join("tests/fixtures/openvla-tiny")
}

/// One fixture case of `expected.json["cases"]`.
pub struct FixtureCase {
    pub name: String,
    pub dir: PathBuf,
    pub json: serde_json::Value,
}

impl FixtureCase {
    pub fn str(&self, key: &str) -> &str {
        self.json[key]
            .as_str()
            .unwrap_or_else(|| panic!("{}: {key} is not a string", self.name))
    }

    pub fn u32s(&self, key: &str) -> Vec<u32> {
        self.json[key]
            .as_array()
            .unwrap_or_else(|| panic!("{}: {key} is not an array", self.name))
            .iter()
            .map(|v| v.as_u64().expect("integer") as u32)
            .collect()
    }

    pub fn f64s(&self, key: &str) -> Vec<f64> {
        self.json[key]
            .as_array()
            .unwrap_or_else(|| panic!("{}: {key} is not an array", self.name))
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect()
    }

    /// Asserts that `tokens` are the case's `generated_token_ids`.
    pub fn assert_tokens(&self, tokens: &[u32]) {
        assert_eq!(
            tokens,
            self.u32s("generated_token_ids").as_slice(),
            "{}: generated tokens",
            self.name
        );
    }

    pub fn npy(&self, file: &str) -> Npy {
        read_npy_f32(&self.dir.join(file))
    }
}

pub fn tiny_cases() -> Vec<FixtureCase> {
    fixture_cases(&tiny_fixture_dir())
}

/// The checkpoint trained on the simulator (sim/train.py).
pub fn sim_model_dir() -> PathBuf {
    repo_root().join("engines/openvla-sim")
}

/// `tests/fixtures/openvla-sim`: held-out simulator frames and what PyTorch computed for them
/// at export (sim/make_fixture.py).
pub fn sim_fixture_dir() -> PathBuf {
    repo_root().join("tests/fixtures/openvla-sim")
}

/// `expected.json` of a fixture folder.
pub fn fixture_expected(dir: &Path) -> serde_json::Value {
    let path = dir.join("expected.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The cases of a fixture folder; each case's files are in the folder named after it.
pub fn fixture_cases(dir: &Path) -> Vec<FixtureCase> {
    let expected = fixture_expected(dir);
    expected["cases"]
        .as_array()
        .expect("cases array")
        .iter()
        .map(|c| {
            let name = c["name"].as_str().expect("case name").to_string();
            FixtureCase {
                dir: dir.join(&name),
                name,
                json: c.clone(),
            }
        })
        .collect()
}

/// A float32 array read from a `.npy` file.
#[derive(Debug, Clone)]
pub struct Npy {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Reads a little-endian float32 `.npy` file (format versions 1-3); Fortran-order arrays
/// are returned in C order.
pub fn read_npy_f32(path: &Path) -> Npy {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not an npy file",
        path.display()
    );
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => panic!("{}: npy version {v}", path.display()),
    };
    let header = std::str::from_utf8(&bytes[header_start..header_start + header_len])
        .expect("npy header is text");
    assert!(
        header.contains("'descr': '<f4'"),
        "{}: not <f4: {header}",
        path.display()
    );
    let fortran_order = header.contains("'fortran_order': True");
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("npy shape");
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("shape dimension"))
        .collect();
    let data: Vec<f32> = bytes[header_start + header_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "{}: data does not match shape {shape:?}",
        path.display()
    );
    let data = if fortran_order && shape.len() > 1 {
        to_c_order(&data, &shape)
    } else {
        data
    };
    Npy { shape, data }
}

/// Reorders a column-major array of `shape` into row-major.
fn to_c_order(data: &[f32], shape: &[usize]) -> Vec<f32> {
    let n = data.len();
    let mut out = vec![0.0f32; n];
    let mut index = vec![0usize; shape.len()];
    for (c_pos, slot) in out.iter_mut().enumerate() {
        // Multi-index of row-major position c_pos, then its column-major offset.
        let mut rest = c_pos;
        for d in (0..shape.len()).rev() {
            index[d] = rest % shape[d];
            rest /= shape[d];
        }
        let mut f_pos = 0;
        let mut stride = 1;
        for d in 0..shape.len() {
            f_pos += index[d] * stride;
            stride *= shape[d];
        }
        *slot = data[f_pos];
    }
    out
}

/// ‖a − b‖₂ / ‖b‖₂.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| ((x - y) as f64).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

/// max |a − b|.
pub fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max)
}
