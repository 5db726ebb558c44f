#!/usr/bin/env python3
"""Writes scripted-expert episodes of the tabletop tasks as a dataset.

    python3 sim/make_dataset.py --episodes 200 --seed 0 --out data/tabletop

Layout of OUT:
- `episode_NNNNNN.npz`, one per episode: `frames` uint8 [T, 224, 224, 3] (frame t is what
  the camera saw before action t, after a JPEG round trip at the quality the simulated robot
  publishes with, so that training sees the frames the service decodes), `actions` float32
  [T, 7] (dx, dy, dz in metres, droll, dpitch, dyaw = 0, gripper 1 open), `instruction`
  (str), `seed` (int), `success` (bool, whether the episode ended in success), `rate_hz`
  (float); and, for training-only auxiliary losses, `tip` and `goal` float32 [T, 3] (the
  fingertips and where they must go, metres) and `patch_labels` uint8 [T, 256] (what covers
  most of each 14 x 14 patch, row-major: 0 table, 1 gripper, 2 + i the block of colour i in
  tabletop.COLOURS order), and `blocks` float32 [T, colours, 3] (each block's centre, in
  the dataset's colour order), with which train.py relabels a frame for every colour;
- `dataset.json`: the episodes (file, seed, instruction, steps, success), the seed range, the action rate,
  the image size and the action statistics in OpenVLA's `norm_stats` layout (q01, q99, min,
  max, mean, std, mask per dimension), ready for a checkpoint's config.json.

Episode i uses seed S + i, so a dataset is reproduced exactly from (S, N, --max-steps,
--noise-std, --jpeg-quality). With --noise-std the executed translations get Gaussian noise
while the recorded actions stay the expert's (noise injection as in DART): the episodes then
show the way back from states a learned policy drifts into. With --lure-steps A B the first
k steps (k drawn from A..B per episode) execute the expert's move toward another block (the
lure) while the recorded action stays the expert's for the named one: the episodes then start
near, or over, a wrong block and show the gripper leaving it.
Only successful episodes are kept unless --keep-failures.
"""
from __future__ import annotations

import argparse
import io
import json
import pathlib
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import tabletop  # noqa: E402
from expert import expert_action, expert_move  # noqa: E402
from robot import JPEG_QUALITY  # noqa: E402

FORMAT = "vla-rt-sim-tabletop-v2"
PATCH = 14
# A patch is labelled with an object only when it covers this share of the patch.
PATCH_LABEL_MIN_SHARE = 0.15


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


class PatchLabeller:
    """Labels each patch of the camera image with the object that covers most of it, from
    MuJoCo's segmentation rendering."""

    def __init__(self, sim: tabletop.Tabletop):
        import mujoco
        self.sim = sim
        self.renderer = mujoco.Renderer(sim.model, tabletop.IMAGE_SIZE, tabletop.IMAGE_SIZE)
        self.renderer.enable_segmentation_rendering()
        self.geom_label = np.zeros(sim.model.ngeom + 1, np.uint8)
        hand_bodies = {sim.model.body(n).id for n in ("hand", "finger_left", "finger_right")}
        for geom in range(sim.model.ngeom):
            body = sim.model.geom_bodyid[geom]
            if body in hand_bodies:
                self.geom_label[geom] = 1
            for i, colour in enumerate(sim.colours):
                if body == sim.model.body(f"block_{colour}").id:
                    self.geom_label[geom] = 2 + i
        self.geom_type = int(mujoco.mjtObj.mjOBJ_GEOM)
        self.classes = 2 + len(sim.colours)

    def labels(self) -> np.ndarray:
        self.renderer.update_scene(self.sim.data, camera="front")
        seg = self.renderer.render()
        ids = np.where(seg[..., 1] == self.geom_type, seg[..., 0], -1)
        pixel = np.where(ids >= 0, self.geom_label[np.clip(ids, 0, None)], 0)
        grid = tabletop.IMAGE_SIZE // PATCH
        patches = pixel.reshape(grid, PATCH, grid, PATCH).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
        counts = np.stack([(patches == c).sum(axis=1) for c in range(self.classes)], axis=1)
        counts[:, 0] = 0
        best = counts.argmax(axis=1)
        share = counts[np.arange(len(best)), best] / patches.shape[1]
        return np.where(share >= PATCH_LABEL_MIN_SHARE, best, 0).astype(np.uint8)

    def close(self) -> None:
        self.renderer.close()


def lure_plan(sim: tabletop.Tabletop, seed: int, lure_steps: tuple[int, int] | None):
    """The block the first steps head for instead of the named one, and for how many steps."""
    if lure_steps is None:
        return None, 0
    rng = np.random.default_rng([seed, 2])
    others = [c for c in sim.colours if c != sim.task.colour]
    return str(rng.choice(others)), int(rng.integers(lure_steps[0], lure_steps[1] + 1))


