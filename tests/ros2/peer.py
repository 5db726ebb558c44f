#!/usr/bin/env python3
"""A ROS 2 peer over rmw_zenoh's conventions, written from ROS 2's side only: eclipse-zenoh for
the session, rosbags for CDR and the Jazzy type hashes, the native command record decoded
from its documented layout (ARCHITECTURE.md §9). It shares no code with vla-rt.

Against a running `vla-rt run --ros2` (the camera `ros2:<camera topic>`), it:
- feeds JPEG frames as sensor_msgs/msg/CompressedImage with rmw_zenoh's attachment;
- finds the node and the twist publisher through their liveliness tokens, as
  `ros2 node list` / `ros2 topic list` would, and subscribes to the key the token names;
- collects TwistStamped, Float64MultiArray and DiagnosticArray samples (checking each
  attachment) beside the native command records;
- sends an instruction (std_msgs/msg/String) and, at the end, an e-stop (std_msgs/msg/Bool);
- sends bad input: malformed CDR, a sample without attachment, a wrong type on the right
  name, an oversized image.
It prints one JSON object with what it saw; the Rust test judges it.
"""

import argparse
import io
import json
import struct
import sys
import threading
import time

import numpy as np
import zenoh
from PIL import Image
from rosbags.typesys import Stores, get_typestore

TS = get_typestore(Stores.ROS2_JAZZY)
T = TS.types


def dds_name(ros_name):
    package, kind, name = ros_name.split("/")
    return f"{package}::{kind}::dds_::{name}_"


def data_key(domain, topic, ros_name):
    return f"{domain}/{topic.strip('/')}/{dds_name(ros_name)}/{TS.hash_rihs01(ros_name)}"


class Attacher:
    """rmw_zenoh's attachment: seq i64 LE, source timestamp ns i64 LE, 16, GID (16 bytes)."""

    def __init__(self, gid_byte):
        self.seq = 0
        self.gid = bytes([gid_byte] * 16)

    def next(self):
        self.seq += 1
        return struct.pack("<qqB", self.seq, time.time_ns(), 16) + self.gid


def check_attachment(sample):
    attachment = sample.attachment
    if attachment is None:
        return None, "no attachment"
    raw = attachment.to_bytes()
    if len(raw) != 33:
        return None, f"attachment of {len(raw)} bytes"
    seq, stamp, gid_len = struct.unpack_from("<qqB", raw)
    if gid_len != 16:
        return None, f"GID length {gid_len}"
    if abs(stamp - time.time_ns()) > 10_000_000_000:
        return None, f"source timestamp {stamp} is not now"
    return seq, None


def decode_record(payload):
    """Command record v1 (ARCHITECTURE.md §9)."""
    import zlib

    if len(payload) != 64:
        raise ValueError(f"{len(payload)} bytes")
    magic, version, state, seq, tick, capture, *rest = struct.unpack("<4sHHQQQ7fI", payload)
    crc = rest.pop()
    if magic != b"VLA1" or version != 1 or zlib.crc32(payload[:60]) != crc:
        raise ValueError("bad record")
    return {"state": ["ACT", "HOLD", "STOP"][state], "seq": seq, "tick_ns": tick,
            "capture_ns": capture, "action": rest}


