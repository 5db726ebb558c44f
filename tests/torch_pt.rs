//! PyTorch `.pt` state dicts (`vla_rt::model::torch_pt`) against the files of
//! `tests/fixtures/torch-pt`, written by torch itself (`make.py`): names, dtypes, shapes and
//! values as `torch.load` reads them (`expected.json`), bit for bit; and the refusals: foreign
//! globals (never run), non-tensor entries, broken archives, storages and tensors.
// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use vla_rt::model::torch_pt::{TorchDtype, TorchStateDict, TorchTensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch-pt")
        .join(name)
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The error of loading fixture `name`, which must be refused.
fn refusal(name: &str) -> String {
    let path = fixture(name);
    let error = TorchStateDict::open(&path).unwrap_err().to_string();
    assert!(
        error.contains(&path.display().to_string()),
        "{name}: error does not name the file: {error}"
    );
    error
}

fn assert_mentions(error: &str, parts: &[&str]) {
    for part in parts {
        assert!(error.contains(part), "`{part}` missing from: {error}");
    }
}

/// Every tensor of `file` equals torch's reading of it: order, names, dtype, shape, values
/// (floats bit for bit after conversion to f32, integers and bools exactly).
fn assert_matches_torch(state: &TorchStateDict, file: &str) {
    let expected = expected();
    let tensors = expected["files"][file].as_array().unwrap();
    assert_eq!(state.len(), tensors.len(), "{file}: tensor count");
    for (tensor, want) in state.tensors().iter().zip(tensors) {
        let name = want["name"].as_str().unwrap();
        assert_eq!(tensor.name(), name, "{file}: order");
        assert_eq!(
            tensor.dtype().name(),
            want["dtype"].as_str().unwrap(),
            "{name}"
        );
        let shape: Vec<usize> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(tensor.shape(), shape.as_slice(), "{name}");
        assert_eq!(tensor.numel(), shape.iter().product::<usize>(), "{name}");
        let values = want["values"].as_array().unwrap();
        assert_eq!(values.len(), tensor.numel(), "{name}");
        assert_values(tensor, values);
    }
}

fn assert_values(tensor: &TorchTensor, values: &[serde_json::Value]) {
    let name = tensor.name();
    let bytes = tensor.bytes();
    let width = tensor.dtype().size();
    assert_eq!(bytes.len(), values.len() * width, "{name}");
    if tensor.dtype().is_float() {
        let got = tensor.to_f32().unwrap();
        for (i, (g, want)) in got.iter().zip(values).enumerate() {
            // torch's `.float()` of the stored value, exact in an f64.
            let want = want.as_f64().unwrap() as f32;
            assert_eq!(
                g.to_bits(),
                want.to_bits(),
                "{name}[{i}]: {g} (bits {:#x}), torch {want} (bits {:#x})",
                g.to_bits(),
                want.to_bits()
            );
        }
        return;
    }
    assert!(
        tensor.to_f32().is_err(),
        "{name}: integers converted to f32"
    );
    for (i, (chunk, want)) in bytes.chunks_exact(width).zip(values).enumerate() {
        let got: i64 = match tensor.dtype() {
            TorchDtype::I64 => i64::from_le_bytes(chunk.try_into().unwrap()),
            TorchDtype::I32 => i32::from_le_bytes(chunk.try_into().unwrap()).into(),
            TorchDtype::I16 => i16::from_le_bytes(chunk.try_into().unwrap()).into(),
            TorchDtype::I8 => i8::from_le_bytes(chunk.try_into().unwrap()).into(),
            TorchDtype::U8 => chunk[0].into(),
            TorchDtype::Bool => chunk[0].into(),
            other => panic!("{name}: {other}"),
        };
        let want = match want {
            serde_json::Value::Bool(b) => i64::from(*b),
            other => other.as_i64().unwrap(),
        };
        assert_eq!(got, want, "{name}[{i}]");
    }
}

#[test]
fn action_head_bf16_matches_torch_bit_for_bit() {
    let file = "action_head--5_checkpoint.pt";
    let state = TorchStateDict::open(&fixture(file)).unwrap();
    assert_matches_torch(&state, file);
    assert!(state
        .tensors()
        .iter()
        .all(|t| t.dtype() == TorchDtype::BF16));
    assert_eq!(
        state.tensor("module.model.fc1.weight").unwrap().shape(),
        &[16, 8]
    );
}

#[test]
fn proprio_projector_f32_matches_torch() {
    let file = "proprio_projector--5_checkpoint.pt";
    let state = TorchStateDict::open(&fixture(file)).unwrap();
    assert_matches_torch(&state, file);
    let weight = state
        .f32_with_shape("module.fc2.weight", &[16, 16])
        .unwrap();
    assert_eq!(weight.len(), 256);
    let wrong = state.f32_with_shape("module.fc2.weight", &[16, 8]);
    assert!(wrong.unwrap_err().to_string().contains("module.fc2.weight"));
    assert!(state.tensor("fc2.weight").is_err());
}

