#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/corpus/<target>/ (run once; the
fuzzer grows and `cargo fuzz cmin` minimizes the corpora from there). Layouts follow the
harnesses in src/fuzzing.rs.

    fuzz/seeds.py                   # every target
    fuzz/seeds.py remote_message    # the named targets only (those with a function in ONLY)
"""

import hashlib
import io
import json
import os
import struct
import sys
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


def record(state, seq, action):
    body = struct.pack("<4sHHQQQ7f", b"VLA1", 1, state, seq, 1_790_000_000_000_000_000, 1_789_999_999_990_000_000, *action)
    return body + struct.pack("<I", zlib.crc32(body))


def safetensors(tensors, metadata=None):
    header = {}
    offset = 0
    blobs = []
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def parts(*chunks):
    out = b""
    for chunk in chunks:
        out += struct.pack("<H", len(chunk)) + chunk
    return out


def main():
    put("command_record", "act", record(0, 7, [0.01, -0.02, 0.0, 0.1, 0.0, -0.1, 1.0]))
    put("command_record", "stop", record(2, 8, [0.0] * 7))
    put("command_record", "short", record(1, 9, [0.0] * 7)[:40])

    for name in ("default.toml", "robot.example.toml"):
        with open(os.path.join(ROOT, "config", name), "rb") as f:
            put("service_config", name, f.read())
    put("service_config", "small", '[control]\nrate_hz = 50.0\n[instruction]\nmax_bytes = 64\nmin_interval_ms = 0\n')

    calibration = """format = "vla-rt-calibration"
version = 1
created_unix_s = 1790000000
model_fingerprint = "sha256:00"
model_path = "engines/openvla-tiny"
backend = "cpu"
quantization = "none"
projector = "f32"
instruction = "pick up the red block"
frames = 16
contact_sheet = "calibration.png"
contact_sheet_frames = [0, 5, 10]
recommended_rate_hz = 10.0
camera_description = "/dev/video0 YUYV 320x240@15"
checksum = "sha256:00"

[camera]
source = "/dev/video0"
width = 320
height = 240
fps = 15
format = "YUYV"
exposure = 250
white_balance = 4600
gain = 32

[latency.total]
p50_ms = 40.0
p99_ms = 55.0

[projector_scales]
percentile = 99.99
frames = 16