def jpeg(width, height, value):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (value, 255 - value, 90)).save(buffer, format="JPEG", quality=90)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def stamp_of(ns):
    return T["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def compressed_image(ns, data):
    header = T["std_msgs/msg/Header"](stamp=stamp_of(ns), frame_id="camera")
    msg = T["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=data)
    return bytes(TS.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage"))


def parse_token(key):
    """An rmw_zenoh liveliness token, or None."""
    parts = key.split("/")
    if len(parts) < 9 or parts[0] != "@ros2_lv":
        return None
    token = {"domain": parts[1], "zid": parts[2], "nid": parts[3], "id": parts[4], "kind": parts[5],
             "enclave": parts[6], "namespace": parts[7].replace("%", "/"), "node": parts[8], "key": key}
    if len(parts) >= 13:
        token.update(topic=parts[9].replace("%", "/"), type=parts[10], hash=parts[11], qos=parts[12])
    return token


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connect", required=True)
    parser.add_argument("--robot-id", required=True)
    parser.add_argument("--domain", type=int, default=0)
    parser.add_argument("--camera-topic", required=True)
    parser.add_argument("--instruction-topic", required=True)
    parser.add_argument("--estop-topic", required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--instruction", required=True)
    parser.add_argument("--collect-s", type=float, default=4.0)
    args = parser.parse_args()
    out = {"errors": []}
    error = out["errors"].append

    config = zenoh.Config()
    config.insert_json5("mode", json.dumps("peer"))
    config.insert_json5("connect/endpoints", json.dumps([args.connect]))
    config.insert_json5("listen/endpoints", "[]")
    config.insert_json5("scouting/multicast/enabled", "false")
    session = zenoh.open(config)
    lock = threading.Lock()

    # Camera: CompressedImage frames at 20 Hz, each stamped with its own time.
    camera_key = data_key(args.domain, args.camera_topic, "sensor_msgs/msg/CompressedImage")
    camera_attach = Attacher(0xC1)
    sent_stamps = []
    stop_camera = threading.Event()

    def feed_camera():
        frame = jpeg(args.width, args.height, 120)
        while not stop_camera.is_set():
            ns = time.time_ns()
            with lock:
                sent_stamps.append(ns)
            session.put(camera_key, compressed_image(ns, frame), attachment=camera_attach.next())
            time.sleep(0.05)

    camera_thread = threading.Thread(target=feed_camera, daemon=True)
    camera_thread.start()

    # Discovery: the node and its twist publisher, from the liveliness tokens.
    tokens = []
    twist_token = None
    deadline = time.time() + 30
    while time.time() < deadline and twist_token is None:
        tokens = []
        for reply in session.liveliness().get(f"@ros2_lv/{args.domain}/**", timeout=2.0):
            if reply.ok is not None:
                parsed = parse_token(str(reply.ok.key_expr))
                if parsed:
                    tokens.append(parsed)
        for token in tokens:
            if token["kind"] == "MP" and token.get("type") == dds_name("geometry_msgs/msg/TwistStamped"):
                twist_token = token
        if twist_token is None:
            time.sleep(0.2)
    out["tokens"] = tokens
    if twist_token is None:
        error("no TwistStamped publisher token")
        print(json.dumps(out))
        return 1
    twist_key = f"{args.domain}/{twist_token['topic'].strip('/')}/{twist_token['type']}/{twist_token['hash']}"
    out["twist_key"] = twist_key

    # Subscriptions: the twist the token names, the gripper and diagnostics found the same
    # way, and the native command records.
    def token_key(ros_name):
        for token in tokens:
            if token["kind"] == "MP" and token.get("type") == dds_name(ros_name):
                return f"{args.domain}/{token['topic'].strip('/')}/{token['type']}/{token['hash']}"
        return None

    twists, grippers, diagnostics, records = [], [], [], []

    def on_twist(sample):
        seq, why = check_attachment(sample)
        if why:
            error(f"twist: {why}")
            return
        msg = TS.deserialize_cdr(sample.payload.to_bytes(), "geometry_msgs/msg/TwistStamped")
        t = msg.twist
        with lock:
            twists.append({
                "attachment_seq": seq,
                "stamp_ns": msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec,
                "frame_id": msg.header.frame_id,
                "linear": [t.linear.x, t.linear.y, t.linear.z],
                "angular": [t.angular.x, t.angular.y, t.angular.z],
            })

    def on_gripper(sample):
        seq, why = check_attachment(sample)
        if why:
            error(f"gripper: {why}")
            return
        msg = TS.deserialize_cdr(sample.payload.to_bytes(), "std_msgs/msg/Float64MultiArray")
        with lock:
            grippers.append({"attachment_seq": seq, "data": [float(v) for v in msg.data]})

    def on_diagnostics(sample):
        seq, why = check_attachment(sample)
        if why:
            error(f"diagnostics: {why}")
            return
        msg = TS.deserialize_cdr(sample.payload.to_bytes(), "diagnostic_msgs/msg/DiagnosticArray")
        with lock:
            diagnostics.append([{
                "level": int(s.level), "name": s.name, "message": s.message,
                "hardware_id": s.hardware_id, "values": {kv.key: kv.value for kv in s.values},
            } for s in msg.status])

    def on_record(sample):
        try:
            record = decode_record(sample.payload.to_bytes())
        except ValueError as e:
            error(f"native record: {e}")
            return
        with lock:
            records.append(record)

    status = {}

    def on_status(sample):
        with lock:
            status.update(json.loads(sample.payload.to_bytes()))

    subscribers = [
        session.declare_subscriber(twist_key, on_twist),
        session.declare_subscriber(f"vla/{args.robot_id}/cmd", on_record),
        session.declare_subscriber(f"vla/{args.robot_id}/status", on_status),
    ]
    for ros_name, callback in (("std_msgs/msg/Float64MultiArray", on_gripper),
                               ("diagnostic_msgs/msg/DiagnosticArray", on_diagnostics)):
        key = token_key(ros_name)
        if key is None:
            error(f"no {ros_name} publisher token")
        else:
            subscribers.append(session.declare_subscriber(key, callback))

    # Arm (the native key; ROS 2 has no arming) and collect while the frames flow.
    session.put(f"vla/{args.robot_id}/arm", "arm")
    time.sleep(args.collect_s)

    def status_copy():
        with lock:
            return json.loads(json.dumps(status))

    def wait_status(what, check, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            current = status_copy()
            if current and check(current):
                return current
            time.sleep(0.1)
        error(f"status: waited {timeout} s for {what}; last: {json.dumps(status_copy())[:600]}")
        return status_copy()

    # The instruction, as std_msgs/msg/String.
    instruction_key = data_key(args.domain, args.instruction_topic, "std_msgs/msg/String")
    instruction_attach = Attacher(0x1A)
    text = T["std_msgs/msg/String"](data=args.instruction)
    session.put(instruction_key, bytes(TS.serialize_cdr(text, "std_msgs/msg/String")),
                attachment=instruction_attach.next())
    out["status_after_instruction"] = wait_status(
        "the instruction", lambda s: s["policy"]["instruction"] == args.instruction[:40])

    # Bad input, one of each; then the counters.
    before = status_copy()
    out["status_before_bad_input"] = before
    good_string = bytes(TS.serialize_cdr(T["std_msgs/msg/String"](data="place it"), "std_msgs/msg/String"))
    malformed = good_string[:4] + struct.pack("<I", 200) + good_string[8:]  # longer than the payload
    session.put(instruction_key, malformed, attachment=instruction_attach.next())
    session.put(instruction_key, good_string)  # no attachment
    bool_on_instruction = data_key(args.domain, args.instruction_topic, "std_msgs/msg/Bool")
    session.put(bool_on_instruction, bytes(TS.serialize_cdr(T["std_msgs/msg/Bool"](data=True),
                                                              "std_msgs/msg/Bool")),
                attachment=instruction_attach.next())
    oversized = jpeg(args.width * 2, args.height * 2, 40)
    session.put(camera_key, compressed_image(time.time_ns(), oversized), attachment=camera_attach.next())
    out["status_after_bad_input"] = wait_status(
        "the bad input counted",
        lambda s: s.get("ros2") is not None
        and s["ros2"]["refused"]["malformed"] > before["ros2"]["refused"]["malformed"]
        and s["ros2"]["refused"]["no_attachment"] > before["ros2"]["refused"]["no_attachment"]
        and s["ros2"]["refused"]["wrong_type"] > before["ros2"]["refused"]["wrong_type"]
        and s["camera"]["corrupt"] > before["camera"]["corrupt"])

    # The e-stop, as std_msgs/msg/Bool true.
    estop_key = data_key(args.domain, args.estop_topic, "std_msgs/msg/Bool")
    session.put(estop_key, bytes(TS.serialize_cdr(T["std_msgs/msg/Bool"](data=True), "std_msgs/msg/Bool")),
                attachment=Attacher(0xE5).next())
    out["status_after_estop"] = wait_status(
        "the e-stop", lambda s: s["estop"] is True and s["state"] == "STOP")
    time.sleep(0.5)

    stop_camera.set()
    camera_thread.join()
    with lock:
        out.update(twists=twists, grippers=grippers, diagnostics=diagnostics, records=records,
                   sent_stamps=sent_stamps)
    for subscriber in subscribers:
        subscriber.undeclare()
    session.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