def record_episode(sim: tabletop.Tabletop, labeller: PatchLabeller, seed: int, max_steps: int,
                   jpeg_quality: int, noise_std: float = 0.0,
                   lure_steps: tuple[int, int] | None = None):
    task = sim.reset(seed)
    noise = np.random.default_rng([seed, 1])
    lure, lured_steps = lure_plan(sim, seed, lure_steps)
    steps: dict[str, list] = {"frames": [], "actions": [], "tip": [], "goal": [], "patch_labels": [],
                              "blocks": []}
    while len(steps["actions"]) < max_steps and not (sim.success() and len(steps["actions"]) >= lured_steps):
        frame = sim.render()
        steps["frames"].append(jpeg_round_trip(frame, jpeg_quality) if jpeg_quality else frame)
        steps["patch_labels"].append(labeller.labels())
        steps["tip"].append(sim.tip_position.astype(np.float32))
        steps["goal"].append(sim.goal_tip_position().astype(np.float32))
        steps["blocks"].append(np.stack([sim.block_position(c) for c in sim.colours]).astype(np.float32))
        action = expert_action(sim)
        steps["actions"].append(action)
        executed = action.copy()
        if len(steps["actions"]) <= lured_steps:
            lure_goal = sim.block_position(lure) + np.array([0.0, 0.0, tabletop.REACH_ABOVE_BLOCK_M])
            executed[:3] = expert_move(sim.tip_position, lure_goal)
        executed[:3] += noise.normal(0.0, noise_std, 3) if noise_std else 0.0
        sim.step(executed)
    shapes = {"frames": (0, 224, 224, 3), "actions": (0, 7), "tip": (0, 3), "goal": (0, 3),
              "patch_labels": (0, (tabletop.IMAGE_SIZE // PATCH) ** 2),
              "blocks": (0, len(sim.colours), 3)}
    arrays = {k: np.stack(v) if v else np.zeros(shapes[k]) for k, v in steps.items()}
    arrays["frames"] = arrays["frames"].astype(np.uint8)
    arrays["patch_labels"] = arrays["patch_labels"].astype(np.uint8)
    for k in ("actions", "tip", "goal", "blocks"):
        arrays[k] = arrays[k].astype(np.float32)
    return task, arrays, sim.success()


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
    parser.add_argument("--noise-std", type=float, default=0.0,
                        help="metres of Gaussian noise added to each executed translation (the "
                             "recorded action stays the expert's), so that the data shows how to "
                             "recover from the errors a learned policy makes")
    parser.add_argument("--lure-steps", type=int, nargs=2, metavar=("MIN", "MAX"), default=None,
                        help="the first MIN..MAX steps of each episode head for another block "
                             "(the recorded actions stay the named block's)")
    parser.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY,
                        help="JPEG round trip of each frame (0: raw frames)")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sim = tabletop.Tabletop()
    labeller = PatchLabeller(sim)
    index, all_actions = [], []
    try:
        for i in range(args.episodes):
            seed = args.seed + i
            task, arrays, success = record_episode(sim, labeller, seed, args.max_steps,
                                                   args.jpeg_quality, args.noise_std,
                                                   tuple(args.lure_steps) if args.lure_steps else None)
            actions = arrays["actions"]
            if not success and not args.keep_failures:
                print(f"seed {seed}: expert failed ({task.instruction!r}), skipped", file=sys.stderr)
                continue
            name = f"episode_{i:06d}.npz"
            np.savez_compressed(out / name, **arrays,
                                instruction=np.array(task.instruction), seed=np.array(seed),
                                success=np.array(success), rate_hz=np.array(sim.rate_hz))
            index.append({"file": name, "seed": seed, "instruction": task.instruction,
                          "steps": len(actions), "success": bool(success)})
            all_actions.append(actions)
    finally:
        labeller.close()
        sim.close()
    stacked = np.concatenate(all_actions) if all_actions else np.zeros((0, 7), np.float32)
    meta = {
        "format": FORMAT,
        "rate_hz": tabletop.ACTION_RATE_HZ,
        "image_size": [tabletop.IMAGE_SIZE, tabletop.IMAGE_SIZE],
        "seed": args.seed,
        "jpeg_quality": args.jpeg_quality,
        "noise_std": args.noise_std,
        "lure_steps": args.lure_steps,
        # Episode seeds are first_seed .. first_seed + requested - 1; train.py refuses datasets
        # whose ranges overlap, since they would hold the same scenes.
        "seed_range": [args.seed, args.seed + args.episodes],
        "colours": list(sim.colours),
        "episodes": index,
        "transitions": int(stacked.shape[0]),
        "action_statistics": action_statistics(stacked) if len(stacked) else None,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    print(f"{len(index)} episodes, {stacked.shape[0]} transitions in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
