//! Batched inference (`Policy::predict_batch`) on the bundled tiny checkpoint: a batch gives
//! each request the tokens and actions `predict` gives it alone, for f32, INT8 and INT4
//! weights; the f32 tokens are the reference tokens of tests/fixtures/openvla-tiny; a bad
//! request fails alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use vla_model::backend::cpu::CpuPolicy;
use vla_model::model::ModelError;
use vla_model::policy::{
    BatchRequest, Policy, PolicyError, PolicyOptions, Prediction, Quantization,
};
use vla_model::preprocess::{load_image, RgbImage};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny_model_dir() -> PathBuf {
    repo_root().join("engines/openvla-tiny")
}

/// One case of tests/fixtures/openvla-tiny/expected.json with its image.
struct Case {
    name: String,
    image: RgbImage,
    instruction: String,
    unnorm_key: String,
    /// The reference's `generated_token_ids`.
    tokens: Vec<u32>,
    /// The reference's un-normalised `actions`.
    actions: Vec<f64>,
}

fn tiny_cases() -> Vec<Case> {
    let dir = repo_root().join("tests/fixtures/openvla-tiny");
    let text = std::fs::read_to_string(dir.join("expected.json")).expect("expected.json");
    let expected: serde_json::Value = serde_json::from_str(&text).expect("expected.json parses");
    expected["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let name = c["name"].as_str().expect("name").to_string();
            let image = load_image(&dir.join(&name).join("image.png")).expect("image loads");
            Case {
                image,
                instruction: c["instruction"].as_str().expect("instruction").to_string(),
                unnorm_key: c["unnorm_key"].as_str().expect("unnorm_key").to_string(),
                tokens: c["generated_token_ids"]
                    .as_array()
                    .expect("tokens")
                    .iter()
                    .map(|t| t.as_u64().expect("token id") as u32)
                    .collect(),
                actions: c["actions"]
                    .as_array()
                    .expect("actions")
                    .iter()
                    .map(|a| a.as_f64().expect("action"))
                    .collect(),
                name,
            }
        })
        .collect()
}

fn policy(quantization: Quantization, unnorm_key: &str) -> CpuPolicy {
    let options = PolicyOptions {
        unnorm_key: Some(unnorm_key.to_string()),
        quantization,
        ..PolicyOptions::default()
    };
    CpuPolicy::load(&tiny_model_dir(), &options).expect("tiny checkpoint loads")
}

fn requests<'a>(pairs: &[(&'a RgbImage, &'a str)]) -> Vec<BatchRequest<'a>> {
    pairs
        .iter()
        .map(|&(image, instruction)| BatchRequest { image, instruction })
        .collect()
}

fn unwrap_all(results: Vec<Result<Prediction, PolicyError>>) -> Vec<Prediction> {
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("request {i} failed: {e}")))
        .collect()
}

/// Batches of 1, 2 and 3 requests (different images, instructions of different prompt
/// lengths, in several orders) give each request exactly the tokens and actions of
/// `predict` alone, with f32, INT8 and INT4 weights.
#[test]
fn batches_match_single_predictions_for_every_weight_format() {
    let cases = tiny_cases();
    let mut pairs: Vec<(&RgbImage, &str)> = cases
        .iter()
        .map(|c| (&c.image, c.instruction.as_str()))
        .collect();
    // Prompts shorter and longer than the fixture's, on images of other cases.
    pairs.push((&cases[0].image, "wave"));
    pairs.push((
        &cases[2].image,
        "put the small red block on top of the tall green tower next to the window",
    ));
    // The batch of 5 runs the quantized layers as tiled matrix products (above 4 rows).
    let batches: [&[usize]; 8] = [
        &[0],
        &[4],
        &[0, 1],
        &[3, 2],
        &[0, 1, 2],
        &[4, 3, 1],
        &[2, 0, 4],
        &[1, 4, 0, 3, 2],
    ];
    for quantization in [Quantization::None, Quantization::Int8, Quantization::Int4] {
        let mut policy = policy(quantization, &cases[0].unnorm_key);
        assert!(policy.batches_natively());
        let single: Vec<Prediction> = pairs
            .iter()
            .map(|&(image, instruction)| policy.predict(image, instruction).expect("predicts"))
            .collect();
        let mut prompt_lens: Vec<usize> = pairs
            .iter()
            .map(|&(_, instruction)| policy.runner().prompt_ids(instruction).unwrap().len())
            .collect();
        prompt_lens.dedup();
        assert!(prompt_lens.len() >= 4, "prompt lengths {prompt_lens:?}");
        // Every batch twice: the second run reuses the pooled states of the first.
        for &batch in batches.iter().chain(batches.iter()) {
            let chosen: Vec<_> = batch.iter().map(|&i| pairs[i]).collect();
            let predictions = unwrap_all(policy.predict_batch(&requests(&chosen)));
            assert_eq!(predictions.len(), batch.len());
            for (p, &i) in predictions.iter().zip(batch) {
                assert_eq!(
                    p.tokens, single[i].tokens,
                    "{quantization:?}, batch {batch:?}, request {i}: tokens"
                );
                assert_eq!(p.normalized, single[i].normalized);
                assert_eq!(p.action, single[i].action);
            }
            // Every member carries the batch's timings.
            assert!(predictions
                .iter()
                .all(|p| p.timings == predictions[0].timings));
            assert!(predictions[0].timings.total_ms >= predictions[0].timings.decode_ms);
        }
        // The single path is unchanged after batches ran.
        let again = policy
            .predict(pairs[0].0, pairs[0].1)
            .expect("predicts again");
        assert_eq!(again.tokens, single[0].tokens);
    }
}

