#!/usr/bin/env python3
"""Writes a fixture folder, in the form of tests/fixtures/openvla-tiny/expected.json, from a
trained checkpoint and held-out expert episodes: for each case the frame (PNG), the
instruction and what the checkpoint computes for it in PyTorch, in f32 from the stored
weights, as vla-rt computes it (prompt ids, greedy tokens with each step's margin over the
runner-up id of the whole vocabulary, normalised and un-normalised actions), and the expert's
action for the frame.

    python3 sim/make_dataset.py --episodes 60 --seed 100000 --out data/heldout
    python3 sim/make_fixture.py --model engines/openvla-sim --data data/heldout --cases 16 \\
        --out tests/fixtures/openvla-sim

`vla-rt bench quant --model DIR --fixtures OUT` measures the weight formats on it, and
tests/sim_checkpoint.rs checks that vla-rt's tokens equal these. A frame whose greedy choice
is a near tie (a margin under --min-margin at some step) is not made a case, since the order
of float additions may then decide the token; how many were passed over is recorded.
It also prints the open-loop agreement of the checkpoint with the expert over every frame of
the held-out episodes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import vla_torch  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="make_dataset.py folder of held-out episodes")
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="picks the frame of each episode")
    parser.add_argument("--min-margin", type=float, default=0.01)
    args = parser.parse_args()
    model_dir, data_dir, out = pathlib.Path(args.model), pathlib.Path(args.data), pathlib.Path(args.out)
    config = json.loads((model_dir / "config.json").read_text())
    (unnorm_key, stats), = config["norm_stats"].items()
    stats = stats["action"]
    model = vla_torch.load_checkpoint(model_dir).eval()
    preprocess = vla_torch.Preprocessor(model_dir)
    prompts = vla_torch.PromptEncoder(model_dir)
    actions = vla_torch.ActionTokenizer(stats["q01"], stats["q99"], stats["mask"])
    meta = json.loads((data_dir / "dataset.json").read_text())
    rng = np.random.default_rng(args.seed)

    out.mkdir(parents=True, exist_ok=True)
    cases, passed_over = [], 0
    agreement = {"frames": 0, "xyz_tokens_equal": 0, "sq_error": np.zeros(3)}
    for episode in meta["episodes"]:
        with np.load(data_dir / episode["file"]) as data:
            frames, expert = data["frames"], data["actions"].astype(np.float64)
            instruction = str(data["instruction"])
        ids = prompts(instruction)
        with torch.no_grad():
            pixels = preprocess(torch.from_numpy(frames))
            tokens, _, margins = model.generate(pixels, torch.tensor([ids] * len(frames)))
        tokens, margins = tokens.numpy(), margins.numpy()
        predicted = actions.actions(tokens)
        agreement["frames"] += len(frames)
        agreement["xyz_tokens_equal"] += int((tokens[:, :3] == actions.tokens(expert)[:, :3]).sum())
        agreement["sq_error"] += ((predicted[:, :3] - expert[:, :3]) ** 2).sum(0)
        if len(cases) >= args.cases:
            continue
        step = int(rng.integers(len(frames)))
        if margins[step].min() < args.min_margin:
            passed_over += 1
            continue
        name = f"case{len(cases):02d}_seed{episode['seed']}_step{step}"
        (out / name).mkdir(exist_ok=True)
        image_path = out / name / "image.png"
        Image.fromarray(frames[step]).save(image_path)
        cases.append({
            "name": name,
            "image": f"{name}/image.png",
            "image_size_wh": [frames.shape[2], frames.shape[1]],
            "image_sha256": hashlib.sha256(image_path.read_bytes()).hexdigest(),
            "instruction": instruction,
            "unnorm_key": unnorm_key,
            "episode_seed": episode["seed"],
            "episode_step": step,
            "input_ids": ids,
            "generated_token_ids": tokens[step].tolist(),
            "step_margins": [round(float(m), 5) for m in margins[step]],
            "normalized_actions": actions.normalised(tokens[step]).tolist(),
            "actions": predicted[step].tolist(),
            "expert_action": expert[step].tolist(),
        })
    if len(cases) < args.cases:
        print(f"only {len(cases)} cases ({passed_over} frames passed over as near ties)", file=sys.stderr)
        return 1
    rmse = np.sqrt(agreement["sq_error"] / agreement["frames"])
    span = np.asarray(stats["q99"][:3]) - np.asarray(stats["q01"][:3])
    summary = {
        "frames": agreement["frames"],
        "xyz_token_agreement_with_expert": agreement["xyz_tokens_equal"] / (3 * agreement["frames"]),
        "xyz_one_minus_nrmse_vs_expert": float(1 - np.mean(rmse / span)),
    }
    expected = {
        "fixture": out.name,
        "generated_by": "sim/make_fixture.py: PyTorch (sim/vla_torch.py) in f32 on the checkpoint's "
                        "stored weights; not OpenVLA's reference code, which sim/vla_torch.py "
                        "reproduces on tests/fixtures/openvla-tiny",
        "model": str(model_dir),
        "model_sha256": hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest(),
        "held_out": {"dataset": meta["format"], "seed": meta["seed"], "episodes": len(meta["episodes"])},
        "frame_pick_seed": args.seed,
        "min_margin": args.min_margin,
        "passed_over_near_ties": passed_over,
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "open_loop_vs_expert": summary,
        "cases": cases,
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
