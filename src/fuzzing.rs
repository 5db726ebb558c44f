//! Harnesses for every parser of outside input, one function per target, each taking
//! arbitrary bytes. The cargo-fuzz targets in `fuzz/` call them, and `tests/fuzz_corpus.rs`
//! replays each target's minimized corpus (`fuzz/corpus/<target>/`) through them on stable
//! Rust, so a finding stays fixed.
//!
//! A harness returns normally for every input: a parser must answer bad input with an error,
//! and a panic (an index out of range, an overflow, a failed invariant below) is a finding.
//! Files the loaders read from disk are written to a folder private to the process first.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::calibration::Calibration;
use crate::capture::mjpeg::MjpegDecoder;
use crate::capture::v4l2_convert;
use crate::config::ServiceConfig;
use crate::control::command_record::{CommandRecord, RECORD_LEN};
use crate::model::checkpoint::Checkpoint;
use crate::model::config::OpenVlaConfig;
use crate::model::prompt::PromptTokenizer;
use crate::model::quant_file::QuantizedFile;
use crate::model::torch_pt::TorchStateDict;
use crate::model::ModelError;
use crate::transport::zenoh_io::{parse_instruction, text_prefix, INSTRUCTION_LOG_CHARS};

/// A fuzz target: its name (the folder of its corpus) and its harness.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, in the order `fuzz/run.sh` runs them.
pub const TARGETS: [Target; 12] = [
    ("command_record", command_record),
    ("service_config", service_config),
    ("calibration_file", calibration_file),
    ("checkpoint", checkpoint),
    ("quantized_file", quantized_file),
    ("torch_pt", torch_pt),
    ("instruction", instruction),
    ("raw_frame", raw_frame),
    ("mjpeg_frame", mjpeg_frame),
    ("ros2_message", ros2_message),
    ("remote_message", remote_message),
    ("proprio_message", proprio_message),
];

/// The robot-state payload of `vla/<robot_id>/proprio`, for a state length of 1 to 16 (the
/// first byte): whatever it accepts has exactly that many finite values and encodes back to
/// a payload it accepts with the same values, to the last bit but one (serde_json's default
/// number parser, without `float_roundtrip`, may be one ULP off on a long mantissa).
pub fn proprio_message(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let dim = usize::from(selector % 16) + 1;
    if let Ok((state, capture_time_ns)) = crate::service::proprio::parse_proprio(payload, dim) {
        assert_eq!(state.len(), dim);
        assert!(state.iter().all(|v| v.is_finite()), "{state:?}");
        let again = serde_json::json!({"state": state, "capture_time_ns": capture_time_ns});
        let text = again.to_string();
        if text.len() <= crate::service::proprio::MAX_PROPRIO_BYTES {
            let parsed = crate::service::proprio::parse_proprio(text.as_bytes(), dim);
            let Ok((again, again_time)) = parsed else {
                panic!("{text}: its own encoding is refused: {parsed:?}");
            };
            assert_eq!(again_time, capture_time_ns, "{text}");
            for (a, b) in again.iter().zip(&state) {
                assert!(
                    (a - b).abs() <= 2.0 * f64::EPSILON * b.abs(),
                    "{text}: {a} {b}"
                );
            }
        }
    }
}

/// The command record decoder: whatever it accepts encodes back to the same bytes.
pub fn command_record(data: &[u8]) {
    if let Ok(record) = CommandRecord::decode(data) {
        let mut again = [0u8; RECORD_LEN];
        record.encode(&mut again);
        assert_eq!(&again[..], data, "decode/encode round trip");
    }
}

/// The service config (TOML): parse, then validate.
pub fn service_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = ServiceConfig::from_toml_str(text, "fuzz.toml") {
        let _ = config.validate("fuzz.toml");
    }
}

/// The calibration file's text (format, version, fields, checksum, scales).
pub fn calibration_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(calibration) = Calibration::parse(text, "fuzz.toml") {
        for layer in &calibration.projector_scales.layers {
            assert!(layer.scale.is_finite() && layer.scale > 0.0, "{layer:?}");
        }
    }
}

