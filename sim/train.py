#!/usr/bin/env python3
"""Trains a tiny OpenVLA on the simulator's expert episodes by behaviour cloning, and exports
it as an HF OpenVLA checkpoint folder that vla-rt loads.

    python3 sim/train.py --data data/noisy0 data/noisy1 data/clean --work data/run \
        --steps 12000 --attention-weight 0 --until-step 2500 --threads 2
    python3 sim/train.py --data data/noisy0 data/noisy1 data/clean --work data/run \
        --steps 10000 --threads 2 --export engines/openvla-sim

(the recipe of engines/openvla-sim: the README's "The trained checkpoint" gives the datasets).
The loss is OpenVLA's: cross-entropy of the 7 action tokens given the image and the prompt
(teacher forcing). Greedy decoding takes the argmax over the whole vocabulary, so every id must
lose to the right action token; the softmax of each step covers the 256 action ids, the
padding ids and `--sampled-text-ids` text ids drawn at random (a sampled softmax: the full
32064-way head would be a quarter of the training time). make_fixture.py records each greedy
step's margin over all ids on held-out frames.

Training from scratch on a CPU needs help, so three auxiliary losses are added, from
training-only heads that are not exported:
- a per-patch object label (table, gripper, each block) from the concatenated vision
  features, so the ViTs learn to see the blocks and the gripper early;
- a regression, from the LLM's hidden state where the first action token is predicted, of
  where the named block is, where the fingertips are and the error between them;
- `--attention-weight`: the attention that head 0 of LLM layer `--attention-layer` gives, from
  the action positions, to the patches of the named block, so that the LLM learns to look
  for the block the instruction names rather than at any block.
The position embeddings start as a 2-D sine-cosine table.

Seeded (`--seed`) and resumable: `--work` holds `last.pt` (model, optimiser, step, random
states), written every `--save-every` steps and at the end; running again with the same
`--work` continues from it. `--minutes`, `--until-step` or `--steps` bounds the run. torch is
not in sim/requirements.txt: `pip install -r sim/requirements-train.txt`.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import vla_torch  # noqa: E402
from make_dataset import action_statistics  # noqa: E402
from vla_torch import ActionTokenizer, Dims, OpenVla, Preprocessor, PromptEncoder, VitDims  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
# Tokenizer, preprocessing constants and config template: those of the bundled checkpoint,
# which are OpenVLA's (the tokenizer is a small stand-in for Llama-2's, with its ids).
TEMPLATE = REPO / "engines" / "openvla-tiny"
TEMPLATE_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "preprocessor_config.json", "generation_config.json"]
UNNORM_KEY = "sim_tabletop"
ACTION_TOKENS = 7
# The ids action tokens use, and the padding ids past the text vocabulary.
ACTION_IDS = torch.arange(vla_torch.TEXT_VOCAB - vla_torch.N_ACTION_BINS, vla_torch.TEXT_VOCAB)
PAD_IDS = torch.arange(vla_torch.TEXT_VOCAB, vla_torch.TEXT_VOCAB + vla_torch.PAD_TO)


def default_dims() -> Dims:
    # Every quantized layer's input width is a multiple of 128, so INT4 groups are full.
    # 28-pixel patches (an 8 x 8 grid, 64 image tokens) instead of OpenVLA's 14 (256 tokens):
    # the LLM's sequence, which dominates training time on a CPU, is three times shorter.
    return Dims(
        featurizer=VitDims(embed_dim=64, depth=4, num_heads=2, mlp_hidden=256, registers=True),
        fused_featurizer=VitDims(embed_dim=64, depth=4, num_heads=2, mlp_hidden=239, registers=False),
        hidden=128, intermediate=384, layers=3, heads=4, patch=28)


def pool_patch_labels(labels: np.ndarray, classes: int, grid: int) -> np.ndarray:
    """Labels of 14-pixel patches [N, 256] to labels of a coarser grid [N, grid * grid]: the
    object that covers most of the merged patches, the table only where none does."""
    fine = int(round(math.sqrt(labels.shape[1])))
    factor = fine // grid
    one_hot = np.eye(classes, dtype=np.float32)[labels].reshape(-1, grid, factor, grid, factor, classes)
    counts = one_hot.sum(axis=(2, 4))
    counts[..., 0] = np.where(counts[..., 0] > 0, 0.5, 0)
    return counts.argmax(-1).reshape(len(labels), grid * grid)


class Dataset:
    """Every transition of one or more make_dataset.py folders, in memory."""

    def __init__(self, folders: list[pathlib.Path], prompts: PromptEncoder, grid: int):
        metas = [json.loads((folder / "dataset.json").read_text()) for folder in folders]
        for key in ("format", "rate_hz", "colours", "jpeg_quality"):
            if len({json.dumps(m[key]) for m in metas}) != 1:
                raise ValueError(f"the datasets differ in {key!r}: {[m[key] for m in metas]}")
        self.meta = {"format": metas[0]["format"], "rate_hz": metas[0]["rate_hz"],
                     "colours": metas[0]["colours"], "seeds": [m["seed"] for m in metas],
                     "episodes": sum(len(m["episodes"]) for m in metas)}
        parts: dict[str, list] = {"frames": [], "actions": [], "tip": [], "goal": [], "patch_labels": []}
        ids, instructions = [], []
        for folder, meta in zip(folders, metas):
            for episode in meta["episodes"]:
                with np.load(folder / episode["file"]) as data:
                    for key in parts:
                        parts[key].append(data[key])
                    ids += [prompts(str(data["instruction"]))] * len(data["actions"])
                    instructions += [str(data["instruction"])] * len(data["actions"])
        self.frames = torch.from_numpy(np.concatenate(parts["frames"]))
        self.actions = np.concatenate(parts["actions"])
        self.tip = torch.from_numpy(np.concatenate(parts["tip"]))
        self.goal = torch.from_numpy(np.concatenate(parts["goal"]))
        self.classes = 2 + len(self.meta["colours"])
        self.patch_labels = torch.from_numpy(pool_patch_labels(
            np.concatenate(parts["patch_labels"]), self.classes, grid).astype(np.int64))
        if len({len(i) for i in ids}) != 1:
            raise ValueError(f"{', '.join(map(str, folders))}: prompts of different lengths; "
                             "batching needs one length")
        self.prompt_ids = torch.tensor(ids)
        # The patch label of the block each instruction names.
        self.target_class = torch.tensor(
            [2 + self.meta["colours"].index(next(c for c in self.meta["colours"] if f" {c} " in text))
             for text in instructions])

    def __len__(self) -> int:
        return len(self.actions)


def aux_targets(tip: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Scaled so that each is of order one: positions in decimetres, the error in 3 cm units."""
    return torch.cat([goal * 10, tip * 10, (goal - tip) / 0.03], 1)


