#!/usr/bin/env python3
"""Cost of the ROS 2 publish per tick against the native publish, in the same run.

Starts `vla-rt run --ros2` (the bundled default: synthetic camera, tiny checkpoint, CPU) at
RATE Hz for SECONDS, with one subscriber on the native command key and one on the twist and
gripper topics (so both puts have somewhere to go), and prints the service's own figures from
its last status JSON: `ros2.publish_ms.native_put` (the native put of a record) and
`ros2.publish_ms.ros2` (the conversion of the same record and its two ROS 2 puts), p50 and
p99 over the last one to two minutes, with the counts.

    python3 bench/ros2_publish.py [--rate 100] [--seconds 60] [--binary target/release/vla-rt]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

import zenoh


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--binary", default="target/release/vla-rt")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    service = subprocess.Popen(
        [args.binary, "run", "--ros2", "--rate-hz", str(args.rate),
         "--zenoh-listen", f"tcp/127.0.0.1:{port}", "--duration", str(args.seconds + 10)],
        env=dict(os.environ, RUST_LOG="warn"), stderr=subprocess.DEVNULL)
    config = zenoh.Config()
    config.insert_json5("connect/endpoints", json.dumps([f"tcp/127.0.0.1:{port}"]))
    config.insert_json5("listen/endpoints", "[]")
    config.insert_json5("scouting/multicast/enabled", "false")
    session = zenoh.open(config)
    counts = {"native": 0, "twist": 0, "gripper": 0}
    status = {}
    lock = threading.Lock()

    def counter(name):
        def count(_sample):
            with lock:
                counts[name] += 1
        return count

    def on_status(sample):
        with lock:
            status.update(json.loads(sample.payload.to_bytes()))

    subscribers = [
        session.declare_subscriber("vla/sim/cmd", counter("native")),
        session.declare_subscriber("0/sim/delta_twist_cmds/**", counter("twist")),
        session.declare_subscriber("0/sim/gripper_controller/commands/**", counter("gripper")),
        session.declare_subscriber("vla/sim/status", on_status),
    ]
    time.sleep(args.seconds)
    with lock:
        report = {"rate_hz": args.rate, "seconds": args.seconds, "received": dict(counts),
                  "measured_rate_hz": status.get("measured_rate_hz"),
                  "ros2": status.get("ros2"), "publish_delay_ms": status.get("latency_ms", {}).get("publish")}
    for subscriber in subscribers:
        subscriber.undeclare()
    session.close()
    service.terminate()
    service.wait(timeout=20)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