[[projector_scales.layers]]
layer = "projector.fc1"
abs_percentile = 6.35
abs_max = 7.5
scale = 0.05
"""
    put("calibration_file", "sample.toml", calibration)

    with open(os.path.join(ROOT, "engines", "openvla-tiny", "config.json"), "rb") as f:
        config = f.read()
    f32 = struct.pack("<6f", 1, 2, 3, 4, 5, 6)
    f16 = struct.pack("<6e", 1, 2, 3, 4, 5, 6)
    bf16 = b"".join(struct.pack("<f", v)[2:] for v in (1, 2, 3, 4, 5, 6))
    weights = safetensors([
        ("a.weight", "F32", [2, 3], f32),
        ("b.weight", "F16", [3, 2], f16),
        ("c.bias", "BF16", [6], bf16),
    ])
    put("checkpoint", "single", b"\x00" + parts(config[:600], b"") + weights)
    index = json.dumps({"weight_map": {name: "model-00001-of-00001.safetensors" for name in ("a.weight", "b.weight", "c.bias")}}).encode()
    put("checkpoint", "sharded", b"\x01" + parts(b"{}", index) + weights)

    meta = {
        "format": "vla-rt-quantized",
        "format_version": "1",
        "int4_group_size": "128",
        "quantization": "int8",
        "projector": "f32",
        "checkpoint_sha256": "fuzz",
    }
    int8 = safetensors([
        ("l.qweight", "I8", [2, 4], bytes(range(8))),
        ("l.scales", "F32", [2], struct.pack("<2f", 0.1, 0.2)),
    ], meta)
    put("quantized_file", "int8", int8)
    meta4 = dict(meta, quantization="int4")
    int4 = safetensors([
        ("l.qweight", "U8", [2, 2], bytes([0x12, 0x34, 0x56, 0x78])),
        ("l.scales", "F32", [2, 1], struct.pack("<2f", 0.1, 0.2)),
        ("l.mins", "F32", [2, 1], struct.pack("<2f", -0.5, -0.25)),
    ], meta4)
    put("quantized_file", "int4", int4)

    put("instruction", "plain", "Move the blue cup 3 cm to the left of the bowl (slowly)")
    put("instruction", "unicode", "Stell den Becher \u00fcber die Schale \u212a \u0130 \u00df \U0001f916")
    put("instruction", "spaces", "  put    the  carrot\ton the plate \n")
    put("instruction", "bytes", b"\xff\xfe\x00pick\xc3")

    for fmt, bpp in ((0, 2), (1, 3), (2, 1)):
        width, height = 4, 2
        stride = width * bpp + 2
        frame = bytes((i * 37) % 256 for i in range(stride * height))
        put("raw_frame", f"format{fmt}", struct.pack("<BHHI", fmt, width, height, stride) + frame)
    put("raw_frame", "zero", struct.pack("<BHHI", 0, 0, 2, 8) + bytes(16))

    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        for (w, h, sub) in ((16, 8, 0), (8, 8, 2)):
            image = Image.new("RGB", (w, h), (200, 40, 90))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90, subsampling=sub)
            put("mjpeg_frame", f"{w}x{h}", struct.pack("<HH", w, h) + buffer.getvalue())
    put("mjpeg_frame", "zero", struct.pack("<HH", 0, 0) + b"\xff\xd8\xff\xd9")
    ros2_seeds()
    remote_seeds()
    torch_pt_seeds()
    proprio_seeds()


def ros2_seeds():
    """ros2_message: a selector byte, then CDR written by rosbags (independent of vla-rt)."""
    import numpy as np
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types
    Time = T["builtin_interfaces/msg/Time"]
    Header = T["std_msgs/msg/Header"]
    V3 = T["geometry_msgs/msg/Vector3"]
    header = Header(stamp=Time(sec=1_790_000_000, nanosec=123), frame_id="base_link")
    twist = T["geometry_msgs/msg/TwistStamped"](
        header=header,
        twist=T["geometry_msgs/msg/Twist"](linear=V3(x=0.1, y=-0.2, z=0.0), angular=V3(x=0.0, y=0.0, z=0.5)),
    )
    put("ros2_message", "twist", b"\x00" + bytes(ts.serialize_cdr(twist, "geometry_msgs/msg/TwistStamped")))
    text = T["std_msgs/msg/String"](data="pick up the red block")
    put("ros2_message", "string", b"\x01" + bytes(ts.serialize_cdr(text, "std_msgs/msg/String")))
    flag = T["std_msgs/msg/Bool"](data=True)
    put("ros2_message", "bool", b"\x02" + bytes(ts.serialize_cdr(flag, "std_msgs/msg/Bool")))
    layout = T["std_msgs/msg/MultiArrayLayout"](
        dim=[T["std_msgs/msg/MultiArrayDimension"](label="gripper", size=1, stride=1)], data_offset=0
    )
    array = T["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.array([0.04], dtype=np.float64))
    put("ros2_message", "float64_array", b"\x03" + bytes(ts.serialize_cdr(array, "std_msgs/msg/Float64MultiArray")))
    try:
        from PIL import Image as PilImage
    except ImportError:
        PilImage = None
    if PilImage is not None:
        buffer = io.BytesIO()
        PilImage.new("RGB", (8, 8), (10, 200, 30)).save(buffer, format="JPEG", quality=90)
        jpeg = np.frombuffer(buffer.getvalue(), dtype=np.uint8)
        compressed = T["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=jpeg)
        put("ros2_message", "compressed", b"\x04" + bytes(ts.serialize_cdr(compressed, "sensor_msgs/msg/CompressedImage")))
    raw = T["sensor_msgs/msg/Image"](
        header=header, height=8, width=8, encoding="bgr8", is_bigendian=0, step=26,
        data=np.arange(26 * 8, dtype=np.uint8),
    )
    put("ros2_message", "image", b"\x05" + bytes(ts.serialize_cdr(raw, "sensor_msgs/msg/Image")))
    attachment = struct.pack("<qqB", 7, 1_790_000_000_000_000_000, 16) + bytes(range(16))
    put("ros2_message", "attachment", b"\x06" + attachment)


def remote_request(request_id, robot, unnorm, instruction, encoding, width, height, frame, hashed=False):
    """A request as src/remote/wire.rs writes it (44-byte header, then the variable parts)."""
    header = struct.pack(
        "<4sHHQQIBBBBHHII", b"VLAQ", 1, 1 if hashed else 0, request_id, 1_790_000_000_000,
        200_000, encoding, len(robot), len(unnorm), 0, width, height, len(instruction), len(frame),
    )
    return header + robot + unnorm + instruction + frame


def remote_reply(status, request_id, actions, action_dim, tokens, message, fingerprint=b"sha256:" + b"ab" * 32, server=b"7f3a9c"):
    """A reply as src/remote/wire.rs writes it (40-byte header, then the variable parts)."""
    rows = len(actions) // action_dim if action_dim else 0
    header = struct.pack(
        "<4sHBBQQIIHBBBBH", b"VLAP", 1, status, len(fingerprint), request_id, 1_790_000_000_000,
        1200, 35_000, 2, rows, action_dim, len(tokens), len(server), len(message),
    )
    body = b"".join(struct.pack("<f", v) for v in actions) + b"".join(struct.pack("<I", t) for t in tokens)
    return header + fingerprint + server + body + message


def remote_seeds():
    """remote_message: requests and replies of remote inference, valid ones and a few broken."""
    text = b"pick up the red block"
    raw = bytes(range(2 * 2 * 3))
    put("remote_message", "request-raw-text", remote_request(7, b"arm0", b"tiny_bridge", text, 0, 2, 2, raw))
    put("remote_message", "request-raw-hash", remote_request(8, b"arm0", b"", hashlib.sha256(text).digest(), 0, 2, 2, raw, hashed=True))
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 40, 90)).save(buffer, format="JPEG", quality=90)
        jpeg = buffer.getvalue()
    else:
        jpeg = b"\xff\xd8\xff\xd9"
    put("remote_message", "request-jpeg-text", remote_request(9, b"arm1", b"", text, 1, 8, 8, jpeg))
    put("remote_message", "request-jpeg-hash", remote_request(10, b"arm1", b"tiny_bridge", hashlib.sha256(text).digest(), 1, 8, 8, jpeg, hashed=True))
    action = [0.01, -0.02, 0.0, 0.1, 0.0, -0.1, 1.0]
    tokens = [31_870, 31_900, 31_744, 31_800, 31_850, 31_799, 31_744]
    ok = remote_reply(0, 7, action, 7, tokens, b"")
    put("remote_message", "reply-ok", ok)
    put("remote_message", "reply-ok-chunk", remote_reply(0, 11, action * 4, 7, [], b""))
    put("remote_message", "reply-busy", remote_reply(1, 12, [], 0, [], b"queue full (32 waiting)"))
    put("remote_message", "reply-bad-request", remote_reply(3, 13, [], 0, [], b"field frame: " + "\u00e9".encode() * 300))
    # Broken: cut short, a NaN action in an ok reply, another version, lengths that disagree.
    put("remote_message", "request-truncated", remote_request(7, b"arm0", b"", text, 0, 2, 2, raw)[:50])
    put("remote_message", "reply-ok-nan", ok[:40 + 71 + 6 + 12] + struct.pack("<f", float("nan")) + ok[40 + 71 + 6 + 16:])
    put("remote_message", "reply-version-2", ok[:4] + struct.pack("<H", 2) + ok[6:])
    put("remote_message", "request-long-frame", remote_request(7, b"arm0", b"", text, 0, 2, 2, raw) + b"\x00")


def torch_pt_seeds():
    """torch_pt: a flag byte, then (0) a `.pt` file of tests/fixtures/torch-pt (written by
    torch: make.py there), or (1) a data.pkl and storages 0 to 3 taken from one."""
    import zipfile

    folder = os.path.join(ROOT, "tests", "fixtures", "torch-pt")
    for name in ("proprio_projector--5_checkpoint.pt", "edge_cases.pt", "malicious_reduce.pt",
                 "optimizer_like.pt", "offset_out_of_range.pt", "wrong_storage_key.pt"):
        with open(os.path.join(folder, name), "rb") as f:
            put("torch_pt", name, b"\x00" + f.read())
    for name in ("proprio_projector--5_checkpoint.pt", "edge_cases.pt", "malicious_stack_global.pt",
                 "optimizer_like.pt", "overflow_shape.pt"):
        with zipfile.ZipFile(os.path.join(folder, name)) as archive:
            entries = {info.filename.split("/", 1)[1]: archive.read(info) for info in archive.infolist()}
        storages = [entries.get(f"data/{key}", b"") for key in range(4)]
        put("torch_pt", "pickle-" + name, b"\x01" + parts(entries["data.pkl"], *storages))


def proprio_seeds():
    """proprio_message: the state length minus one (first byte, modulo 16), then the payload of
    vla/<robot_id>/proprio."""
    put("proprio_message", "libero-8", b"\x07" + b'{"state": [-0.05, 0.35, 0.9, 3.1, -1.2, 0.1, 0.03, -0.029], "capture_time_ns": 1790000000000000000}')
    put("proprio_message", "one", b"\x00" + b'{"state": [1e-300], "capture_time_ns": 0}')
    put("proprio_message", "short", b"\x07" + b'{"state": [1, 2], "capture_time_ns": 5}')
    put("proprio_message", "unknown-field", b"\x01" + b'{"state": [1, 2], "capture_time_ns": 5, "x": 1}')
    put("proprio_message", "huge", b"\x00" + b'{"state": [1e999], "capture_time_ns": 5}')
    put("proprio_message", "not-object", b"\x02" + b"[1, 2, 3]")
    # A long mantissa that serde_json's default parser reads one ULP away from its own shortest
    # encoding (libFuzzer's first finding on this target).
    put("proprio_message", "long-mantissa", b"\x07" + b'{"state": [-5.00, 0.35, 0.4, ' + b"9" * 47 + b'3.0, -1.0, 0e3, -0.03, -0.021], "capture_time_ns": 1790000000000}')


# The targets `fuzz/seeds.py TARGET...` can write alone.
ONLY = {"ros2_message": ros2_seeds, "remote_message": remote_seeds, "torch_pt": torch_pt_seeds,
        "proprio_message": proprio_seeds}

if __name__ == "__main__":
    if sys.argv[1:]:
        for target in sys.argv[1:]:
            ONLY[target]()
    else:
        main()