class TrainingHeads(nn.Module):
    """Heads used only by the auxiliary losses; never exported."""

    def __init__(self, dims: Dims, classes: int):
        super().__init__()
        self.patch_label = nn.Linear(dims.vision_dim, classes)
        self.where = nn.Sequential(nn.Linear(dims.hidden, dims.hidden), nn.GELU(), nn.Linear(dims.hidden, 9))


def attention_on_target(model: OpenVla, layer_outputs: list, layer: int, patch_labels, target_class):
    """-log of the attention that head 0 of `layer` gives, from the last prompt position and
    each action position, to the image patches of the block the instruction names. Layer 0
    can bring the colour word to those positions; this teaches the next layer to look for
    its block. Samples whose block covers no patch add nothing."""
    if layer < 1:
        raise ValueError("--attention-layer must be 1 or more: layer 0 has not read the instruction")
    llama = model.language_model.model
    x = layer_outputs[layer - 1]
    attention = llama.layers[layer].self_attn
    cos, sin = llama.rope(x.shape[1])
    probabilities = attention.probabilities(llama.layers[layer].input_layernorm(x), cos, sin,
                                            ACTION_TOKENS)[:, 0]
    patches = patch_labels.shape[1]
    on_target = (patch_labels == target_class[:, None]).float()
    mass = (probabilities[:, :, 1:1 + patches] * on_target[:, None, :]).sum(-1)
    present = on_target.sum(1) > 0
    if not present.any():
        return probabilities.sum() * 0.0
    return -torch.log(mass[present] + 1e-6).mean()


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def export(model: OpenVla, folder: pathlib.Path, stats: dict, dataset_meta: dict, train_info: dict) -> None:
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATE_FILES:
        shutil.copy(TEMPLATE / name, folder / name)
    config = json.loads((TEMPLATE / "config.json").read_text())
    d = model.dims
    config["text_config"].update(hidden_size=d.hidden, intermediate_size=d.intermediate,
                                 num_attention_heads=d.heads, num_hidden_layers=d.layers,
                                 num_key_value_heads=d.heads, torch_dtype="bfloat16")
    config["torch_dtype"] = "bfloat16"
    config["norm_stats"] = {UNNORM_KEY: {
        "action": stats,
        "num_transitions": dataset_meta["transitions"],
        "num_trajectories": dataset_meta["episodes"],
    }}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    runtime = {
        "action_hz": dataset_meta["rate_hz"],
        "featurizer": {"num_heads": d.featurizer.num_heads},
        "fused_featurizer": {"num_heads": d.fused_featurizer.num_heads},
        "trained": train_info,
    }
    (folder / "vla_rt_model.json").write_text(json.dumps(runtime, indent=2) + "\n")
    save_file(vla_torch.state_dict_bf16(model), str(folder / "model.safetensors"),
              metadata={"format": "pt"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, nargs="+", help="make_dataset.py folders")
    parser.add_argument("--work", required=True, help="folder for last.pt and the log")
    parser.add_argument("--export", help="write the checkpoint folder here at the end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=None, help="stop after this much training time")
    parser.add_argument("--steps", type=int, default=20000, help="total steps (the schedule's length)")
    parser.add_argument("--until-step", type=int, default=None,
                        help="stop at this step without shortening the schedule (resume later)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--patch-label-weight", type=float, default=0.5)
    parser.add_argument("--where-weight", type=float, default=1.0)
    parser.add_argument("--sampled-text-ids", type=int, default=1024,
                        help="text ids drawn each step into the softmax beside the action ids")
    parser.add_argument("--attention-weight", type=float, default=0.2)
    parser.add_argument("--attention-layer", type=int, default=1,
                        help="the LLM layer whose head 0 learns to attend to the named block")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prompts = PromptEncoder(TEMPLATE)
    preprocess = Preprocessor(TEMPLATE)
    dims = default_dims()
    data = Dataset([pathlib.Path(d) for d in args.data], prompts, dims.grid)
    stats = action_statistics(data.actions)
    actions = ActionTokenizer(stats["q01"], stats["q99"], stats["mask"])
    action_tokens = torch.from_numpy(actions.tokens(data.actions.astype(np.float64)).astype(np.int64))
    where = aux_targets(data.tip, data.goal)
    label_counts = torch.bincount(data.patch_labels.flatten(), minlength=data.classes).float()
    label_weight = (label_counts.sum() / (label_counts + 1)).sqrt()
    label_weight /= label_weight.mean()

    torch.manual_seed(args.seed)
    model = OpenVla(dims)
    heads = TrainingHeads(dims, data.classes)
    params = list(model.parameters()) + list(heads.parameters())
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(args.seed)
    step = 0
    log = open(work / "train.log", "a")
    checkpoint = work / "last.pt"
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"])
        heads.load_state_dict(saved["heads"])
        optimiser.load_state_dict(saved["optimiser"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        step = saved["step"]
        print(f"resumed at step {step}", file=log, flush=True)
    print(f"{len(data)} transitions, {sum(p.numel() for p in model.parameters())} parameters, "
          f"dims {dims}", file=log, flush=True)

    def save():
        torch.save({"model": model.state_dict(), "heads": heads.state_dict(),
                    "optimiser": optimiser.state_dict(), "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(), "step": step, "dims": dims}, checkpoint)

    started = time.monotonic()
    running: dict[str, float] = {}
    model.train()
    last_step = min(args.steps, args.until_step) if args.until_step is not None else args.steps
    while step < last_step:
        if args.minutes is not None and time.monotonic() - started > args.minutes * 60:
            break
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        index = torch.randint(len(data), (args.batch,), generator=generator)
        pixels = preprocess(data.frames[index])
        tokens = action_tokens[index]
        layer_outputs: list = []
        patches, h_actions = model.forward_train(pixels, data.prompt_ids[index], tokens, layer_outputs)
        loss_attention = attention_on_target(model, layer_outputs, args.attention_layer,
                                             data.patch_labels[index], data.target_class[index])
        candidates = torch.cat([ACTION_IDS, PAD_IDS, torch.randint(
            int(ACTION_IDS[0]), (args.sampled_text_ids,), generator=generator)])
        logits = h_actions @ model.language_model.lm_head.weight[candidates].T
        targets = tokens - int(ACTION_IDS[0])
        loss_tokens = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss_labels = F.cross_entropy(heads.patch_label(patches).reshape(-1, data.classes),
                                      data.patch_labels[index].reshape(-1), weight=label_weight)
        loss_where = F.smooth_l1_loss(heads.where(h_actions[:, 0]), where[index])
        loss = (loss_tokens + args.patch_label_weight * loss_labels + args.where_weight * loss_where
                + args.attention_weight * loss_attention)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        step += 1
        with torch.no_grad():
            xyz_accuracy = (logits[:, :3].argmax(-1) == targets[:, :3]).float().mean().item()
        for name, value in (("loss", loss.item()), ("tokens", loss_tokens.item()),
                            ("labels", loss_labels.item()), ("where", loss_where.item()),
                            ("attention", loss_attention.item()),
                            ("xyz_acc", xyz_accuracy)):
            running[name] = 0.98 * running.get(name, value) + 0.02 * value
        if step % 50 == 0:
            elapsed = time.monotonic() - started
            print(f"step {step} {elapsed:.0f}s lr {optimiser.param_groups[0]['lr']:.2e} "
                  + " ".join(f"{k} {v:.4f}" for k, v in running.items()), file=log, flush=True)
        if step % args.save_every == 0:
            save()
    save()
    if args.export:
        info = {"dataset": data.meta["format"], "dataset_seeds": data.meta["seeds"],
                "episodes": data.meta["episodes"], "transitions": len(data),
                "train_seed": args.seed, "steps": step, "batch": args.batch, "lr": args.lr,
                "torch": torch.__version__}
        export(model, pathlib.Path(args.export), stats, dict(data.meta, transitions=len(data)), info)
        print(f"exported step {step} to {args.export}", file=log, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
