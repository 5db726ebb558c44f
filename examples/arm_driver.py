#!/usr/bin/env python3
"""Minimal arm-driver subscriber for vla-rt in Python (eclipse-zenoh 1.10).

Subscribes to vla/<robot_id>/cmd, checks and decodes command record v1 (64 bytes,
little-endian, CRC-32 over bytes 0..60) and prints each command; STOP halts the arm.

    pip install eclipse-zenoh==1.10.2
    python3 examples/arm_driver.py --connect tcp/127.0.0.1:7447 --robot-id robot
"""
import argparse
import json
import queue
import struct
import sys
import zlib

import zenoh

RECORD = struct.Struct("<4sHHQQQ7fI")  # 64 bytes
STATES = {0: "ACT", 1: "HOLD", 2: "STOP"}


def decode(payload: bytes) -> dict:
    if len(payload) != RECORD.size:
        raise ValueError(f"{len(payload)} bytes, expected {RECORD.size}")
    magic, version, state, seq, tick_ns, capture_ns, *rest = RECORD.unpack(payload)
    action, crc = rest[:7], rest[7]
    if zlib.crc32(payload[:60]) != crc:
        raise ValueError("CRC mismatch")
    if magic != b"VLA1" or version != 1 or state not in STATES:
        raise ValueError(f"not a v1 command record: {magic!r} v{version} state {state}")
    return {
        "seq": seq,
        "state": STATES[state],
        "tick_time_ns": tick_ns,
        "capture_time_ns": capture_ns,
        "action": list(action),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", default="tcp/127.0.0.1:7447")
    parser.add_argument("--robot-id", default="robot")
    parser.add_argument("--count", type=int, default=None, help="exit after N commands")
    parser.add_argument("--json", action="store_true", help="one JSON object per command")
    parser.add_argument("--timeout-ms", type=int, default=500,
                        help="stop the arm when no command came for this long")
    args = parser.parse_args()

    config = zenoh.Config()
    config.insert_json5("mode", json.dumps("peer"))
    config.insert_json5("connect/endpoints", json.dumps([args.connect]))
    config.insert_json5("listen/endpoints", "[]")
    config.insert_json5("scouting/multicast/enabled", "false")
    key = f"vla/{args.robot_id}/cmd"
    inbox: "queue.Queue[bytes]" = queue.Queue()
    with zenoh.open(config) as session:
        subscriber = session.declare_subscriber(key, lambda s: inbox.put(s.payload.to_bytes()))
        print(f"arm_driver.py: listening on {key}", file=sys.stderr, flush=True)
        seen, stopped = 0, False
        while args.count is None or seen < args.count:
            try:
                payload = inbox.get(timeout=args.timeout_ms / 1000)
            except queue.Empty:
                if not stopped:
                    print("arm_driver.py: no commands: stopping the arm", file=sys.stderr, flush=True)
                    stopped = True
                continue
            try:
                command = decode(payload)
            except ValueError as e:
                print(f"arm_driver.py: bad record ({e}): stopping the arm", file=sys.stderr, flush=True)
                stopped = True
                continue
            seen += 1
            if command["state"] == "STOP" and not stopped:
                print("arm_driver.py: STOP received: arm halted", file=sys.stderr, flush=True)
            stopped = command["state"] == "STOP"
            if args.json:
                print(json.dumps(command), flush=True)
            else:
                a = command["action"]
                print(f"{command['seq']:>6} {command['state']:<4} "
                      + " ".join(f"{v:+.4f}" for v in a), flush=True)
        subscriber.undeclare()
    return 0


if __name__ == "__main__":
    sys.exit(main())
