#!/usr/bin/env python3
"""Does the policy follow its instruction? An open-loop measure through vla-rt.

For each held-out scene the policy is asked, on the same frame, to reach each of the four
blocks in turn; a prediction agrees when its horizontal move points within 45 degrees of the
scripted expert's move toward the named block. A policy that ignores the instruction heads for
one block whatever it is told and agrees about as often as that block happens to lie the same
way as the named one; one that follows it agrees nearly always.

    python3 sim/instruction.py --scenes 40 --formats f32,int8,int4
    python3 sim/instruction.py --model engines/openvla-sim --json

Scenes: `tabletop.Tabletop.reset(seed)` places the blocks and the gripper, then the gripper
takes 0-6 expert steps toward a block drawn at random (any colour, not the one asked for), so
that neither where it starts nor where it is headed gives the target away. The frame is the
render after the JPEG round trip the robot's frames take (`make_dataset.jpeg_round_trip` at
`robot.JPEG_QUALITY`), written as a PNG so that vla-rt sees exactly those pixels. Seeds: from
500000 by default, apart from training (< 200000), evaluation (200000+) and the fixture
(100000+).

Only (scene, colour) pairs whose expert horizontal move is longer than MIN_MOVE_M count: over
the block the expert moves down and a horizontal direction means nothing. "swap" is the share
of (scene, pair of colours) whose expert moves differ in direction by more than 45 degrees
where the predicted moves differ by more than 45 degrees too: 0 for a policy deaf to the
instruction, whatever its aim.

vla-rt runs once per weight format (`vla-rt predict --requests`), loading the policy once for
all of that format's predictions. Exit 0 whatever the score; 2 on bad input (a missing model or
binary, an unknown format, or a checkpoint vla-rt refuses); 1 when vla-rt fails otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

SIM_DIR = pathlib.Path(__file__).resolve().parent
REPO = SIM_DIR.parent
sys.path.insert(0, str(SIM_DIR))

import tabletop  # noqa: E402
from expert import expert_move  # noqa: E402
from make_dataset import jpeg_round_trip  # noqa: E402
from robot import JPEG_QUALITY  # noqa: E402

TRAINED_MODEL = REPO / "engines" / "openvla-sim"
HELD_OUT_SEED = 500000
# Shorter horizontal expert moves are the final descent: their direction is noise.
MIN_MOVE_M = 0.005
AGREE_WITHIN_DEG = 45.0
# Expert steps toward the decoy block before the frame is taken.
MAX_DECOY_STEPS = 6
# A random stream of its own, so the block layout stays the one `reset(seed)` draws.
DECOY_STREAM = 3
# Each format's `vla-rt predict` flags. Without calibration scales `--projector int8` is
# INT8 weight-only, as the service runs it by default.
FORMATS = {
    "f32": ["--quantization", "none", "--projector", "f32"],
    "int8": ["--quantization", "int8", "--projector", "int8"],
    "int4": ["--quantization", "int4", "--projector", "int8"],
}


@dataclasses.dataclass
class Scene:
    seed: int
    # uint8 [224, 224, 3], after the JPEG round trip.
    frame: np.ndarray
    # Fingertip position (m).
    tip: np.ndarray
    # Colour -> where the fingertips must go to reach that block (m).
    goals: dict[str, np.ndarray]


def build_scenes(first_seed: int, count: int, sim: tabletop.Tabletop | None = None) -> list[Scene]:
    """`count` scenes from seeds first_seed, first_seed + 1, ..."""
    own = sim is None
    if own:
        sim = tabletop.Tabletop()
    try:
        scenes = []
        for seed in range(first_seed, first_seed + count):
            sim.reset(seed)
            rng = np.random.default_rng([seed, DECOY_STREAM])
            decoy = str(rng.choice(sim.colours))
            steps = int(rng.integers(0, MAX_DECOY_STEPS + 1))
            for _ in range(steps):
                goal = sim.block_position(decoy) + [0.0, 0.0, tabletop.REACH_ABOVE_BLOCK_M]
                move = expert_move(sim.tip_position, goal)
                sim.step(np.concatenate([move, [0.0, 0.0, 0.0, 1.0]]))
            goals = {c: sim.block_position(c) + np.array([0.0, 0.0, tabletop.REACH_ABOVE_BLOCK_M])
                     for c in sim.colours}
            scenes.append(Scene(seed=seed, frame=jpeg_round_trip(sim.render(), JPEG_QUALITY),
                                tip=sim.tip_position, goals=goals))
        return scenes
    finally:
        if own:
            sim.close()


def expert_moves(scene: Scene) -> dict[str, np.ndarray]:
    """The expert's translation from the scene's fingertips toward each block."""
    return {c: expert_move(scene.tip, goal) for c, goal in scene.goals.items()}


def _within(a, b, degrees: float = AGREE_WITHIN_DEG) -> bool:
    a, b = np.asarray(a, np.float64)[:2], np.asarray(b, np.float64)[:2]
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return False  # no direction to agree with
    return float(np.dot(a, b)) / norms >= math.cos(math.radians(degrees))


def agrees(predicted_xy, expert_xy) -> bool:
    """Whether two horizontal moves point within 45 degrees of each other."""
    return _within(predicted_xy, expert_xy)


def score(scenes: list[Scene], predicted: list[dict[str, np.ndarray]]) -> dict:
    """The share of predictions that agree with the expert, per colour and overall.

    `predicted[i][colour]` is the policy's move (dx, dy[, dz, ...]) on scenes[i] told to reach
    that colour. Pairs whose expert horizontal move is MIN_MOVE_M or shorter are left out."""
    if len(predicted) != len(scenes):
        raise ValueError(f"{len(predicted)} predictions for {len(scenes)} scenes")
    hits: dict[str, int] = {}
    counts: dict[str, int] = {}
    swap_hits = swap_pairs = 0
    for scene, moves in zip(scenes, predicted):
        expert = expert_moves(scene)
        counted = [c for c in scene.goals if float(np.linalg.norm(expert[c][:2])) > MIN_MOVE_M]
        for colour in counted:
            counts[colour] = counts.get(colour, 0) + 1
            hits[colour] = hits.get(colour, 0) + int(agrees(moves[colour], expert[colour]))
        for i, first in enumerate(counted):
            for second in counted[i + 1:]:
                if not _within(expert[first], expert[second]):
                    swap_pairs += 1
                    swap_hits += int(not _within(moves[first], moves[second]))
    pairs = sum(counts.values())
    colours = [c for c in tabletop.COLOURS if c in counts]
    return {
        "overall": sum(hits.values()) / pairs if pairs else 0.0,
        "per_colour": {c: hits[c] / counts[c] for c in colours},
        "per_colour_pairs": {c: counts[c] for c in colours},
        "pairs": pairs,
        "swap": swap_hits / swap_pairs if swap_pairs else 0.0,
        "swap_pairs": swap_pairs,
    }


class VlaRtError(RuntimeError):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line, like every other bad input here, rather than the usage block.
        print(f"instruction.py: {message}", file=sys.stderr)
        sys.exit(2)


def predict_moves(vla_rt: str, model: str, scenes: list[Scene], flags: list[str],
                  workdir: pathlib.Path) -> list[dict[str, np.ndarray]]:
    """vla-rt's translation for each scene and colour, in one `vla-rt predict --requests` run."""
    workdir.mkdir(parents=True, exist_ok=True)
    lines, keys = [], []
    for scene in scenes:
        image = f"scene_{scene.seed}.png"
        if not (workdir / image).exists():
            Image.fromarray(scene.frame).save(workdir / image)
        for colour in scene.goals:
            lines.append(json.dumps({"image": image,
                                     "instruction": tabletop.Task("reach", colour).instruction}))
            keys.append(colour)
    requests = workdir / "requests.jsonl"
    requests.write_text("\n".join(lines) + "\n")
    run = subprocess.run([vla_rt, "predict", "--model", model, "--requests", str(requests),
                          "--json", *flags],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")})
    if run.returncode != 0:
        # vla-rt's 2 is bad input (a checkpoint it cannot use, an ambiguous --unnorm-key).
        raise VlaRtError(f"{' '.join(flags)}: vla-rt predict exited with {run.returncode}: "
                         f"{run.stderr.strip()}", 2 if run.returncode == 2 else 1)
    answers = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    if len(answers) != len(lines):
        raise VlaRtError(f"{' '.join(flags)}: vla-rt predict answered {len(answers)} of "
                         f"{len(lines)} requests")
    predicted: list[dict[str, np.ndarray]] = []
    answer = iter(zip(keys, answers))
    for scene in scenes:
        moves = {}
        for _ in scene.goals:
            colour, result = next(answer)
            moves[colour] = np.asarray(result["action"][:3], np.float64)
        predicted.append(moves)
    return predicted


def print_table(report: dict) -> None:
    print(f"instruction: {report['model']}, {report['scenes']} scenes from seed {report['seed']}; "
          f"share of predictions within {AGREE_WITHIN_DEG:.0f} degrees of the expert's "
          f"horizontal move (moves > {MIN_MOVE_M * 1000:.0f} mm)")
    colours = list(tabletop.COLOURS)
    print(f"{'format':<7}" + "".join(f"{c:>8}" for c in colours)
          + f"{'overall':>9}{'pairs':>7}{'swap':>7}{'sec':>6}")
    for name, result in report["formats"].items():
        cells = "".join(f"{result['per_colour'][c]:>8.2f}" if c in result["per_colour"]
                        else f"{'-':>8}" for c in colours)
        print(f"{name:<7}{cells}{result['overall']:>9.2f}{result['pairs']:>7}"
              f"{result['swap']:>7.2f}{result['seconds']:>6.1f}")


def main() -> int:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(TRAINED_MODEL), help="checkpoint folder")
    parser.add_argument("--vla-rt", default=str(REPO / "target" / "release" / "vla-rt"),
                        help="the vla-rt binary")
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="first scene's seed")
    parser.add_argument("--formats", default="f32,int8,int4",
                        help=f"comma-separated weight formats among {', '.join(FORMATS)}")
    parser.add_argument("--unnorm-key", default=None,
                        help="dataset statistics key (default: the checkpoint's only one)")
    parser.add_argument("--backend", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    def bad(message: str) -> int:
        print(f"instruction.py: {message}", file=sys.stderr)
        return 2

    model = pathlib.Path(args.model)
    if not (model / "config.json").is_file():
        return bad(f"--model {args.model}: not a checkpoint folder (no config.json)")
    if not (os.path.isfile(args.vla_rt) and os.access(args.vla_rt, os.X_OK)):
        return bad(f"--vla-rt {args.vla_rt}: not an executable (cargo build --release)")
    if args.scenes < 1:
        return bad(f"--scenes {args.scenes}: must be at least 1")
    formats = list(dict.fromkeys(f.strip() for f in args.formats.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        return bad(f"--formats {args.formats}: want some of {', '.join(FORMATS)}")

    extra = ["--backend", args.backend]
    if args.unnorm_key:
        extra += ["--unnorm-key", args.unnorm_key]
    scenes = build_scenes(args.seed, args.scenes)
    report = {"model": args.model, "scenes": args.scenes, "seed": args.seed,
              "min_move_m": MIN_MOVE_M, "agree_within_deg": AGREE_WITHIN_DEG, "formats": {}}
    with tempfile.TemporaryDirectory(prefix="vla-instruction-") as workdir:
        for name in formats:
            start = time.monotonic()
            try:
                predicted = predict_moves(args.vla_rt, str(model), scenes, FORMATS[name] + extra,
                                          pathlib.Path(workdir))
            except VlaRtError as e:
                print(f"instruction.py: {name}: {e}", file=sys.stderr)
                return e.exit_code
            result = score(scenes, predicted)
            result["flags"] = " ".join(FORMATS[name])
            result["seconds"] = round(time.monotonic() - start, 2)
            report["formats"][name] = result
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
