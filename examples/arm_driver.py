#!/usr/bin/env python3
"""Minimal arm-driver subscriber for vla-rt in Python (eclipse-zenoh 1.10).

Subscribes to vla/<robot_id>/cmd, checks and decodes command record v1 (64 bytes,
little-endian, CRC-32 over bytes 0..60), judges each command with Guard (the rules of
vla_rt::transport::guard) and prints it. The arm halts on STOP, on a damaged record, on a
record older than the maximum age (default: two tick periods, learned from the records'
tick times; the clocks of service and driver must agree), on records missing for longer
than that and on silence; after a halt only an ACT that passes the checks moves it again.

    pip install eclipse-zenoh==1.10.2
    python3 examples/arm_driver.py --connect tcp/127.0.0.1:7447 --robot-id robot
"""
import argparse
import json
import queue
import struct
import sys
import time
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


class Guard:
    """Age, seq continuity and STOP latching; the arm starts halted."""

    def __init__(self, max_age_ns=None):
        self.fixed_max_age_ns = max_age_ns
        self.period_ns = None
        self.last = None  # (seq, tick_time_ns) of the newest record
        self.halted = True

    def max_age_ns(self):
        if self.fixed_max_age_ns is not None:
            return self.fixed_max_age_ns
        return None if self.period_ns is None else 2 * self.period_ns

    def check(self, command: dict, now_ns: int):
        """Returns ("move" | "hold" | "halt", reason or None)."""
        seq, tick = command["seq"], command["tick_time_ns"]
        sequence_problem = None
        if self.last is not None:
            last_seq, last_tick = self.last
            if seq <= last_seq:
                self.period_ns = None
                sequence_problem = "restart"
            elif seq == last_seq + 1:
                step = max(tick - last_tick, 0)
                if step > 0:
                    self.period_ns = step if self.period_ns is None else min(self.period_ns, step)
            else:
                max_age = self.max_age_ns()
                if max_age is None or max(tick - last_tick, 0) > max_age:
                    sequence_problem = "gap"
        self.last = (seq, tick)
        max_age = self.max_age_ns()
        if max_age is None:
            age_problem = "unjudged"
        elif max(now_ns - tick, 0) > max_age:
            age_problem = "stale"
        else:
            age_problem = None
        reason = "stop" if command["state"] == "STOP" else (sequence_problem or age_problem)
        if reason is not None:
            self.halted = True
            return "halt", reason
        if command["state"] == "ACT":
            self.halted = False
            return "move", None
        return "hold", None

    def bad_record(self):
        self.halted = True
        return "halt", "bad-record"

    def check_silence(self, now_ns: int):
        """"silence" when the newest record just got older than the maximum age."""
        max_age = self.max_age_ns()
        if self.halted or self.last is None or max_age is None:
            return None
        if max(now_ns - self.last[1], 0) > max_age:
            self.halted = True
            return "silence"
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", default="tcp/127.0.0.1:7447")
    parser.add_argument("--robot-id", default="robot")
    parser.add_argument("--count", type=int, default=None, help="exit after N commands")
    parser.add_argument("--json", action="store_true", help="one JSON object per command")
    parser.add_argument("--max-age-ms", type=int, default=None,
                        help="oldest record to act on (default: two tick periods, learned)")
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
        guard = Guard(None if args.max_age_ms is None else args.max_age_ms * 1_000_000)
        position = [0.0, 0.0, 0.0]
        seen = 0
        while args.count is None or seen < args.count:
            try:
                payload = inbox.get(timeout=0.02)
            except queue.Empty:
                reason = guard.check_silence(time.time_ns())
                if reason:
                    print(f"arm_driver.py: halted: {reason}", file=sys.stderr, flush=True)
                continue
            now = time.time_ns()
            seen += 1
            try:
                command = decode(payload)
            except ValueError as e:
                guard.bad_record()
                print(f"arm_driver.py: bad record ({e}): halted", file=sys.stderr, flush=True)
                if args.json:
                    print(json.dumps({"verdict": "halt", "reason": "bad-record", "halted": True}),
                          flush=True)
                continue
            was_halted = guard.halted
            verdict, reason = guard.check(command, now)
            if verdict == "move":
                for i in range(3):
                    position[i] += command["action"][i]
            if reason and not was_halted:
                print(f"arm_driver.py: halted: {reason}", file=sys.stderr, flush=True)
            if was_halted and not guard.halted:
                print("arm_driver.py: ACT passed the checks: moving", file=sys.stderr, flush=True)
            if args.json:
                print(json.dumps(dict(command, verdict=verdict, reason=reason,
                                      halted=guard.halted, position=position)), flush=True)
            else:
                a = command["action"]
                print(f"{command['seq']:>6} {command['state']:<4} {verdict:<4} "
                      + " ".join(f"{v:+.4f}" for v in a), flush=True)
        subscriber.undeclare()
    return 0


if __name__ == "__main__":
    sys.exit(main())
