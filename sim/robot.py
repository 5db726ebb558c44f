"""The simulated tabletop as a robot on Zenoh, speaking vla-rt's contracts.

- subscribes to `vla/<robot>/cmd` and applies each command record v1 (64 bytes, see the
  README's "Subscribing to commands"): ACT moves the gripper by its deltas, HOLD keeps it
  where it is going, STOP halts it where it is; with no command for `command_timeout_s` it
  halts as well, as an arm driver does;
- publishes the camera as JPEG frame records v1 (README, "Cameras on Zenoh") on the camera
  key the service reads (`[camera] source = "zenoh:<key>"`), `frames_per_action` frames per
  action period (2: every control tick then finds a frame it has not acted on, although the
  two clocks are not in step);
- puts each episode's instruction on `vla/<robot>/instruction`;
- publishes its own state as JSON on `sim/<robot>/state` every period (not a vla-rt key).

It runs in real time at the action rate of the dataset (tabletop.ACTION_RATE_HZ); the
simulation advances between frames, commands are applied as they arrive.
"""
from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import threading
import time
import zlib
from collections import deque

import numpy as np
import zenoh
from PIL import Image

import tabletop

RECORD = struct.Struct("<4sHHQQQ7fI")  # command record v1, 64 bytes
STATES = {0: "ACT", 1: "HOLD", 2: "STOP"}
FRAME_HEADER = struct.Struct("<4sHHIIQQ")  # frame record v1 header, 32 bytes
FRAME_JPEG, FRAME_RGB8 = 0, 1


def decode_command(payload: bytes) -> dict:
    if len(payload) != RECORD.size:
        raise ValueError(f"{len(payload)} bytes, expected {RECORD.size}")
    magic, version, state, seq, tick_ns, capture_ns, *rest = RECORD.unpack(payload)
    action, crc = rest[:7], rest[7]
    if zlib.crc32(payload[:60]) != crc:
        raise ValueError("CRC mismatch")
    if magic != b"VLA1" or version != 1 or state not in STATES:
        raise ValueError(f"not a v1 command record: {magic!r} v{version} state {state}")
    return {"seq": seq, "state": STATES[state], "tick_time_ns": tick_ns,
            "capture_time_ns": capture_ns, "action": np.array(action, dtype=float)}


# The JPEG quality of the published frames; sim/make_dataset.py trains on frames that took
# the same round trip.
JPEG_QUALITY = 90


def encode_frame(image: np.ndarray, capture_time_ns: int, sequence: int,
                 quality: int = JPEG_QUALITY) -> bytes:
    """A JPEG frame record v1: the 32-byte header, then the JPEG file."""
    height, width, _ = image.shape
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    header = FRAME_HEADER.pack(b"VLAF", 1, FRAME_JPEG, width, height, capture_time_ns, sequence)
    return header + buffer.getvalue()


def peer_config(connect: str) -> zenoh.Config:
    config = zenoh.Config()
    config.insert_json5("mode", json.dumps("peer"))
    config.insert_json5("connect/endpoints", json.dumps([connect]))
    config.insert_json5("listen/endpoints", "[]")
    config.insert_json5("scouting/multicast/enabled", "false")
    return config


