//! Bad input to the preprocess stage: every failure is an error naming the culprit (file,
//! key, size), never a panic.
// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use vla_rt::preprocess::{load_image, Normalization, PreprocessError, Preprocessor, RgbImage};

/// A fresh directory for one test's files.
fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vla-rt-preprocess-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn engine_config() -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("engines/openvla-tiny/preprocessor_config.json");
    std::fs::read_to_string(path).unwrap()
}

/// Writes `text` as a config file and returns the error loading it gives.
fn config_error(test: &str, text: &str) -> (PathBuf, String) {
    let path = scratch_dir(test).join("preprocessor_config.json");
    std::fs::write(&path, text).unwrap();
    let error = Preprocessor::from_config_file(&path).unwrap_err();
    assert!(matches!(error, PreprocessError::Config { .. }), "{error:?}");
    (path, error.to_string())
}

/// Loading `path` must fail with an image error that names it.
fn assert_image_error_names_path(path: &Path) {
    match load_image(path) {
        Ok(image) => panic!(
            "{} decoded as {}x{}",
            path.display(),
            image.width,
            image.height
        ),
        Err(error) => {
            assert!(matches!(error, PreprocessError::Image { .. }), "{error:?}");
            assert_names(&error.to_string(), &[&path.display().to_string()]);
        }
    }
}

fn assert_names(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "{message:?} does not mention {part:?}"
        );
    }
}

#[test]
fn missing_config_file_names_the_path() {
    let path = scratch_dir("missing-config").join("no_such_preprocessor_config.json");
    let error = Preprocessor::from_config_file(&path).unwrap_err();
    assert!(matches!(error, PreprocessError::Config { .. }), "{error:?}");
    assert_names(
        &error.to_string(),
        &[&path.display().to_string(), "cannot read"],
    );
}

#[test]
fn malformed_config_json_names_the_path() {
    let (path, message) = config_error("malformed", "{\"tvf_normalize_params\": [");
    assert_names(&message, &[&path.display().to_string(), "invalid JSON"]);
}

#[test]
fn config_without_normalize_params_names_the_key() {
    let (path, message) = config_error("no-key", "{\"image_resize_strategy\": \"resize-naive\"}");
    assert_names(
        &message,
        &[&path.display().to_string(), "tvf_normalize_params"],
    );
}

#[test]
fn config_with_one_normalisation_names_the_key() {
    let text = r#"{"tvf_normalize_params": [{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}]}"#;
    let (path, message) = config_error("one-entry", text);
    assert_names(
        &message,
        &[
            &path.display().to_string(),
            "tvf_normalize_params",
            "1 entries",
        ],
    );
}

#[test]
fn config_with_zero_std_names_the_field() {
    let text = engine_config().replacen("\"std\": [\n        0.5", "\"std\": [\n        0.0", 1);
    assert_ne!(text, engine_config(), "the edit must hit the SigLIP std");
    let (path, message) = config_error("zero-std", &text);
    assert_names(
        &message,
        &[&path.display().to_string(), "tvf_normalize_params[1].std"],
    );
}

#[test]
fn config_with_two_mean_values_names_the_field() {
    let text = r#"{"tvf_normalize_params": [
        {"mean": [0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}]}"#;
    let (_, message) = config_error("short-mean", text);
    assert_names(&message, &["tvf_normalize_params[0].mean"]);
}

#[test]
fn config_with_a_missing_std_names_the_field() {
    let text = r#"{"tvf_normalize_params": [{"mean": [0.5, 0.5, 0.5]}, {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}]}"#;
    let (path, message) = config_error("no-std", text);
    assert_names(&message, &[&path.display().to_string(), "std"]);
}

#[test]
fn config_asking_for_another_resize_is_refused() {
    // A resize-crop checkpoint stores an int size: running it as resize-naive would be wrong.
    let text = engine_config().replacen(
        "\"size\": [\n        224,\n        224\n      ]",
        "\"size\": 224",
        1,
    );
    assert_ne!(text, engine_config(), "the edit must hit tvf_resize_params");
    let (_, message) = config_error("int-size", &text);
    assert_names(&message, &["tvf_resize_params[0].size"]);

    let text = engine_config().replacen("\"interpolation\": 3", "\"interpolation\": 2", 1);
    let (_, message) = config_error("bilinear", &text);
    assert_names(&message, &["tvf_resize_params[0].interpolation"]);

    let text = engine_config().replacen(
        "\"tvf_do_letterbox\": false",
        "\"tvf_do_letterbox\": true",
        1,
    );
    assert_ne!(text, engine_config());
    let (_, message) = config_error("letterbox", &text);
    assert_names(&message, &["tvf_do_letterbox"]);
}

