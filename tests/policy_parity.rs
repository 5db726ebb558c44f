//! Parity of the CPU model with OpenVLA's reference outputs (tests/fixtures/openvla-tiny),
//! from the fixtures' `pixel_values`: features, projector, step-0 logits, tokens, actions,
//! prompt ids. Tolerances are the fixture's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{max_abs, rel_l2, tiny_cases, tiny_model_dir};
use vla_rt::backend::cpu::CpuModelRunner;
use vla_rt::policy::PolicyOptions;

fn runner(unnorm_key: &str) -> CpuModelRunner {
    let options = PolicyOptions {
        unnorm_key: Some(unnorm_key.to_string()),
        ..PolicyOptions::default()
    };
    CpuModelRunner::load(&tiny_model_dir(), &options).expect("tiny checkpoint loads")
}

fn check_close(what: &str, case: &str, got: &[f32], want: &[f32], rel: f64, abs: f64) {
    let (r, a) = (rel_l2(got, want), max_abs(got, want));
    eprintln!("{case} {what}: rel L2 {r:.2e}, max abs {a:.2e}");
    assert!(
        r < rel && a < abs,
        "{case} {what}: rel L2 {r:.3e} (limit {rel:e}), max abs {a:.3e} (limit {abs:e})"
    );
}

#[test]
fn vision_features_and_projector_match_reference() {
    for case in tiny_cases() {
        let runner = runner(case.str("unnorm_key"));
        let pixels = case.npy("pixel_values.npy");
        assert_eq!(pixels.shape, vec![1, 6, 224, 224]);
        let features = runner.vision_features(&pixels.data).expect("vision runs");
        assert_eq!(features.len(), 2);
        let dino = case.npy("dinov2_patches.npy");
        let siglip = case.npy("siglip_patches.npy");
        check_close("dinov2", &case.name, &features[0], &dino.data, 1e-4, 1e-3);
        check_close("siglip", &case.name, &features[1], &siglip.data, 1e-4, 1e-3);
        let projected = runner
            .projector_output(&pixels.data)
            .expect("projector runs");
        let want = case.npy("projector_out.npy");
        check_close("projector", &case.name, &projected, &want.data, 1e-4, 1e-3);
    }
}

#[test]
fn prompt_ids_match_reference() {
    for case in tiny_cases() {
        let runner = runner(case.str("unnorm_key"));
        let ids = runner
            .prompt_ids(case.str("instruction"))
            .expect("prompt encodes");
        assert_eq!(ids, case.u32s("input_ids"), "{}", case.name);
    }
}

#[test]
fn step0_logits_tokens_and_actions_match_reference() {
    for case in tiny_cases() {
        let mut runner = runner(case.str("unnorm_key"));
        let pixels = case.npy("pixel_values.npy");
        let instruction = case.str("instruction");
        let logits = runner
            .step0_logits(&pixels.data, instruction)
            .expect("prefill runs");
        let want = case.npy("step0_logits.npy");
        let worst = max_abs(&logits, &want.data);
        eprintln!("{} step-0 logits: max abs {worst:.2e}", case.name);
        assert!(
            worst < 1e-3,
            "{} step-0 logits max abs {worst:.3e}",
            case.name
        );

        let prediction = runner
            .predict_pixels(&pixels.data, instruction)
            .expect("predicts");
        case.assert_tokens(&prediction.tokens);
        for (what, got, want) in [
            (
                "normalized",
                &prediction.normalized,
                case.f64s("normalized_actions"),
            ),
            ("actions", &prediction.action, case.f64s("actions")),
        ] {
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() < 1e-6,
                    "{} {what}[{i}]: {g} vs {w}",
                    case.name
                );
            }
        }
    }
}
