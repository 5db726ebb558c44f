//! Image file → action, through the preprocessing, the CPU policy and `vla-rt predict`,
//! against the reference fixtures (tests/fixtures/openvla-tiny).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{max_abs, tiny_cases, tiny_model_dir};
use vla_rt::backend::cpu::CpuPolicy;
use vla_rt::policy::{Policy, PolicyOptions};
use vla_rt::preprocess::load_image;

fn assert_close_f64(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-6, "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn image_to_action_matches_reference_for_every_case() {
    for case in tiny_cases() {
        let options = PolicyOptions {
            unnorm_key: Some(case.str("unnorm_key").to_string()),
            ..PolicyOptions::default()
        };
        let mut policy = CpuPolicy::load(&tiny_model_dir(), &options).expect("policy loads");
        let image = load_image(&case.dir.join("image.png")).expect("image loads");
        let prediction = policy
            .predict(&image, case.str("instruction"))
            .expect("predicts");

        let pixels = case.npy("pixel_values.npy");
        let pixel_error = max_abs(policy.last_pixel_values(), &pixels.data);
        assert!(
            pixel_error <= 1e-5,
            "{} pixel_values max abs {pixel_error:e}",
            case.name
        );
        case.assert_tokens(&prediction.tokens);
        assert_close_f64(
            &case.name,
            &prediction.normalized,
            &case.f64s("normalized_actions"),
        );
        assert_close_f64(&case.name, &prediction.action, &case.f64s("actions"));
        assert!(prediction.timings.total_ms >= prediction.timings.vision_ms);
    }
}

#[test]
fn predict_json_prints_the_reference_action() {
    let case = tiny_cases().pop().expect("a case");
    let output = Command::new(env!("CARGO_BIN_EXE_vla-rt"))
        .args(["predict", "--model"])
        .arg(tiny_model_dir())
        .arg("--image")
        .arg(case.dir.join("image.png"))
        .args(["--instruction", case.str("instruction")])
        .args(["--unnorm-key", case.str("unnorm_key"), "--json"])
        .output()
        .expect("run vla-rt");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "one JSON object: {stdout}"
    );
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let tokens: Vec<u32> = json["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(tokens, case.u32s("generated_token_ids"));
    let floats = |key: &str| -> Vec<f64> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    assert_close_f64(
        "normalized",
        &floats("normalized"),
        &case.f64s("normalized_actions"),
    );
    assert_close_f64("action", &floats("action"), &case.f64s("actions"));
    for stage in [
        "preprocess",
        "vision",
        "projector",
        "prefill",
        "decode",
        "total",
    ] {
        assert!(
            json["timings_ms"][stage].as_f64().is_some(),
            "timings_ms.{stage}"
        );
    }
}