#[test]
fn missing_image_names_the_path() {
    let path = scratch_dir("missing-image").join("no_such_frame.png");
    assert_image_error_names_path(&path);
}

#[test]
fn a_text_file_is_not_an_image() {
    let path = scratch_dir("text-image").join("frame.png");
    std::fs::write(&path, "this is not a picture\n").unwrap();
    assert_image_error_names_path(&path);
}

#[test]
fn truncated_png_and_jpeg_name_the_path() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/openvla-tiny/case2_320x240/image.png");
    let png = std::fs::read(&fixture).unwrap();
    let dir = scratch_dir("truncated");

    let path = dir.join("truncated.png");
    std::fs::write(&path, &png[..png.len() / 3]).unwrap();
    assert_image_error_names_path(&path);

    let rgb = image::load_from_memory(&png).unwrap().into_rgb8();
    let mut jpeg = Vec::new();
    rgb.write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    let path = dir.join("truncated.jpg");
    std::fs::write(&path, &jpeg[..jpeg.len() / 4]).unwrap();
    assert_image_error_names_path(&path);
}

#[test]
fn any_colour_type_loads_as_rgb() {
    let dir = scratch_dir("colour-types");

    let grey = image::GrayImage::from_fn(5, 3, |x, y| image::Luma([(x * 40 + y) as u8]));
    let path = dir.join("grey.png");
    grey.save(&path).unwrap();
    let loaded = load_image(&path).unwrap();
    assert_eq!((loaded.width, loaded.height), (5, 3));
    assert_eq!(&loaded.data[3 * 7..3 * 8], &[81, 81, 81]); // x = 2, y = 1

    let rgba = image::RgbaImage::from_fn(4, 2, |x, y| image::Rgba([x as u8, y as u8, 200, 17]));
    let path = dir.join("rgba.png");
    rgba.save(&path).unwrap();
    let loaded = load_image(&path).unwrap();
    assert_eq!(loaded.data.len(), 4 * 2 * 3);
    assert_eq!(&loaded.data[3 * 5..3 * 6], &[1, 1, 200]); // alpha dropped

    // A JPEG with a PNG name: the content decides the format.
    let rgb = image::RgbImage::from_pixel(16, 8, image::Rgb([10, 120, 240]));
    let path = dir.join("really_a_jpeg.png");
    rgb.write_to(
        &mut std::io::BufWriter::new(std::fs::File::create(&path).unwrap()),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    let loaded = load_image(&path).unwrap();
    assert_eq!((loaded.width, loaded.height), (16, 8));
    for (ours, expected) in loaded.data[..3].iter().zip([10u8, 120, 240]) {
        assert!(ours.abs_diff(expected) <= 3, "{:?}", &loaded.data[..3]);
    }
}

#[test]
fn inconsistent_image_buffers_and_outputs_are_errors() {
    let half = Normalization {
        mean: [0.5; 3],
        std: [0.5; 3],
    };
    let mut preprocessor = Preprocessor::new([half, half]);
    let mut out = vec![0f32; preprocessor.output_len()];
    for (width, height, bytes) in [(640, 480, 640 * 480 * 3 - 1), (0, 480, 0), (10, 0, 0)] {
        let image = RgbImage {
            width,
            height,
            data: vec![0; bytes],
        };
        let error = preprocessor.run(&image, &mut out).unwrap_err();
        assert!(
            matches!(error, PreprocessError::BadSize { width: w, height: h, bytes: b }
                if (w, h, b) == (width, height, bytes)),
            "{error:?}"
        );
    }
    let image = RgbImage {
        width: 8,
        height: 8,
        data: vec![0; 8 * 8 * 3],
    };
    let mut short = vec![0f32; preprocessor.output_len() - 1];
    let error = preprocessor.run(&image, &mut short).unwrap_err();
    assert!(
        matches!(error, PreprocessError::OutputLen { expected, got }
            if expected == 6 * 224 * 224 && got == expected - 1),
        "{error:?}"
    );
}
