//! `for_each_linear_mut` visits every linear layer of the projector and the language model
//! under its checkpoint weight name, and a layer replaced through it is the one that runs
//! (how quantized weight formats are applied after loading).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use vla_rt::backend::cpu::CpuModelRunner;
use vla_rt::model::linear::Linear;
use vla_rt::model::openvla::OpenVla;
use vla_rt::policy::PolicyOptions;

#[test]
fn every_linear_is_visited_by_its_checkpoint_name() {
    let mut model = OpenVla::load(&common::tiny_model_dir()).unwrap();
    let mut names = Vec::new();
    model
        .for_each_linear_mut(&mut |name, linear| {
            names.push((
                name.to_string(),
                linear.out_features(),
                linear.in_features(),
            ));
            Ok(())
        })
        .unwrap();
    // 3 projector layers, 7 per Llama layer (2 layers), lm_head.
    assert_eq!(names.len(), 3 + 2 * 7 + 1);
    for expected in [
        ("projector.fc1", 352, 88),
        ("projector.fc3", 64, 64),
        ("language_model.model.layers.1.self_attn.q_proj", 64, 64),
        ("language_model.model.layers.0.mlp.down_proj", 64, 172),
        ("language_model.lm_head", 32064, 64),
    ] {
        let found = names
            .iter()
            .any(|(n, o, i)| (n.as_str(), *o, *i) == expected);
        assert!(found, "{expected:?} not visited; got {names:?}");
    }
}

#[test]
fn a_layer_replaced_through_the_hook_is_the_one_that_runs() {
    let mut model = OpenVla::load(&common::tiny_model_dir()).unwrap();
    // An lm_head with zero weights and a bias that is 1 only for token 31800: every logit
    // vector is that one-hot, whatever the hidden state.
    model
        .for_each_linear_mut(&mut |name, linear| {
            if name == "language_model.lm_head" {
                let (out, inp) = (linear.out_features(), linear.in_features());
                let mut bias = vec![0.0f32; out];
                bias[31800] = 1.0;
                *linear = Linear::from_f32(name, vec![0.0; out * inp], out, inp, Some(bias))?;
            }
            Ok(())
        })
        .unwrap();
    let options = PolicyOptions {
        unnorm_key: Some("tiny_bridge".into()),
        ..PolicyOptions::default()
    };
    let mut runner = CpuModelRunner::from_model(model, &options).unwrap();
    let case = &common::tiny_cases()[0];
    let pixels = case.npy("pixel_values.npy");
    let prediction = runner
        .predict_pixels(&pixels.data, case.str("instruction"))
        .unwrap();
    assert_eq!(prediction.tokens, vec![31800; 7]);
    let logits = runner
        .step0_logits(&pixels.data, case.str("instruction"))
        .unwrap();
    assert!(logits
        .iter()
        .enumerate()
        .all(|(i, &l)| l == if i == 31800 { 1.0 } else { 0.0 }));
}