#[test]
fn edge_cases_match_torch() {
    // Every storage type, views sharing a storage (one at an offset), 0-d, empty and size-1
    // dimensions, bf16's extremes, an nn.Parameter.
    let file = "edge_cases.pt";
    let state = TorchStateDict::open(&fixture(file)).unwrap();
    assert_matches_torch(&state, file);
    assert_eq!(state.tensor("scalar_f64").unwrap().shape(), &[] as &[usize]);
    assert_eq!(state.tensor("empty").unwrap().numel(), 0);
}

#[test]
fn reading_from_bytes_equals_reading_the_file() {
    let path = fixture("action_head--5_checkpoint.pt");
    let bytes = std::fs::read(&path).unwrap();
    let from_bytes = TorchStateDict::from_bytes(&bytes, &path).unwrap();
    let from_file = TorchStateDict::open(&path).unwrap();
    assert_eq!(from_bytes.len(), from_file.len());
    for (a, b) in from_bytes.tensors().iter().zip(from_file.tensors()) {
        assert_eq!(a.name(), b.name());
        assert_eq!(a.bytes(), b.bytes());
    }
}

#[test]
fn module_prefix_is_stripped() {
    let path = fixture("proprio_projector--5_checkpoint.pt");
    let state = TorchStateDict::open(&path).unwrap();
    let original = state.tensor("module.fc1.weight").unwrap().to_f32().unwrap();
    let stripped = state.strip_module_prefix().unwrap();
    let names: Vec<&str> = stripped.tensors().iter().map(TorchTensor::name).collect();
    assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
    assert!(stripped.get("module.fc1.weight").is_none());
    assert_eq!(
        stripped.tensor("fc1.weight").unwrap().to_f32().unwrap(),
        original
    );
    // Names without the prefix stay as they are.
    let edge = TorchStateDict::open(&fixture("edge_cases.pt"))
        .unwrap()
        .strip_module_prefix()
        .unwrap();
    assert!(edge.get("view_tail").is_some());
    // Two names that would become one are refused, naming both.
    let error = TorchStateDict::open(&path)
        .unwrap()
        .strip_prefix("module.fc1.")
        .and_then(|s| s.strip_prefix("module.fc2."))
        .unwrap_err()
        .to_string();
    assert_mentions(&error, &["module.fc2.weight", "`weight`"]);
}

#[test]
fn state_dict_feeds_the_checkpoint_loaders() {
    let state = TorchStateDict::open(&fixture("action_head--5_checkpoint.pt"))
        .unwrap()
        .strip_module_prefix()
        .unwrap();
    let checkpoint = state.to_checkpoint().unwrap();
    let linear = checkpoint.linear("model.fc2", 4, 16, true).unwrap();
    let _ = linear;
    assert_eq!(
        checkpoint
            .f32_with_shape("model.fc1.weight", &[16, 8])
            .unwrap(),
        state.tensor("model.fc1.weight").unwrap().to_f32().unwrap()
    );
}

/// Whether `/tmp/pwned` exists: the payload of the malicious fixtures creates it.
fn pwned() -> bool {
    Path::new("/tmp/pwned").exists()
}

#[test]
fn malicious_globals_are_refused_and_never_run() {
    let before = pwned();
    let error = refusal("malicious_reduce.pt");
    // os.system pickles as `posix system` on Linux.
    assert_mentions(&error, &["global `posix system` refused"]);
    let error = refusal("malicious_os_system.pt");
    assert_mentions(&error, &["global `os system` refused", "data.pkl"]);
    let error = refusal("malicious_stack_global.pt");
    assert_mentions(&error, &["global `builtins eval` refused"]);
    if !before {
        assert!(!pwned(), "/tmp/pwned appeared: the payload ran");
    }
}

#[test]
fn storage_types_not_read_are_refused_as_globals() {
    let error = refusal("complex.pt");
    assert_mentions(&error, &["global `torch ComplexFloatStorage` refused"]);
}

#[test]
fn non_tensor_entries_are_refused() {
    let error = refusal("optimizer_like.pt");
    assert_mentions(&error, &["entry `step` is an int, not a tensor"]);
}

#[test]
fn broken_archives_are_refused() {
    for (file, parts) in [
        ("no_data_pkl.pt", &["no `<archive>/data.pkl` entry"][..]),
        ("two_archives.pt", &["2 data.pkl entries", "other/data.pkl"]),
        (
            "deflated.pt",
            &["is compressed (Deflated)", "stores entries uncompressed"],
        ),
        ("big_endian.pt", &["byteorder` is `big`", "little-endian"]),
        ("truncated_pickle.pt", &["data.pkl at byte", "truncated"]),
        (
            "wrong_storage_key.pt",
            &[
                "tensor module.fc1.weight",
                "no entry `proprio_projector--5_checkpoint/data/0`",
            ],
        ),
    ] {
        let error = refusal(file);
        assert_mentions(&error, parts);
    }
}

