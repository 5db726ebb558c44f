"""The simulated tabletop as a robot on Zenoh, speaking vla-rt's contracts.

- subscribes to `vla/<robot>/cmd` and applies each command record v1 (64 bytes, see the
  README's "Subscribing to commands"): ACT moves the gripper's target by its deltas, HOLD
  keeps it where it is going, STOP halts it where it is; with no command for
  `command_timeout_s` it halts as well, as an arm driver does;
- applies an ACT only when it was computed from a frame that shows the motion of the
  previous applied ACT completed (captured at or after the gripper settled at its target),
  because that is how the training data pairs frames with actions: frame t is rendered
  after action t - 1 has been executed. An ACT computed from an earlier frame would add to
  the target a move the policy planned from a gripper still on its way, and overshoot by
  the part of the motion the frame did not show; it is counted (`unpaired`) and treated as
  HOLD. The further ticks of one action (same capture time, when the control rate is above
  the action rate) belong to the applied ACT and are applied;
- publishes the camera as JPEG frame records v1 (README, "Cameras on Zenoh") on the camera
  key the service reads (`[camera] source = "zenoh:<key>"`), `frames_per_action` frames per
  action period (4: a move of up to 0.057 m, more than the expert's largest, completes
  within three frames, so the tick after the one that delivered an ACT finds a frame of the
  settled gripper although the two clocks are not in step). The service sends an ACT one
  tick after the frame it was computed from, and that tick's frame was taken before the ACT
  arrived: at most every other ACT is paired, so the gripper takes about half as many
  actions per second as the action rate;
- at each episode start puts the instruction on `vla/<robot>/instruction` and waits until
  the service's status (`vla/<robot>/status`) shows the inference worker applied it, before
  the episode's first frame: until then the policy may still predict with the previous
  instruction, and every ACT counts as stale;
- publishes its own state as JSON on `sim/<robot>/state` every frame (not a vla-rt key).

It runs in real time at the action rate of the dataset (tabletop.ACTION_RATE_HZ); the
simulation advances between frames, commands are applied as they arrive.
"""
from __future__ import annotations

import argparse
import hashlib
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
# Later than any capture time: as the episode start, it makes every ACT stale.
NEVER_NS = 2**64 - 1
# The gripper counts as settled at its target within this distance.
SETTLED_M = 1e-6


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


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def frame_record(jpeg: bytes, width: int, height: int, capture_time_ns: int,
                 sequence: int) -> bytes:
    """A JPEG frame record v1: the 32-byte header, then the JPEG file."""
    header = FRAME_HEADER.pack(b"VLAF", 1, FRAME_JPEG, width, height, capture_time_ns, sequence)
    return header + jpeg


def instruction_sha256(text: str) -> str:
    """The instruction's hash as the service's status shows it: 16 hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def peer_config(connect: str) -> zenoh.Config:
    config = zenoh.Config()
    config.insert_json5("mode", json.dumps("peer"))
    config.insert_json5("connect/endpoints", json.dumps([connect]))
    config.insert_json5("listen/endpoints", "[]")
    config.insert_json5("scouting/multicast/enabled", "false")
    return config


class StatusWatch:
    """The newest status document the service published on `vla/<robot>/status`."""

    def __init__(self, session, robot_id: str):
        self.latest = None
        self.count = 0
        self._lock = threading.Lock()
        self._subscriber = session.declare_subscriber(f"vla/{robot_id}/status", self._on_status)

    def _on_status(self, sample) -> None:
        try:
            document = json.loads(sample.payload.to_bytes())
        except ValueError:
            return
        with self._lock:
            self.latest = document
            self.count += 1

    def get(self):
        with self._lock:
            return self.latest, self.count

    def close(self):
        self._subscriber.undeclare()


class InstructionError(RuntimeError):
    """The service did not report the episode's instruction in force in time, or refused it."""


