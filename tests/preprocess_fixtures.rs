//! Preprocessing against the reference fixtures (`tests/fixtures/openvla-tiny`, computed by
//! OpenVLA's processor with Pillow 10.3 and torchvision 0.17): the resize must equal
//! `resized_224.png` bit for bit and `pixel_values` must match within 1e-5.
// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/npy.rs"]
mod npy;

use std::path::{Path, PathBuf};

use vla_rt::preprocess::{load_image, Normalization, Preprocessor, RgbImage, INPUT_SIZE};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openvla-tiny")
}

fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("engines/openvla-tiny/preprocessor_config.json")
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

struct Case {
    name: String,
    image: PathBuf,
    size_wh: (u32, u32),
    resized: PathBuf,
    pixel_values: PathBuf,
}

/// Every case `expected.json` lists, so that a new case is tested without touching this file.
fn cases() -> Vec<Case> {
    let expected = expected();
    let cases: Vec<Case> = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| Case {
            name: case["name"].as_str().unwrap().to_owned(),
            image: fixture_dir().join(case["image"].as_str().unwrap()),
            size_wh: (
                case["image_size_wh"][0].as_u64().unwrap() as u32,
                case["image_size_wh"][1].as_u64().unwrap() as u32,
            ),
            resized: fixture_dir().join(case["resized_image"].as_str().unwrap()),
            pixel_values: fixture_dir().join(case["pixel_values"]["file"].as_str().unwrap()),
        })
        .collect();
    assert!(
        cases.len() >= 3,
        "expected.json lists {} cases",
        cases.len()
    );
    cases
}

/// The reference's resized image, decoded independently of the code under test.
fn reference_rgb(path: &Path) -> (u32, u32, Vec<u8>) {
    let image = image::open(path).unwrap().into_rgb8();
    let (width, height) = image.dimensions();
    (width, height, image.into_raw())
}

#[test]
fn config_gives_the_stored_bf16_rounded_constants() {
    let preprocessor = Preprocessor::from_config_file(&config_path()).unwrap();
    let params = &expected()["preprocessing"]["tvf_normalize_params"];
    for (index, normalization) in preprocessor.normalizations.iter().enumerate() {
        for channel in 0..3 {
            let mean = params[index]["mean"][channel].as_f64().unwrap() as f32;
            let std = params[index]["std"][channel].as_f64().unwrap() as f32;
            assert_eq!(normalization.mean[channel], mean, "normalization {index}");
            assert_eq!(normalization.std[channel], std, "normalization {index}");
        }
    }
    // The DINOv2 constants are ImageNet's rounded to bf16, not ImageNet's own.
    assert_eq!(preprocessor.normalizations[0].mean[0], 0.484375);
    assert_eq!(
        f64::from(preprocessor.normalizations[0].std[1]),
        0.2236328125
    );
    assert_eq!(preprocessor.output_len(), 6 * 224 * 224);
}

#[test]
fn resize_equals_pillow_bit_for_bit_on_every_case() {
    let mut preprocessor = Preprocessor::from_config_file(&config_path()).unwrap();
    for case in cases() {
        let image = load_image(&case.image).unwrap();
        assert_eq!((image.width, image.height), case.size_wh, "{}", case.name);
        let (ref_width, ref_height, reference) = reference_rgb(&case.resized);
        assert_eq!((ref_width, ref_height), (224, 224), "{}", case.name);

        let resized = preprocessor.resize(&image).unwrap();
        assert_eq!(resized.len(), reference.len(), "{}", case.name);
        let mismatches: Vec<(usize, u8, u8)> = resized
            .iter()
            .zip(&reference)
            .enumerate()
            .filter(|(_, (ours, theirs))| ours != theirs)
            .map(|(index, (ours, theirs))| (index, *ours, *theirs))
            .collect();
        assert!(
            mismatches.is_empty(),
            "{}: {} of {} bytes differ from Pillow, first (index, ours, Pillow): {:?}",
            case.name,
            mismatches.len(),
            reference.len(),
            &mismatches[..mismatches.len().min(5)]
        );
    }
}