/// With f32 weights a batch of the fixture's three cases gives the reference tokens of each,
/// and the reference actions for the cases of the policy's dataset statistics.
#[test]
fn f32_batch_gives_the_reference_tokens() {
    let cases = tiny_cases();
    let mut keys: Vec<&str> = cases.iter().map(|c| c.unnorm_key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let mut policy = policy(Quantization::None, key);
        for order in [[0usize, 1, 2], [2, 1, 0]] {
            let chosen: Vec<_> = order
                .iter()
                .map(|&i| (&cases[i].image, cases[i].instruction.as_str()))
                .collect();
            let predictions = unwrap_all(policy.predict_batch(&requests(&chosen)));
            for (p, &i) in predictions.iter().zip(&order) {
                let case = &cases[i];
                assert_eq!(p.tokens, case.tokens, "{}: tokens", case.name);
                if case.unnorm_key == key {
                    assert_eq!(p.action.len(), case.actions.len());
                    for (j, (got, want)) in p.action.iter().zip(&case.actions).enumerate() {
                        assert!(
                            (got - want).abs() < 1e-6,
                            "{} action[{j}]: {got} vs {want}",
                            case.name
                        );
                    }
                }
            }
        }
    }
}

/// An empty instruction or a prompt longer than the KV cache takes fails its own request;
/// the others in the batch get their reference tokens.
#[test]
fn a_bad_request_fails_alone() {
    let cases = tiny_cases();
    let mut policy = policy(Quantization::None, &cases[0].unnorm_key);
    let too_long = "move ".repeat(2000);
    let chosen = [
        (&cases[0].image, cases[0].instruction.as_str()),
        (&cases[1].image, "   "),
        (&cases[2].image, cases[2].instruction.as_str()),
        (&cases[1].image, too_long.as_str()),
        (&cases[1].image, cases[1].instruction.as_str()),
    ];
    let results = policy.predict_batch(&requests(&chosen));
    assert_eq!(results.len(), chosen.len());
    match &results[1] {
        Err(e @ PolicyError::EmptyInstruction) => assert!(e.is_bad_input()),
        other => panic!("empty instruction: {other:?}"),
    }
    match &results[3] {
        Err(e @ PolicyError::Model(ModelError::PromptTooLong { .. })) => {
            assert!(e.is_bad_input())
        }
        other => panic!("too-long prompt: {other:?}"),
    }
    for (r, case) in [
        (&results[0], &cases[0]),
        (&results[2], &cases[2]),
        (&results[4], &cases[1]),
    ] {
        let p = r.as_ref().expect("a good request succeeds");
        assert_eq!(p.tokens, case.tokens, "{}", case.name);
    }

    // At the runner: `pixel_values` of the wrong size fail their own request.
    let good = policy.last_pixel_values().to_vec();
    let bad = vec![0.0f32; good.len() - 1];
    let results = policy.runner_mut().predict_pixels_batch(
        &[&good, &bad, &good],
        &["pick up the cup", "pick up the cup", "open the drawer"],
    );
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(PolicyError::Model(_))),
        "{results:?}"
    );

    // An empty batch, and a batch of only bad requests.
    assert!(policy.predict_batch(&[]).is_empty());
    let results = policy.predict_batch(&requests(&[(&cases[0].image, "")]));
    assert!(matches!(results[..], [Err(PolicyError::EmptyInstruction)]));
}

/// A policy that does not batch runs `predict` on each request in turn.
#[test]
fn the_provided_batch_runs_predict_in_order() {
    struct Echo(Vec<String>);
    impl Policy for Echo {
        fn predict(
            &mut self,
            image: &RgbImage,
            instruction: &str,
        ) -> Result<Prediction, PolicyError> {
            if instruction.is_empty() {
                return Err(PolicyError::EmptyInstruction);
            }
            self.0.push(instruction.to_string());
            Ok(Prediction {
                tokens: vec![image.width],
                normalized: Vec::new(),
                action: Vec::new(),
                actions: vec![Vec::new()],
                timings: Default::default(),
            })
        }
        fn action_dim(&self) -> usize {
            7
        }
        fn backend_name(&self) -> &'static str {
            "echo"
        }
        fn model_name(&self) -> &str {
            "echo"
        }
    }
    let image = |width| RgbImage {
        width,
        height: 1,
        data: vec![0; width as usize * 3],
    };
    let (a, b) = (image(2), image(3));
    let mut policy = Echo(Vec::new());
    assert!(!policy.batches_natively());
    let results = policy.predict_batch(&requests(&[(&a, "one"), (&b, ""), (&b, "three")]));
    assert_eq!(results[0].as_ref().unwrap().tokens, [2]);
    assert!(matches!(results[1], Err(PolicyError::EmptyInstruction)));
    assert_eq!(results[2].as_ref().unwrap().tokens, [3]);
    assert_eq!(policy.0, ["one", "three"]);
}