/// Splits `data` into `count` length-prefixed parts (u16 little-endian each) and the rest.
fn split_parts(mut data: &[u8], count: usize) -> (Vec<&[u8]>, &[u8]) {
    let mut parts = Vec::with_capacity(count);
    for _ in 0..count {
        let len = match data {
            [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
            _ => 0,
        };
        data = data.get(2..).unwrap_or(&[]);
        let len = len.min(data.len());
        parts.push(&data[..len]);
        data = &data[len..];
    }
    (parts, data)
}

/// A folder private to this process (and thread) for the files a loader reads.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "vla-rt-fuzz-{}-{:?}-{name}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn write(path: &Path, bytes: &[u8]) {
    // A write that fails leaves the loader a missing file: an error it must report anyway.
    let _ = std::fs::write(path, bytes);
}

/// Checkpoint loading: `config.json`, then the safetensors header and every tensor of a
/// single `model.safetensors` or of shards listed by `model.safetensors.index.json`.
/// Layout: one flag byte (bit 0: with an index), then `config.json` and the index as
/// length-prefixed parts, then the safetensors bytes.
pub fn checkpoint(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (parts, weights) = split_parts(rest, 2);
    let dir = scratch_dir("checkpoint");
    if let Ok(text) = std::str::from_utf8(parts[0]) {
        let _ = OpenVlaConfig::from_json_str(text, &dir.join("config.json"));
    }
    if flags & 1 == 1 {
        write(&dir.join("model.safetensors.index.json"), parts[1]);
        write(&dir.join("model-00001-of-00001.safetensors"), weights);
    } else {
        write(&dir.join("model.safetensors"), weights);
    }
    if let Ok(ckpt) = Checkpoint::open_dir(&dir) {
        let names: Vec<String> = ckpt.names().map(str::to_string).collect();
        for name in names {
            let Ok(shape) = ckpt.shape(&name).map(<[usize]>::to_vec) else {
                continue;
            };
            if let Ok((values, got)) = ckpt.f32_any_shape(&name) {
                assert_eq!(got, shape, "{name}");
                assert_eq!(values.len(), shape.iter().product::<usize>(), "{name}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The hash the quantized-file target's files are checked against (its seeds carry it).
pub const FUZZ_CHECKPOINT_HASH: &str = "fuzz";

/// The pre-quantized weight file: header, metadata checks, and every stored layer read
/// back at the shape its `qweight` declares.
pub fn quantized_file(data: &[u8]) {
    let dir = scratch_dir("quantized");
    let path = dir.join("weights.safetensors");
    write(&path, data);
    if let Ok(file) = QuantizedFile::open_expecting(&path, || Ok(FUZZ_CHECKPOINT_HASH.into())) {
        let layers: Vec<String> = file.layers().map(str::to_string).collect();
        for layer in layers {
            let Some(shape) = file.tensor_shape(&format!("{layer}.qweight")) else {
                continue;
            };
            let (out, packed_in) = match shape {
                [out, packed_in] => (*out, *packed_in),
                _ => continue,
            };
            for in_features in [packed_in, packed_in.saturating_mul(2)] {
                let _ = file.layer_weights(&layer, out, in_features);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A PyTorch `.pt` state dict: the zip archive, the restricted pickle machine, each
/// tensor's bounds against its storage; what loads converts to f32 at its declared size.
/// Layout: one flag byte; bit 0 clear, the rest is a `.pt` file; set, the rest is a
/// `data.pkl` and storages `0` to `3` as length-prefixed parts, which the harness stores in
/// a zip beside a little-endian `byteorder` (the CRCs of a mutated `.pt` turn away nearly
/// every change to its pickle before the pickle is read).
pub fn torch_pt(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let archive;
    let bytes = if flags & 1 == 1 {
        let (parts, _) = split_parts(rest, 5);
        let names = [
            "archive/data.pkl",
            "archive/data/0",
            "archive/data/1",
            "archive/data/2",
            "archive/data/3",
        ];
        let mut entries: Vec<(&str, &[u8])> = names.iter().copied().zip(parts).collect();
        entries.push(("archive/byteorder", b"little"));
        archive = stored_zip(&entries);
        &archive[..]
    } else {
        rest
    };
    let Ok(state) = TorchStateDict::from_bytes(bytes, Path::new("fuzz.pt")) else {
        return;
    };
    for tensor in state.tensors() {
        let numel: usize = tensor.shape().iter().product();
        assert_eq!(tensor.numel(), numel, "{}", tensor.name());
        assert_eq!(
            tensor.bytes().len(),
            numel * tensor.dtype().size(),
            "{}",
            tensor.name()
        );
        if let Ok(values) = tensor.to_f32() {
            assert_eq!(values.len(), numel, "{}", tensor.name());
        }
    }
    let _ = state.strip_module_prefix();
}

/// A zip of uncompressed entries, as `torch.save` writes them (without its alignment
/// padding).
pub fn stored_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    fn u16_le(out: &mut Vec<u8>, v: usize) {
        out.extend_from_slice(&(v as u16).to_le_bytes());
    }
    fn u32_le(out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32fast::hash(data);
        // Local header: signature, version 2.0, flags, method 0 (stored), time, date, CRC,
        // sizes, name and extra lengths.
        u32_le(&mut out, 0x0403_4b50);
        for v in [20, 0, 0, 0, 0x21] {
            u16_le(&mut out, v);
        }
        u32_le(&mut out, crc);
        u32_le(&mut out, data.len() as u32);
        u32_le(&mut out, data.len() as u32);
        u16_le(&mut out, name.len());
        u16_le(&mut out, 0);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        // Central directory record: the same, plus comment, disk, attributes and offset.
        u32_le(&mut central, 0x0201_4b50);
        for v in [20, 20, 0, 0, 0, 0x21] {
            u16_le(&mut central, v);
        }
        u32_le(&mut central, crc);
        u32_le(&mut central, data.len() as u32);
        u32_le(&mut central, data.len() as u32);
        for v in [name.len(), 0, 0, 0, 0] {
            u16_le(&mut central, v);
        }
        u32_le(&mut central, 0);
        u32_le(&mut central, offset);
        central.extend_from_slice(name.as_bytes());
    }
    let central_offset = out.len() as u32;
    out.extend_from_slice(&central);
    // End of central directory: disks, entry counts, directory size and offset, comment.
    u32_le(&mut out, 0x0605_4b50);
    for v in [0, 0, entries.len(), entries.len()] {
        u16_le(&mut out, v);
    }
    u32_le(&mut out, central.len() as u32);
    u32_le(&mut out, central_offset);
    u16_le(&mut out, 0);
    out
}

/// The bundled checkpoint's tokenizer (the real Llama-2 vocabulary and normalizer).
fn tokenizer() -> &'static Option<PromptTokenizer> {
    static TOKENIZER: OnceLock<Option<PromptTokenizer>> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("engines/openvla-tiny/tokenizer.json");
        PromptTokenizer::from_file(&path).ok()
    })
}

/// A prompt limit small enough that the byte pre-check is reached by short inputs.
const FUZZ_PROMPT_TOKENS: usize = 8;

/// An instruction payload as the service receives it, then the prompt path: the payload
/// check, the log prefix, and tokenizing within a token limit. The byte pre-check must never
/// refuse a text whose prompt would fit.
pub fn instruction(data: &[u8]) {
    let prefix = text_prefix(data, INSTRUCTION_LOG_CHARS);
    assert!(prefix.chars().count() <= INSTRUCTION_LOG_CHARS);
    let text = match parse_instruction(data, data.len()) {
        Ok(text) => text.to_string(),
        Err(_) => String::from_utf8_lossy(data).into_owned(),
    };
    let Some(tokenizer) = tokenizer() else {
        panic!("the bundled tokenizer (engines/openvla-tiny/tokenizer.json) does not load");
    };
    match tokenizer.encode_instruction_within(&text, FUZZ_PROMPT_TOKENS) {
        Ok(ids) => assert!(ids.len() <= FUZZ_PROMPT_TOKENS, "{} ids", ids.len()),
        Err(ModelError::PromptTooLong { what, .. }) if what.ends_with(" bytes") => {
            // Refused unread: the text's prompt must really be over the limit.
            if let Ok(ids) = tokenizer.encode_instruction(&text) {
                assert!(
                    ids.len() > FUZZ_PROMPT_TOKENS,
                    "{} bytes refused unread, but the prompt is {} tokens",
                    text.len(),
                    ids.len()
                );
            }
        }
        Err(_) => {}
    }
}

/// The V4L2 raw conversions (YUYV, RGB24, GREY) at any size and stride, zero included.
/// Layout: format selector, width and height (u16 each), stride (u32), then the frame.
pub fn raw_frame(data: &[u8]) {
    if data.len() < 9 {
        return;
    }
    let format = data[0] % 3;
    let width = u32::from(u16::from_le_bytes([data[1], data[2]]));
    let height = u32::from(u16::from_le_bytes([data[3], data[4]]));
    let stride = u32::from_le_bytes([data[5], data[6], data[7], data[8]]) as usize;
    let frame = &data[9..];
    // Sizes whose output would be large are cut down: the conversion refuses a short frame
    // before writing, so only sizes the frame could fill matter.
    if (width as usize).saturating_mul(height as usize) > 1 << 20 {
        return;
    }
    let mut rgb = Vec::new();
    let result = match format {
        0 => v4l2_convert::yuyv_to_rgb(frame, width, height, stride, &mut rgb),
        1 => v4l2_convert::rgb24_to_rgb(frame, width, height, stride, &mut rgb),
        _ => v4l2_convert::grey_to_rgb(frame, width, height, stride, &mut rgb),
    };
    if result.is_ok() {
        assert_eq!(rgb.len(), width as usize * height as usize * 3);
    }
}

/// The MJPEG decoder at any negotiated size, zero included. Layout: width and height (u16
/// each), then the JPEG bytes.
pub fn mjpeg_frame(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let width = u32::from(u16::from_le_bytes([data[0], data[1]]));
    let height = u32::from(u16::from_le_bytes([data[2], data[3]]));
    if (width as usize).saturating_mul(height as usize) > 1 << 22 {
        return;
    }
    let mut rgb = Vec::new();
    if MjpegDecoder::new(width, height)
        .decode_into(&data[4..], &mut rgb)
        .is_ok()
    {
        assert_eq!(rgb.len(), width as usize * height as usize * 3);
    }
}

/// The ROS 2 codec (`ros2::types`, `ros2::discovery`, `ros2::camera`). Input: one selector
/// byte, then the payload. 0 TwistStamped (what decodes re-encodes to a message that decodes
/// to the same value), 1 String, 2 Bool, 3 Float64MultiArray, 4 CompressedImage and 5 Image
/// (through the camera's conversion at 8x8, with a valid attachment), 6 the attachment.
pub fn ros2_message(data: &[u8]) {
    use crate::ros2::{camera, discovery, types};
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    match selector % 7 {
        0 => {
            if let Ok(twist) = types::TwistStamped::decode(payload) {
                let mut out =
                    vec![0u8; types::TWIST_STAMPED_FIXED_LEN + twist.header.frame_id.len()];
                let len = match twist.encode(&mut out) {
                    Ok(len) => len,
                    Err(e) => panic!("a decoded twist does not fit its own size: {e}"),
                };
                let again = match types::TwistStamped::decode(&out[..len]) {
                    Ok(again) => again,
                    Err(e) => panic!("a re-encoded twist does not decode: {e}"),
                };
                assert_eq!(again.header, twist.header);
                for (a, b) in again
                    .linear
                    .iter()
                    .chain(&again.angular)
                    .zip(twist.linear.iter().chain(&twist.angular))
                {
                    assert_eq!(a.to_bits(), b.to_bits(), "twist round trip");
                }
            }
        }
        1 => {
            if let Ok(text) = types::decode_string(payload, 1024) {
                assert!(text.len() <= 1024);
            }
        }
        2 => {
            let _ = types::decode_bool(payload);
        }
        3 => {
            if let Ok(values) = types::decode_float64_array(payload, 16) {
                assert!(values.len() <= 16);
            }
        }
        4 | 5 => {
            let message = if selector % 7 == 4 {
                &types::COMPRESSED_IMAGE
            } else {
                &types::IMAGE
            };
            let key = discovery::data_key(0, "/fuzz/image", message);
            let attachment = discovery::Attachment {
                sequence: 1,
                source_timestamp_ns: 1,
                gid: [0; 16],
            }
            .encode();
            let jpeg = MjpegDecoder::new(8, 8);
            let mut frame = crate::capture::Frame::default();
            if camera::convert(&key, Some(&attachment), payload, (8, 8), &jpeg, &mut frame).is_ok()
            {
                assert_eq!(frame.image.data.len(), 8 * 8 * 3);
            }
        }
        _ => {
            if let Ok(attachment) = discovery::Attachment::decode(payload) {
                assert_eq!(&attachment.encode()[..], payload, "attachment round trip");
            }
        }
    }
}

/// Remote inference's request and reply (`remote::wire`): the same bytes decoded as both.
/// A request that decodes encodes back to the same bytes; a reply that decodes encodes (as
/// the server writes it) to one that decodes to the same value, byte for byte unless its
/// message is over the 256 characters a server sends (then cut to those); an `ok` reply's
/// actions are all finite.
pub fn remote_message(data: &[u8]) {
    use crate::remote::wire::{Reply, ReplyParts, ReplyStatus, Request, MAX_REPLY_MESSAGE};
    if let Ok(request) = Request::decode(data) {
        let mut again = Vec::new();
        if let Err(e) = request.encode(&mut again) {
            panic!("a decoded request does not encode: {e}");
        }
        assert_eq!(again, data, "request round trip");
        assert_eq!(Request::decode(&again).as_ref(), Ok(&request));
    }
    let Ok(reply) = Reply::decode(data) else {
        return;
    };
    let actions: Vec<f32> = (0..reply.rows)
        .flat_map(|row| (0..reply.action_dim).map(move |column| (row, column)))
        .map(|(row, column)| reply.action(row, column))
        .collect();
    if reply.status == ReplyStatus::Ok {
        assert!(
            reply.rows > 0 && reply.action_dim > 0,
            "an ok reply without actions"
        );
        assert!(actions.iter().all(|v| v.is_finite()), "{actions:?}");
    }
    let tokens: Vec<u32> = reply.tokens().collect();
    let parts = ReplyParts {
        status: reply.status,
        request_id: reply.request_id,
        capture_time_ns: reply.capture_time_ns,
        timings: reply.timings,
        fingerprint: reply.fingerprint,
        server_id: reply.server_id,
        actions: &actions,
        action_dim: reply.action_dim,
        tokens: &tokens,
        message: reply.message,
    };
    let mut again = Vec::new();
    if let Err(e) = parts.encode(&mut again) {
        panic!("a decoded reply does not encode: {e}");
    }
    let decoded = match Reply::decode(&again) {
        Ok(decoded) => decoded,
        Err(e) => panic!("a re-encoded reply does not decode: {e}"),
    };
    let kept = MAX_REPLY_MESSAGE / 4;
    if reply.message.chars().count() <= kept {
        assert_eq!(again, data, "reply round trip");
        assert_eq!(decoded, reply);
    } else {
        let cut: String = reply.message.chars().take(kept).collect();
        assert_eq!(decoded.message, cut);
        let fields = |r: &Reply<'_>| {
            let bits: Vec<u32> = (0..r.rows)
                .flat_map(|row| (0..r.action_dim).map(move |column| (row, column)))
                .map(|(row, column)| r.action(row, column).to_bits())
                .collect();
            let tokens: Vec<u32> = r.tokens().collect();
            (
                (r.status, r.request_id, r.capture_time_ns, r.timings),
                (
                    r.fingerprint.to_string(),
                    r.server_id.to_string(),
                    r.rows,
                    r.action_dim,
                ),
                (bits, tokens),
            )
        };
        assert_eq!(fields(&decoded), fields(&reply), "reply round trip");
    }
}
