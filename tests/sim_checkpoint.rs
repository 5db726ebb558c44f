//! The checkpoint trained on the simulator (`engines/openvla-sim`, sim/train.py) against what
//! PyTorch computed on its held-out frames when it was exported (`tests/fixtures/openvla-sim`,
//! sim/make_fixture.py). PyTorch's side, sim/vla_torch.py, reproduces OpenVLA's reference
//! numbers on `tests/fixtures/openvla-tiny`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{fixture_cases, fixture_expected, sim_fixture_dir, sim_model_dir};
use vla_rt::backend::cpu::CpuPolicy;
use vla_rt::model::onnx::sha256_tag;
use vla_rt::policy::{Policy, PolicyOptions};
use vla_rt::preprocess::load_image;

#[test]
fn the_fixture_was_computed_from_the_bundled_weights() {
    let weights = std::fs::read(sim_model_dir().join("model.safetensors")).unwrap();
    let expected = fixture_expected(&sim_fixture_dir());
    assert_eq!(
        sha256_tag(&weights),
        format!("sha256:{}", expected["model_sha256"].as_str().unwrap()),
        "engines/openvla-sim/model.safetensors changed since tests/fixtures/openvla-sim was made"
    );
}

#[test]
fn the_trained_weights_are_stored_in_bf16() {
    let bytes = std::fs::read(sim_model_dir().join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let tensors: Vec<_> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .collect();
    assert!(tensors.len() > 100, "{} tensors", tensors.len());
    for (name, info) in tensors {
        assert_eq!(info["dtype"], "BF16", "{name}");
    }
}

#[test]
fn tokens_on_held_out_frames_equal_the_ones_pytorch_computed_at_export() {
    let cases = fixture_cases(&sim_fixture_dir());
    assert!(cases.len() >= 8, "{} cases", cases.len());
    let mut policy: Option<CpuPolicy> = None;
    for case in &cases {
        let policy = policy.get_or_insert_with(|| {
            let options = PolicyOptions {
                unnorm_key: Some(case.str("unnorm_key").to_string()),
                ..PolicyOptions::default()
            };
            CpuPolicy::load(&sim_model_dir(), &options).expect("trained checkpoint loads")
        });
        let image_bytes = std::fs::read(case.dir.join("image.png")).unwrap();
        assert_eq!(
            sha256_tag(&image_bytes),
            format!("sha256:{}", case.str("image_sha256")),
            "{}",
            case.name
        );
        let image = load_image(&case.dir.join("image.png")).expect("image loads");
        let prediction = policy
            .predict(&image, case.str("instruction"))
            .expect("predicts");
        case.assert_tokens(&prediction.tokens);
        let actions = case.f64s("actions");
        assert_eq!(actions.len(), 7, "{}: the fixture's actions", case.name);
        assert_eq!(prediction.action.len(), actions.len(), "{}", case.name);
        for (i, (got, want)) in prediction.action.iter().zip(actions).enumerate() {
            assert!(
                (got - want).abs() < 1e-9,
                "{} action[{i}]: {got} vs {want}",
                case.name
            );
        }
    }
}