#[test]
fn malformed_tensors_are_refused_naming_the_tensor() {
    for (file, parts) in [
        (
            "non_contiguous.pt",
            &["tensor module.fc1.weight", "not row-major contiguous"][..],
        ),
        (
            "offset_out_of_range.pt",
            &[
                "tensor module.fc1.bias",
                "elements 3..7 lie outside its storage `0` of 4",
            ],
        ),
        (
            "storage_size_mismatch.pt",
            &["tensor module.fc1.bias", "holds 16 bytes", "take 32"],
        ),
        (
            "overflow_shape.pt",
            &["tensor module.huge", "element count overflows"],
        ),
        ("too_many_dims.pt", &["tensor module.deep", "21 dimensions"]),
    ] {
        let error = refusal(file);
        assert_mentions(&error, parts);
    }
}

#[test]
fn truncated_files_are_refused_with_the_file_named() {
    let path = fixture("proprio_projector--5_checkpoint.pt");
    let bytes = std::fs::read(&path).unwrap();
    let label = Path::new("cut.pt");
    for len in [
        0,
        1,
        22,
        100,
        bytes.len() / 2,
        bytes.len() - 22,
        bytes.len() - 1,
    ] {
        let error = TorchStateDict::from_bytes(&bytes[..len], label)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("cut.pt: "), "{len} bytes: {error}");
    }
    // A storage's bytes damaged inside an intact archive: the entry's CRC says so.
    let data = b"proprio_projector--5_checkpoint/data/0";
    let at = bytes.windows(data.len()).position(|w| w == data).unwrap();
    let mut damaged = bytes.clone();
    // The local header's name is followed by its extra field (alignment padding) and then the
    // data; flip a byte well inside the first storage (16 x 8 floats).
    let flip = at + data.len() + 200;
    damaged[flip] ^= 0x55;
    let error = TorchStateDict::from_bytes(&damaged, label)
        .unwrap_err()
        .to_string();
    assert_mentions(&error, &["cut.pt", "module.fc1.weight"]);
}

#[test]
fn a_missing_file_and_a_folder_are_refused() {
    let missing = fixture("absent.pt");
    let error = TorchStateDict::open(&missing).unwrap_err().to_string();
    assert_mentions(&error, &["absent.pt", "cannot open"]);
    let folder = fixture("");
    let error = TorchStateDict::open(&folder).unwrap_err().to_string();
    assert_mentions(&error, &["not a regular file"]);
}

/// The entries of a zip whose entries are all stored, found through its central directory
/// (torch writes sizes after the data, not in the local headers).
#[cfg(feature = "test-hooks")]
fn stored_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    // End of central directory, without a comment.
    let end = bytes.len() - 22;
    assert_eq!(u32_at(end), 0x0605_4b50, "no end of central directory");
    let count = u16_at(end + 10);
    let mut at = u32_at(end + 16);
    let mut entries = Vec::new();
    for _ in 0..count {
        assert_eq!(u32_at(at), 0x0201_4b50, "central directory record");
        assert_eq!(u16_at(at + 10), 0, "entry not stored");
        let size = u32_at(at + 24);
        let (name_len, extra_len, comment_len) =
            (u16_at(at + 28), u16_at(at + 30), u16_at(at + 32));
        let local = u32_at(at + 42);
        let name = String::from_utf8(bytes[at + 46..at + 46 + name_len].to_vec()).unwrap();
        let start = local + 30 + u16_at(local + 26) + u16_at(local + 28);
        entries.push((name, bytes[start..start + size].to_vec()));
        at += 46 + name_len + extra_len + comment_len;
    }
    entries
}

#[cfg(feature = "test-hooks")]
#[test]
fn a_state_dict_restored_by_the_fuzz_harness_zip_writer_reads_the_same() {
    // The fuzz target's pickle mode wraps its input with this writer: if the reader refused
    // its archives, the fuzzer would never reach the pickle machine.
    let file = "proprio_projector--5_checkpoint.pt";
    let bytes = std::fs::read(fixture(file)).unwrap();
    let entries = stored_entries(&bytes);
    assert!(entries.len() >= 7, "{} entries", entries.len());
    let entries: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(name, data)| (name.as_str(), data.as_slice()))
        .collect();
    let rewritten = vla_rt::fuzzing::stored_zip(&entries);
    let state = TorchStateDict::from_bytes(&rewritten, Path::new("rewritten.pt")).unwrap();
    assert_matches_torch(&state, file);
}
