#!/usr/bin/env python3
"""Writes scripted-expert episodes of the tabletop tasks as a dataset.

    python3 sim/make_dataset.py --episodes 200 --seed 0 --out data/tabletop

Layout of OUT:
- `episode_NNNNNN.npz`, one per episode: `frames` uint8 [T, 224, 224, 3] (frame t is what
  the camera saw before action t), `actions` float32 [T, 7] (dx, dy, dz in metres, droll,
  dpitch, dyaw = 0, gripper 1 open), `instruction` (str), `seed` (int), `success` (bool,
  whether the episode ended in success), `rate_hz` (float);
- `dataset.json`: the episodes (file, seed, instruction, steps, success), the action rate,
  the image size and the action statistics in OpenVLA's `norm_stats` layout (q01, q99, min,
  max, mean, std, mask per dimension), ready for a checkpoint's config.json.

Episode i uses seed S + i, so a dataset is reproduced exactly from (S, N, --max-steps).
Only successful episodes are kept unless --keep-failures.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import tabletop  # noqa: E402
from expert import expert_action  # noqa: E402

FORMAT = "vla-rt-sim-tabletop-v1"


def record_episode(sim: tabletop.Tabletop, seed: int, max_steps: int):
    task = sim.reset(seed)
    frames, actions = [], []
    while len(actions) < max_steps and not sim.success():
        frames.append(sim.render())
        action = expert_action(sim)
        actions.append(action)
        sim.step(action)
    return task, np.stack(frames) if frames else np.zeros((0, 224, 224, 3), np.uint8), \
        np.stack(actions).astype(np.float32) if actions else np.zeros((0, 7), np.float32), sim.success()


def action_statistics(actions: np.ndarray) -> dict:
    return {
        "q01": np.quantile(actions, 0.01, axis=0).tolist(),
        "q99": np.quantile(actions, 0.99, axis=0).tolist(),
        "min": actions.min(axis=0).tolist(),
        "max": actions.max(axis=0).tolist(),
        "mean": actions.mean(axis=0).tolist(),
        "std": actions.std(axis=0).tolist(),
        # The gripper is not normalised (OpenVLA's convention).
        "mask": [True] * 6 + [False],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--keep-failures", action="store_true")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sim = tabletop.Tabletop()
    index, all_actions = [], []
    try:
        for i in range(args.episodes):
            seed = args.seed + i
            task, frames, actions, success = record_episode(sim, seed, args.max_steps)
            if not success and not args.keep_failures:
                print(f"seed {seed}: expert failed ({task.instruction!r}), skipped", file=sys.stderr)
                continue
            name = f"episode_{i:06d}.npz"
            np.savez_compressed(out / name, frames=frames, actions=actions,
                                instruction=np.array(task.instruction), seed=np.array(seed),
                                success=np.array(success), rate_hz=np.array(sim.rate_hz))
            index.append({"file": name, "seed": seed, "instruction": task.instruction,
                          "steps": len(actions), "success": bool(success)})
            all_actions.append(actions)
    finally:
        sim.close()
    stacked = np.concatenate(all_actions) if all_actions else np.zeros((0, 7), np.float32)
    meta = {
        "format": FORMAT,
        "rate_hz": tabletop.ACTION_RATE_HZ,
        "image_size": [tabletop.IMAGE_SIZE, tabletop.IMAGE_SIZE],
        "seed": args.seed,
        "episodes": index,
        "transitions": int(stacked.shape[0]),
        "action_statistics": action_statistics(stacked) if len(stacked) else None,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    print(f"{len(index)} episodes, {stacked.shape[0]} transitions in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
