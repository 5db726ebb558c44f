//! JSON schemas of the recorded channels (`jsonschema` encoding), so that Foxglove shows the
//! images and plots the numbers without any set-up.

/// foxglove.CompressedImage, as published in foxglove/schemas (JSON: `data` is base64).
pub const COMPRESSED_IMAGE: &str = r#"{
  "title": "foxglove.CompressedImage",
  "description": "A compressed image",
  "type": "object",
  "properties": {
    "timestamp": {
      "type": "object", "title": "time", "description": "Timestamp of image",
      "properties": {
        "sec": {"type": "integer", "minimum": 0},
        "nsec": {"type": "integer", "minimum": 0, "maximum": 999999999}
      }
    },
    "frame_id": {"type": "string", "description": "Frame of reference for the image"},
    "data": {"type": "string", "contentEncoding": "base64", "description": "Compressed image data"},
    "format": {"type": "string", "description": "Image format: jpeg or png"},
    "sequence": {"type": "integer", "description": "The camera's frame sequence number"}
  }
}"#;

pub const INSTRUCTION: &str = r#"{
  "title": "vla_rt.Instruction",
  "type": "object",
  "properties": {
    "text": {"type": "string", "description": "The task the policy runs with from here on"}
  }
}"#;

const ACTION_OBJECT: &str = r#"{
      "type": "object",
      "properties": {
        "dx": {"type": "number"}, "dy": {"type": "number"}, "dz": {"type": "number"},
        "droll": {"type": "number"}, "dpitch": {"type": "number"}, "dyaw": {"type": "number"},
        "gripper": {"type": "number"}
      }
    }"#;

pub fn prediction() -> String {
    format!(
        r#"{{
  "title": "vla_rt.Prediction",
  "type": "object",
  "properties": {{
    "frame_sequence": {{"type": "integer", "description": "Sequence of the frame in /policy/input"}},
    "capture_time_ns": {{"type": "integer"}},
    "trigger_tick": {{"type": "integer", "description": "Control tick that latched the frame"}},
    "instruction": {{"type": "string"}},
    "tokens": {{"type": "array", "items": {{"type": "integer"}}}},
    "normalized": {ACTION_OBJECT},
    "action": {ACTION_OBJECT},
    "actions": {{"type": "array", "items": {{"type": "array", "items": {{"type": "number"}}}}, "description": "The chunk, one row of 7 per step in execution order (action is the first; one row on the token path)"}},
    "proprio": {{"type": ["array", "null"], "items": {{"type": "number"}}, "description": "The robot's raw state the prediction took, for a checkpoint that takes it"}},
    "wrist_frame": {{"type": ["object", "null"], "description": "The wrist camera's frame in /policy/input/wrist, for a checkpoint that takes two images", "properties": {{"frame_sequence": {{"type": "integer"}}, "capture_time_ns": {{"type": "integer"}}}}}},
    "timings_ms": {{
      "type": "object",
      "properties": {{
        "preprocess": {{"type": "number"}}, "vision": {{"type": "number"}},
        "projector": {{"type": "number"}}, "prefill": {{"type": "number"}},
        "decode": {{"type": "number"}}, "total": {{"type": "number"}}
      }}
    }},
    "backend": {{"type": "string"}},
    "quantization": {{"type": "string"}},
    "projector": {{"type": "string"}},
    "model_fingerprint": {{"type": "string"}}
  }}
}}"#
    )
}

pub fn command() -> String {
    format!(
        r#"{{
  "title": "vla_rt.Command",
  "type": "object",
  "properties": {{
    "seq": {{"type": "integer"}},
    "state": {{"type": "string", "enum": ["ACT", "HOLD", "STOP"]}},
    "stop_cause": {{"type": "string"}},
    "tick_time_ns": {{"type": "integer"}},
    "capture_time_ns": {{"type": "integer"}},
    "chunk_step": {{"type": ["integer", "null"], "description": "The step, within its action chunk, an ACT executes (0 for single actions); null for HOLD and STOP"}},
    "action": {ACTION_OBJECT},
    "record": {{"type": "string", "contentEncoding": "base64", "description": "The 64-byte command record v1 as published"}}
  }}
}}"#
    )
}

pub const STATE: &str = r#"{
  "title": "vla_rt.StateChange",
  "type": "object",
  "properties": {
    "state": {"type": "string", "enum": ["ACT", "HOLD", "STOP"]},
    "previous": {"type": ["string", "null"]},
    "stop_cause": {"type": "string"},
    "seq": {"type": "integer"}
  }
}"#;

pub const STATUS: &str = r#"{
  "title": "vla_rt.Status",
  "description": "The status JSON published on vla/<robot_id>/status",
  "type": "object"
}"#;