def instruction_counters(document) -> dict:
    policy = (document or {}).get("policy") or {}
    return {"sha256": policy.get("instruction_sha256"),
            "updates": policy.get("instruction_updates", 0),
            "applied": policy.get("instructions_applied", 0),
            "rejected": policy.get("instructions_rejected", 0)}


def segment_point_distance(start: np.ndarray, end: np.ndarray, point: np.ndarray) -> float:
    """The distance from `point` to the segment from `start` to `end`."""
    path = end - start
    length2 = float(path @ path)
    along = 0.0 if length2 == 0.0 else min(1.0, max(0.0, float((point - start) @ path) / length2))
    return float(np.linalg.norm(start + along * path - point))


def pace(deadline: float, period: float) -> float:
    """Sleeps until one period after `deadline` and returns that time; when it has already
    passed, the schedule restarts from now rather than catching up with frames in a burst."""
    deadline += period
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)
        return deadline
    return time.monotonic()


class ZenohRobot:
    """Runs episodes of the simulator in real time against a vla-rt service."""

    def __init__(self, session: zenoh.Session, robot_id: str, sim: tabletop.Tabletop,
                 camera_key: str | None = None, command_timeout_s: float = 0.5,
                 frames_per_action: int = 4, instruction_timeout_s: float = 5.0):
        self.session = session
        self.sim = sim
        self.robot_id = robot_id
        self.frames_per_action = frames_per_action
        self.frame_period_s = 1.0 / (sim.rate_hz * frames_per_action)
        self.command_timeout_s = command_timeout_s
        self.instruction_timeout_s = instruction_timeout_s
        self.camera_key = camera_key or f"vla/{robot_id}/camera"
        self.instruction_key = f"vla/{robot_id}/instruction"
        self._inbox: deque = deque()
        self._lock = threading.Lock()
        self.counts = {"ACT": 0, "HOLD": 0, "STOP": 0, "stale": 0, "unpaired": 0, "bad": 0}
        self.act_travel_m = 0.0
        self.halted = False
        self.last_command_time = None
        self.last_command = None
        self.frame_sequence = 0
        self.episode_start_ns = 0
        # Capture time of the first frame that showed the gripper at its target since the
        # target last changed; None while it is on its way.
        self.settled_ns: int | None = None
        # Capture time behind the last applied ACT.
        self.applied_capture_ns: int | None = None
        self.instruction_wait_s = None
        self.frames_kept: list = []
        self.keep_frames = 0
        self.status = StatusWatch(session, robot_id)
        self._subscriber = session.declare_subscriber(f"vla/{robot_id}/cmd", self._on_command)
        self._camera = session.declare_publisher(self.camera_key)
        self._state = session.declare_publisher(f"sim/{robot_id}/state")

    def _on_command(self, sample) -> None:
        payload = sample.payload.to_bytes()
        with self._lock:
            self._inbox.append((time.monotonic(), payload))

    def close(self) -> None:
        self.status.close()
        self._subscriber.undeclare()
        self._camera.undeclare()
        self._state.undeclare()

    # One camera frame ------------------------------------------------------------------------

    def _target_moved(self) -> None:
        self.settled_ns = None

    def _halt(self) -> None:
        self.sim.hold_still()
        self._target_moved()
        self.halted = True

    def _paired(self, capture_ns: int) -> bool:
        if self.applied_capture_ns is not None and capture_ns == self.applied_capture_ns:
            return True  # a further tick of the action being executed
        return self.settled_ns is not None and capture_ns >= self.settled_ns

    def apply_commands(self) -> list[dict]:
        """Applies every command that arrived since the last frame, in order; each one is
        returned with `applied` (whether it moved the target: only paired ACTs do)."""
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
                self._halt()
                continue
            self.last_command_time = received_at
            state = command["state"]
            command["applied"] = False
            if state == "STOP":
                self.counts["STOP"] += 1
                self._halt()
            elif 0 < command["capture_time_ns"] < self.episode_start_ns:
                # Computed on a frame of the previous episode, or before this episode's
                # instruction was in force.
                self.counts["stale"] += 1
            elif state == "ACT" and not self._paired(command["capture_time_ns"]):
                self.counts["unpaired"] += 1
            elif state == "ACT":
                self.counts["ACT"] += 1
                action = command["action"]
                self.sim.target = np.clip(self.sim.target + action[:3],
                                          tabletop.WORKSPACE_LOW, tabletop.WORKSPACE_HIGH)
                self.sim.gripper = float(np.clip(action[6], 0.0, 1.0))
                self.applied_capture_ns = command["capture_time_ns"]
                self._target_moved()
                self.halted = False
                command["applied"] = True
            else:
                self.counts["HOLD"] += 1
            self.last_command = command
            applied.append(command)
        if (self.last_command_time is not None
                and time.monotonic() - self.last_command_time > self.command_timeout_s
                and not self.halted):
            print("robot.py: no commands: halting", file=sys.stderr, flush=True)
            self._halt()
        return applied

    def _at_target(self) -> bool:
        return float(np.linalg.norm(self.sim.target - self.sim.hand_position)) <= SETTLED_M

    def publish_frame(self) -> None:
        image = self.sim.render()
        jpeg = encode_jpeg(image)
        now_ns = time.time_ns()
        if self.settled_ns is None and self._at_target():
            self.settled_ns = now_ns
        height, width, _ = image.shape
        self._camera.put(frame_record(jpeg, width, height, now_ns, self.frame_sequence))
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
        if any(c["applied"] for c in applied):
            self.act_travel_m += moved
        self.publish_frame()
        state = self.sim.state()
        state.update({"moved_m": round(moved, 6), "halted": self.halted,
                      "commands": dict(self.counts)})
        self._state.put(json.dumps(state))
        return state

    # Episodes -------------------------------------------------------------------------------

    def _publish_scene_until(self, done, timeout_s: float, what: str):
        """Publishes the current scene, not simulated further, every frame period until
        `done(status document)` holds; the service's inference worker applies an instruction
        only on a frame it has not predicted on. Returns the document."""
        image = self.sim.render()
        height, width, _ = image.shape
        jpeg = encode_jpeg(image)
        deadline = time.monotonic() + timeout_s
        next_frame = time.monotonic()
        while True:
            document = self.status.get()[0]
            if done(document):
                return document
            if time.monotonic() > deadline:
                counters = instruction_counters(document)
                raise InstructionError(
                    f"robot.py: {what} within {timeout_s} s (status on vla/{self.robot_id}/status: "
                    + ("none received" if document is None else
                       f"instruction_sha256 {counters['sha256']}, instruction_updates "
                       f"{counters['updates']}, instructions_applied {counters['applied']}, "
                       f"instructions_rejected {counters['rejected']}, state "
                       f"{document.get('state')}") + ")")
            self.apply_commands()
            self._camera.put(frame_record(jpeg, width, height, time.time_ns(), self.frame_sequence))
            self.frame_sequence += 1
            next_frame = pace(next_frame, self.frame_period_s)

    def start_episode(self, seed: int) -> tabletop.Task:
        """Resets the scene, puts the instruction and waits until the service's status shows
        it in force: `instructions_applied` grew past the count before the put (the worker
        takes the instruction right before a prediction, so from then on it predicts with
        it; `instruction_updates` only says the text arrived) and `instruction_sha256` is
        this instruction's. The status comes once a second, so the wait is up to about 1.1 s.
        Raises InstructionError when that takes over `instruction_timeout_s` or the service
        refuses the instruction."""
        task = self.sim.reset(seed)
        self.episode_start_ns = NEVER_NS
        self.applied_capture_ns = None
        self._target_moved()
        started = time.monotonic()
        before = self._publish_scene_until(lambda d: d is not None, self.instruction_timeout_s,
                                           "no status from the service")
        before = instruction_counters(before)
        digest = instruction_sha256(task.instruction)
        self.session.put(self.instruction_key, task.instruction)

        def in_force(document) -> bool:
            now = instruction_counters(document)
            if now["rejected"] > before["rejected"] and now["applied"] == before["applied"]:
                raise InstructionError(
                    f"robot.py: the service refused the instruction {task.instruction!r} "
                    f"(instructions_rejected {now['rejected']}; see its log)")
            return now["applied"] > before["applied"] and now["sha256"] == digest

        self._publish_scene_until(in_force, self.instruction_timeout_s,
                                  f"the service did not report the instruction {task.instruction!r} "
                                  f"(sha256 {digest}) in force")
        self.instruction_wait_s = time.monotonic() - started
        self.episode_start_ns = time.time_ns()
        return task

    def run_frames(self, count: int, until=None) -> int:
        """Runs up to `count` frame intervals in real time; stops early when `until(state)`
        holds."""
        next_deadline = time.monotonic()
        for index in range(count):
            state = self.frame()
            if until is not None and until(state):
                return index + 1
            next_deadline = pace(next_deadline, self.frame_period_s)
        return count

    def _reach_points(self) -> dict:
        above = np.array([0.0, 0.0, tabletop.REACH_ABOVE_BLOCK_M])
        return {c: self.sim.block_position(c) + above for c in self.sim.colours}

    def run_episode(self, seed: int, max_steps: int) -> dict:
        """One episode of at most `max_steps` action periods; ends at success.

        `other_blocks_reached`: the blocks other than the named one whose reach point (the
        success test's point, tabletop.REACH_ABOVE_BLOCK_M above the block's centre) the
        fingertips came within tabletop.REACH_TOLERANCE_M of, in the order first reached.
        Within a frame interval the gripper moves in a straight line towards a fixed target,
        so the distance is the one from the reach point (where the block is at the end of
        the interval) to the fingertips' segment over the interval: a pass between two
        frames counts."""
        wall_start = time.monotonic()
        counts_before = dict(self.counts)
        task = self.start_episode(seed)
        others: list[str] = []
        previous_tip = self.sim.tip_position

        def until(state) -> bool:
            nonlocal previous_tip
            tip = self.sim.tip_position
            for colour, point in self._reach_points().items():
                if colour != task.colour and colour not in others and \
                        segment_point_distance(previous_tip, tip, point) < tabletop.REACH_TOLERANCE_M:
                    others.append(colour)
            previous_tip = tip
            return state["success"]

        frames = self.run_frames(max_steps * self.frames_per_action, until=until)
        success = self.sim.success()
        return {"seed": seed, "instruction": task.instruction, "success": success,
                "steps": -(-frames // self.frames_per_action),
                "time_s": round(frames * self.frame_period_s, 3),
                "other_blocks_reached": others,
                "final_tip": [round(float(v), 5) for v in self.sim.tip_position],
                "acts_applied": self.counts["ACT"] - counts_before["ACT"],
                "acts_unpaired": self.counts["unpaired"] - counts_before["unpaired"],
                "instruction_wait_s": round(self.instruction_wait_s, 3),
                "wall_s": round(time.monotonic() - wall_start, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description="The simulated tabletop as a robot on Zenoh.")
    parser.add_argument("--connect", default="tcp/127.0.0.1:7447")
    parser.add_argument("--robot-id", default="sim")
    parser.add_argument("--camera-key", default=None, help="default vla/<robot-id>/camera")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--frames-per-action", type=int, default=4)
    parser.add_argument("--instruction-timeout", type=float, default=5.0,
                        help="seconds to wait for the service to report an episode's instruction in force")
    args = parser.parse_args()
    sim = tabletop.Tabletop()
    try:
        with zenoh.open(peer_config(args.connect)) as session:
            robot = ZenohRobot(session, args.robot_id, sim, args.camera_key,
                               frames_per_action=args.frames_per_action,
                               instruction_timeout_s=args.instruction_timeout)
            try:
                for episode in range(args.episodes):
                    print(json.dumps(robot.run_episode(args.seed + episode, args.max_steps)),
                          flush=True)
            except InstructionError as e:
                print(e, file=sys.stderr)
                return 1
            finally:
                robot.close()
    finally:
        sim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
