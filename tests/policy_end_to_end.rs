//! Image file → action, through the preprocessing, the CPU policy and `vla-rt predict`,
//! against the reference fixtures (tests/fixtures/openvla-tiny).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::synth::TempDir;
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
    assert_eq!(json_tokens(&json), case.u32s("generated_token_ids"));
    assert_close_f64(
        "normalized",
        &json_floats(&json, "normalized"),
        &case.f64s("normalized_actions"),
    );
    assert_close_f64(
        "action",
        &json_floats(&json, "action"),
        &case.f64s("actions"),
    );
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

fn json_floats(json: &serde_json::Value, key: &str) -> Vec<f64> {
    json[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array: {json}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn json_tokens(json: &serde_json::Value) -> Vec<u32> {
    json["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("tokens is not an array: {json}"))
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// `vla-rt predict --requests FILE` with these extra arguments: (exit code, stdout, stderr).
fn predict_requests(requests: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_vla-rt"))
        .args(["predict", "--model"])
        .arg(tiny_model_dir())
        .arg("--requests")
        .arg(requests)
        .args(extra)
        .env("RUST_LOG", "off")
        .output()
        .expect("run vla-rt");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn predict_requests_prints_the_reference_action_for_each_line() {
    let cases = tiny_cases();
    let dir = TempDir::new("predict-requests");
    // One image beside the request file, named relative to it; the others by absolute path.
    std::fs::copy(cases[0].dir.join("image.png"), dir.path().join("first.png")).unwrap();
    let line = |image: String, instruction: &str| {
        serde_json::json!({ "image": image, "instruction": instruction }).to_string()
    };
    let absolute = |i: usize| cases[i].dir.join("image.png").display().to_string();
    // The first case again at the end: nothing of one request may leak into the next.
    let order = [0, 1, 2, 0];
    let mut lines: Vec<String> = order
        .iter()
        .map(|&i| {
            let image = if i == 0 {
                "first.png".to_string()
            } else {
                absolute(i)
            };
            line(image, cases[i].str("instruction"))
        })
        .collect();
    lines.insert(2, String::new()); // a blank line is skipped
    let requests = dir.path().join("requests.jsonl");
    std::fs::write(&requests, lines.join("\n") + "\n").unwrap();

    let (code, stdout, stderr) = predict_requests(&requests, &["--unnorm-key", "tiny_bridge"]);
    assert_eq!(code, 0, "{stderr}");
    let answers: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        answers.len(),
        order.len(),
        "one JSON line a request: {stdout}"
    );
    for (answer, &i) in answers.iter().zip(&order) {
        let case = &cases[i];
        case.assert_tokens(&json_tokens(answer));
        assert_close_f64(
            &case.name,
            &json_floats(answer, "normalized"),
            &case.f64s("normalized_actions"),
        );
        // The statistics are the process's: actions match where the case used the same key.
        if case.str("unnorm_key") == "tiny_bridge" {
            assert_close_f64(
                &case.name,
                &json_floats(answer, "action"),
                &case.f64s("actions"),
            );
        }
        assert!(answer["timings_ms"]["total"].as_f64().is_some(), "{answer}");
        assert!(answer["load_ms"].as_f64().is_some(), "{answer}");
    }
}

#[test]
fn predict_requests_names_the_file_line_and_field_of_a_bad_line() {
    let image = tiny_cases()[0].dir.join("image.png").display().to_string();
    let good = serde_json::json!({ "image": image, "instruction": "pick up the block" });
    let cases: Vec<(&str, serde_json::Value, &[&str])> = vec![
        (
            "missing instruction",
            serde_json::json!({ "image": image }),
            &["instruction", "missing"],
        ),
        (
            "image not a string",
            serde_json::json!({ "image": 3, "instruction": "go" }),
            &["image", "string"],
        ),
        (
            "empty instruction",
            serde_json::json!({ "image": image, "instruction": "  " }),
            &["instruction", "empty"],
        ),
        (
            "no such image",
            serde_json::json!({ "image": "nowhere.png", "instruction": "go" }),
            &["image", "nowhere.png"],
        ),
        (
            "unknown field",
            serde_json::json!({ "image": image, "instruction": "go", "instuction": "go" }),
            &["instuction"],
        ),
        ("not an object", serde_json::json!(["a", "b"]), &["object"]),
    ];
    let dir = TempDir::new("predict-requests-bad");
    let requests = dir.path().join("requests.jsonl");
    let check = |label: &str, text: String, needles: &[&str]| {
        std::fs::write(&requests, text).unwrap();
        let (code, stdout, stderr) = predict_requests(&requests, &["--unnorm-key", "tiny_bridge"]);
        assert!(!stderr.contains("panicked"), "{label}: panic: {stderr}");
        assert_eq!(code, 2, "{label}: exit code {code}, stderr: {stderr}");
        assert!(
            stdout.is_empty(),
            "{label}: printed before the check: {stdout}"
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{label}: want one line, got: {stderr}");
        for needle in needles {
            assert!(
                lines[0].contains(needle),
                "{label}: `{needle}` not in: {}",
                lines[0]
            );
        }
    };
    let file = requests.display().to_string();
    for (label, bad, needles) in &cases {
        // The bad request on line 2, after a good one.
        let location = format!("{file}:2:");
        let mut wanted = vec![location.as_str()];
        wanted.extend(needles.iter());
        check(label, format!("{good}\n{bad}\n"), &wanted);
    }
    let location = format!("{file}:1:");
    check("not JSON", "{\"image\": \n".into(), &[&location, "JSON"]);
    check("no requests", "\n\n".into(), &[&file, "no requests"]);
    let absent = dir.path().join("absent.jsonl");
    let (code, _, stderr) = predict_requests(&absent, &[]);
    assert_eq!(code, 2, "missing file: {stderr}");
    assert!(
        stderr.contains("--requests") && stderr.contains("absent.jsonl"),
        "missing file: {stderr}"
    );
}

#[test]
fn predict_requests_excludes_image_and_instruction() {
    let dir = TempDir::new("predict-requests-conflict");
    let requests = dir.path().join("requests.jsonl");
    let image = tiny_cases()[0].dir.join("image.png").display().to_string();
    std::fs::write(
        &requests,
        serde_json::json!({ "image": image, "instruction": "go" }).to_string(),
    )
    .unwrap();
    let (code, _, stderr) = predict_requests(&requests, &["--image", &image]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--image"), "{stderr}");
}