class ZenohRobot:
    """Runs episodes of the simulator in real time against a vla-rt service."""

    def __init__(self, session: zenoh.Session, robot_id: str, sim: tabletop.Tabletop,
                 camera_key: str | None = None, command_timeout_s: float = 0.5,
                 frames_per_action: int = 2):
        self.session = session
        self.sim = sim
        self.robot_id = robot_id
        self.frames_per_action = frames_per_action
        self.frame_period_s = 1.0 / (sim.rate_hz * frames_per_action)
        self.command_timeout_s = command_timeout_s
        self.camera_key = camera_key or f"vla/{robot_id}/camera"
        self.instruction_key = f"vla/{robot_id}/instruction"
        self._inbox: deque = deque()
        self._lock = threading.Lock()
        self.counts = {"ACT": 0, "HOLD": 0, "STOP": 0, "stale": 0, "bad": 0}
        self.act_travel_m = 0.0
        self.halted = False
        self.last_command_time = None
        self.last_command = None
        self.frame_sequence = 0
        self.episode_start_ns = 0
        self.frames_kept: list = []
        self.keep_frames = 0
        self._subscriber = session.declare_subscriber(f"vla/{robot_id}/cmd", self._on_command)
        self._camera = session.declare_publisher(self.camera_key)
        self._state = session.declare_publisher(f"sim/{robot_id}/state")

    def _on_command(self, sample) -> None:
        payload = sample.payload.to_bytes()
        with self._lock:
            self._inbox.append((time.monotonic(), payload))

    def close(self) -> None:
        self._subscriber.undeclare()
        self._camera.undeclare()
        self._state.undeclare()

    # One camera frame ------------------------------------------------------------------------

    def apply_commands(self) -> list[dict]:
        """Applies every command that arrived since the last period, in order."""
        with self._lock:
            arrived = list(self._inbox)
            self._inbox.clear()
        applied = []
        for received_at, payload in arrived:
            try:
                command = decode_command(payload)
            except ValueError as e:
                print(f"robot.py: bad command record ({e}): halting", file=sys.stderr, flush=True)
                self.counts["bad"] += 1
                self.sim.hold_still()
                self.halted = True
                continue
            self.last_command_time = received_at
            state = command["state"]
            if state == "STOP":
                self.counts["STOP"] += 1
                self.sim.hold_still()
                self.halted = True
            elif 0 < command["capture_time_ns"] < self.episode_start_ns:
                # Computed on a frame of the previous episode.
                self.counts["stale"] += 1
            elif state == "ACT":
                self.counts["ACT"] += 1
                action = command["action"]
                self.sim.target = np.clip(self.sim.target + action[:3],
                                          tabletop.WORKSPACE_LOW, tabletop.WORKSPACE_HIGH)
                self.sim.gripper = float(np.clip(action[6], 0.0, 1.0))
                self.halted = False
            else:
                self.counts["HOLD"] += 1
            self.last_command = command
            applied.append(command)
        if (self.last_command_time is not None
                and time.monotonic() - self.last_command_time > self.command_timeout_s
                and not self.halted):
            print("robot.py: no commands: halting", file=sys.stderr, flush=True)
            self.sim.hold_still()
            self.halted = True
        return applied

    def publish_frame(self) -> None:
        image = self.sim.render()
        now_ns = time.time_ns()
        self._camera.put(encode_frame(image, now_ns, self.frame_sequence))
        self.frame_sequence += 1
        if len(self.frames_kept) < self.keep_frames:
            self.frames_kept.append((image, self.sim.task.instruction, self.last_command,
                                     self.sim.state()))

    def frame(self) -> dict:
        """Applies the commands, simulates one frame interval and publishes the frame and the
        state."""
        applied = self.apply_commands()
        before = self.sim.hand_position
        self.sim.advance(1.0 / self.frames_per_action)
        moved = float(np.linalg.norm(self.sim.hand_position - before))
        if any(c["state"] == "ACT" for c in applied):
            self.act_travel_m += moved
        self.publish_frame()
        state = self.sim.state()
        state.update({"moved_m": round(moved, 6), "halted": self.halted,
                      "commands": dict(self.counts)})
        self._state.put(json.dumps(state))
        return state

    # Episodes -------------------------------------------------------------------------------

    def start_episode(self, seed: int) -> tabletop.Task:
        task = self.sim.reset(seed)
        self.episode_start_ns = time.time_ns()
        self.session.put(self.instruction_key, task.instruction)
        return task

    def run_frames(self, count: int, until=None) -> int:
        """Runs up to `count` frame intervals in real time; stops early when `until(state)`
        holds."""
        next_deadline = time.monotonic()
        for index in range(count):
            state = self.frame()
            if until is not None and until(state):
                return index + 1
            next_deadline += self.frame_period_s
            delay = next_deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_deadline = time.monotonic()
        return count

    def run_episode(self, seed: int, max_steps: int) -> dict:
        """One episode of at most `max_steps` action periods; ends at success."""
        task = self.start_episode(seed)
        frames = self.run_frames(max_steps * self.frames_per_action, until=lambda s: s["success"])
        success = self.sim.success()
        return {"seed": seed, "instruction": task.instruction, "success": success,
                "steps": -(-frames // self.frames_per_action),
                "time_s": round(frames * self.frame_period_s, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description="The simulated tabletop as a robot on Zenoh.")
    parser.add_argument("--connect", default="tcp/127.0.0.1:7447")
    parser.add_argument("--robot-id", default="sim")
    parser.add_argument("--camera-key", default=None, help="default vla/<robot-id>/camera")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=60)
    args = parser.parse_args()
    sim = tabletop.Tabletop()
    try:
        with zenoh.open(peer_config(args.connect)) as session:
            robot = ZenohRobot(session, args.robot_id, sim, args.camera_key)
            for episode in range(args.episodes):
                print(json.dumps(robot.run_episode(args.seed + episode, args.max_steps)), flush=True)
            robot.close()
    finally:
        sim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