#[test]
fn pixel_values_match_the_reference_on_every_case() {
    let mut preprocessor = Preprocessor::from_config_file(&config_path()).unwrap();
    let mut out = vec![f32::NAN; preprocessor.output_len()];
    for case in cases() {
        let image = load_image(&case.image).unwrap();
        let reference = npy::read_f32(&case.pixel_values).unwrap();
        assert_eq!(
            reference.shape,
            [1, 6, INPUT_SIZE, INPUT_SIZE],
            "{}",
            case.name
        );

        out.fill(f32::NAN);
        preprocessor.run(&image, &mut out).unwrap();
        let (worst_index, worst) = out
            .iter()
            .zip(&reference.data)
            .map(|(ours, theirs)| (ours - theirs).abs())
            .enumerate()
            // NaN (a value never written) must fail, so it counts as infinitely wrong.
            .map(|(index, diff)| (index, if diff.is_nan() { f32::INFINITY } else { diff }))
            .fold(
                (0, 0.0f32),
                |best, item| if item.1 > best.1 { item } else { best },
            );
        assert!(
            worst <= 1e-5,
            "{}: max |diff| {worst} at flat index {worst_index} (channel {})",
            case.name,
            worst_index / (INPUT_SIZE * INPUT_SIZE)
        );
    }
}

#[test]
fn a_224_square_input_is_not_resampled() {
    let case = cases()
        .into_iter()
        .find(|case| case.size_wh == (224, 224))
        .unwrap();
    let image = load_image(&case.image).unwrap();
    // The reference leaves it unchanged...
    let (_, _, reference) = reference_rgb(&case.resized);
    assert_eq!(reference, image.data);
    // ...and so do we: the very same bytes come back, no resampling pass ran.
    let mut preprocessor = Preprocessor::from_config_file(&config_path()).unwrap();
    let resized = preprocessor.resize(&image).unwrap();
    assert!(std::ptr::eq(resized, image.data.as_slice()));
}

#[test]
fn preprocessing_is_repeatable_across_frame_sizes() {
    // A camera that changes resolution must get the same result as a fresh preprocessor:
    // cached tap tables and scratch buffers must follow the size.
    let mut reused = Preprocessor::from_config_file(&config_path()).unwrap();
    let mut out = vec![0f32; reused.output_len()];
    let mut fresh_out = vec![0f32; reused.output_len()];
    let all = cases();
    for case in all.iter().chain(all.iter().rev()) {
        let image = load_image(&case.image).unwrap();
        reused.run(&image, &mut out).unwrap();
        let mut fresh = Preprocessor::from_config_file(&config_path()).unwrap();
        fresh.run(&image, &mut fresh_out).unwrap();
        assert_eq!(out, fresh_out, "{}", case.name);
    }
}

#[test]
fn explicit_normalizations_are_used() {
    // Identity normalisation leaves to_tensor's v / 255.
    let identity = Normalization {
        mean: [0.0; 3],
        std: [1.0; 3],
    };
    let mut preprocessor = Preprocessor::new([identity, identity]);
    let image = RgbImage {
        width: 224,
        height: 224,
        data: (0..224 * 224 * 3).map(|i| (i % 251) as u8).collect(),
    };
    let mut out = vec![0f32; preprocessor.output_len()];
    preprocessor.run(&image, &mut out).unwrap();
    let plane = 224 * 224;
    for pixel in [0usize, 1, 777, plane - 1] {
        for colour in 0..3 {
            let byte = image.data[pixel * 3 + colour];
            assert_eq!(out[colour * plane + pixel], byte as f32 / 255.0);
            assert_eq!(out[(3 + colour) * plane + pixel], byte as f32 / 255.0);
        }
    }
}
