#!/usr/bin/env python3
"""Trains a tiny OpenVLA on the simulator's expert episodes by behaviour cloning, every frame
relabelled for every colour, and exports it as an HF OpenVLA checkpoint folder that vla-rt loads.

    python3 sim/train.py --data data/clean data/noisy data/lured --init engines/openvla-sim \
        --work data/run --steps 8000 --threads 2 --export engines/openvla-sim

(the recipe of engines/openvla-sim: the README's "The trained checkpoint" gives the datasets).
The expert's move depends only on where the fingertips are and which block is named
(expert.expert_move), so each sampled frame is shown with all four colour prompts, each with
the expert's action for its own block: the data then holds no shortcut such as "go to the
nearest block". A step takes `--batch` frames, one vision forward each, and 4 x `--batch`
sequences through the LLM.

The loss is OpenVLA's: cross-entropy of the 7 action tokens given the image and the prompt
(teacher forcing). Greedy decoding takes the argmax over the whole vocabulary, so every id must
lose to the right action token; the softmax of each step covers the 256 action ids, the
padding ids and `--sampled-text-ids` text ids drawn at random (a sampled softmax: the full
32064-way head would be a quarter of the training time).

The image comes before the prompt and the mask is causal, so no image token sees the colour
word: the colour must reach the 7 action positions in layer 0 before a later layer can match
it against the patches. Training-only heads and losses, not exported, supervise that route:
- `--colour-attention-weight`: the attention of head 0 of layer 0 from the action positions
  to the colour word;
- `--colour-class-weight`: a 4-way classifier of the named colour on layer 0's output at the
  action positions;
- `--attention-weight`: the attention of head 0 of layer `--attention-layer`, from the action
  positions, to the patches of the named block;
- a per-patch object label (table, gripper, each block) from the concatenated vision features;
- a regression, from the LLM state where the first action token is predicted, of where the
  named block is, where the fingertips are and the error between them.

The action statistics are recomputed from the relabelled actions. Their q01 and q99 are the
smallest and largest expert move: the expert's moves are bounded (expert.MAX_DELTA_M), so
un-normalisation clips none of them.

Every `--measure-every` steps the instruction measure (sim/instruction.py: held-out scenes,
every colour asked, the share of horizontal moves within 45 degrees of the expert's) is logged;
with `--require-measure X --by-step K` a run that has not reached X at step K stops with exit
code 3.

Seeded (`--seed`) and resumable: `--work` holds `last.pt` (model, optimiser, step, random
states, the schedule), written every `--save-every` steps and at the end; running again with
the same `--work` continues from it, with the schedule it started with (a different `--steps`,
`--lr` or `--warmup` is refused; `--until-step` and `--minutes` stop a run early without
changing it). torch is not in sim/requirements.txt: `pip install -r sim/requirements-train.txt`.
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

import tabletop  # noqa: E402
import vla_torch  # noqa: E402
from expert import expert_move  # noqa: E402
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
    """Every transition of one or more make_dataset.py folders, in memory, with each frame's
    expert action for every colour."""

    def __init__(self, folders: list[pathlib.Path], grid: int):
        metas = [json.loads((folder / "dataset.json").read_text()) for folder in folders]
        for key in ("format", "rate_hz", "colours", "jpeg_quality"):
            if len({json.dumps(m[key]) for m in metas}) != 1:
                raise ValueError(f"the datasets differ in {key!r}: {[m[key] for m in metas]}")
        ranges = []
        for folder, meta in zip(folders, metas):
            if "seed_range" not in meta:
                raise ValueError(f"{folder}/dataset.json: no seed_range (written by an older "
                                 "make_dataset.py); regenerate the dataset")
            for other, (low, high) in ranges:
                if meta["seed_range"][0] < high and low < meta["seed_range"][1]:
                    raise ValueError(f"{folder} and {other}: episode seeds overlap "
                                     f"({meta['seed_range']} and {[low, high]}): the same scenes twice")
            ranges.append((folder, meta["seed_range"]))
        self.colours = metas[0]["colours"]
        self.meta = {"format": metas[0]["format"], "rate_hz": metas[0]["rate_hz"],
                     "colours": self.colours, "seed_ranges": [m["seed_range"] for m in metas],
                     "episodes": sum(len(m["episodes"]) for m in metas)}
        parts: dict[str, list] = {"frames": [], "tip": [], "blocks": [], "patch_labels": []}
        for folder, meta in zip(folders, metas):
            for episode in meta["episodes"]:
                path = folder / episode["file"]
                with np.load(path) as data:
                    if "blocks" not in data:
                        raise ValueError(f"{path}: no `blocks` array (written by an older "
                                         "make_dataset.py); regenerate the dataset")
                    for key in parts:
                        parts[key].append(data[key])
        self.frames = torch.from_numpy(np.concatenate(parts["frames"]))
        tip = np.concatenate(parts["tip"]).astype(np.float64)
        blocks = np.concatenate(parts["blocks"]).astype(np.float64)
        # [N, colours, 3]: where the fingertips must go for each colour.
        goals = blocks + np.array([0.0, 0.0, tabletop.REACH_ABOVE_BLOCK_M])
        moves = expert_move(tip[:, None, :], goals)
        rest = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), moves.shape[:2] + (4,))
        self.actions = np.concatenate([moves, rest], -1)
        self.tip = torch.from_numpy(tip).float()
        self.goals = torch.from_numpy(goals).float()
        self.classes = 2 + len(self.colours)
        self.patch_labels = torch.from_numpy(pool_patch_labels(
            np.concatenate(parts["patch_labels"]), self.classes, grid).astype(np.int64))

    def __len__(self) -> int:
        return len(self.frames)


def colour_prompts(prompts: PromptEncoder, colours: list[str]) -> tuple[torch.Tensor, int]:
    """The prompt ids of "reach the <colour> block" for each colour [colours, L], and the one
    position where they differ: the colour word."""
    ids = [prompts(tabletop.Task("reach", c).instruction) for c in colours]
    if len({len(i) for i in ids}) != 1:
        raise ValueError(f"the colour prompts differ in length ({[len(i) for i in ids]} tokens): "
                         "batching needs one length")
    table = torch.tensor(ids)
    differing = (table != table[:1]).any(0).nonzero().flatten().tolist()
    if len(differing) != 1:
        raise ValueError(f"the colour prompts differ at positions {differing}, not at one")
    return table, differing[0]


def aux_targets(tip: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Scaled so that each is of order one: positions in decimetres, the error in 3 cm units."""
    return torch.cat([goal * 10, tip * 10, (goal - tip) / 0.03], 1)


class TrainingHeads(nn.Module):
    """Heads used only by the auxiliary losses; never exported."""

    def __init__(self, dims: Dims, classes: int, colours: int):
        super().__init__()
        self.patch_label = nn.Linear(dims.vision_dim, classes)
        self.where = nn.Sequential(nn.Linear(dims.hidden, dims.hidden), nn.GELU(), nn.Linear(dims.hidden, 9))
        self.colour = nn.Linear(dims.hidden, colours)


def forward_all_colours(model: OpenVla, pixels, prompts_by_colour, action_tokens, layer_outputs: list):
    """One vision forward for B frames, then B x colours sequences through the LLM (frame-major:
    sequence i is frame i // colours with colour i % colours). Returns the patch features
    [B, P, vision], the LLM input [B * colours, N, hidden] and the final hidden states at the
    7 action positions [B * colours, 7, hidden]."""
    colours = prompts_by_colour.shape[0]
    patches = model.vision_backbone(pixels)
    image_tokens = model.projector(patches).repeat_interleave(colours, 0)
    prompt_ids = prompts_by_colour.repeat(len(pixels), 1)
    embed = model.language_model.model.embed_tokens
    x = torch.cat([embed(prompt_ids[:, :1]), image_tokens, embed(prompt_ids[:, 1:]),
                   embed(action_tokens[:, :-1])], 1)
    h = model.language_model.model(x, layer_outputs)
    return patches, x, h[:, -ACTION_TOKENS:]


def head0_attention(model: OpenVla, layer_input, layer: int):
    """The attention probabilities of head 0 of `layer` from the 7 action positions [B, 7, N]."""
    llama = model.language_model.model
    cos, sin = llama.rope(layer_input.shape[1])
    block = llama.layers[layer]
    return block.self_attn.probabilities(block.input_layernorm(layer_input), cos, sin,
                                         ACTION_TOKENS)[:, 0]


def attention_on_target(model: OpenVla, layer_outputs: list, layer: int, patch_labels, target_class):
    """-log of the attention that head 0 of `layer` gives, from the action positions, to the
    image patches of the named block. Samples whose block covers no patch add nothing."""
    if layer < 1:
        raise ValueError("--attention-layer must be 1 or more: layer 0 has not read the instruction")
    probabilities = head0_attention(model, layer_outputs[layer - 1], layer)
    patches = patch_labels.shape[1]
    on_target = (patch_labels == target_class[:, None]).float()
    mass = (probabilities[:, :, 1:1 + patches] * on_target[:, None, :]).sum(-1)
    present = on_target.sum(1) > 0
    if not present.any():
        return probabilities.sum() * 0.0
    return -torch.log(mass[present] + 1e-6).mean()


def relabelled_statistics(actions: np.ndarray) -> dict:
    """OpenVLA's norm_stats of the relabelled actions [N, 7], with q01/q99 at the extremes so
    that un-normalisation clips no expert move."""
    stats = action_statistics(actions)
    stats["q01"], stats["q99"] = list(stats["min"]), list(stats["max"])
    return stats


def instruction_measure(model: OpenVla, preprocess: Preprocessor, scenes, prompts_by_colour,
                        colours: list[str], actions: ActionTokenizer) -> dict:
    """The instruction measure of sim/instruction.py, computed in PyTorch on the model as it
    is now."""
    import instruction
    pixels = preprocess(torch.from_numpy(np.stack([s.frame for s in scenes])))
    model.eval()
    with torch.no_grad():
        tokens_per_colour = [model.generate(pixels, prompts_by_colour[c:c + 1].repeat(len(scenes), 1))[0]
                        for c in range(len(colours))]
    model.train()
    predicted = [{colour: actions.actions(tokens_per_colour[c][i].numpy())
                  for c, colour in enumerate(colours)} for i in range(len(scenes))]
    return instruction.score(scenes, predicted)


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--data", required=True, nargs="+", help="make_dataset.py folders")
    parser.add_argument("--work", required=True, help="folder for last.pt and the log")
    parser.add_argument("--init", help="start from this checkpoint folder (fine-tuning) "
                                       "instead of random weights")
    parser.add_argument("--export", help="write the checkpoint folder here at the end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=None, help="stop after this much training time")
    parser.add_argument("--steps", type=int, default=8000, help="total steps (the schedule's length)")
    parser.add_argument("--until-step", type=int, default=None,
                        help="stop at this step without shortening the schedule (resume later)")
    parser.add_argument("--batch", type=int, default=8, help="frames per step, each with every colour")
    parser.add_argument("--lr", type=float, default=7e-4)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--patch-label-weight", type=float, default=0.5)
    parser.add_argument("--where-weight", type=float, default=1.0)
    parser.add_argument("--sampled-text-ids", type=int, default=1024,
                        help="text ids drawn each step into the softmax beside the action ids")
    parser.add_argument("--colour-attention-weight", type=float, default=0.5)
    parser.add_argument("--colour-class-weight", type=float, default=0.5)
    parser.add_argument("--attention-weight", type=float, default=0.2)
    parser.add_argument("--attention-layer", type=int, default=1,
                        help="the LLM layer whose head 0 learns to attend to the named block")
    parser.add_argument("--measure-every", type=int, default=1000)
    parser.add_argument("--measure-scenes", type=int, default=40)
    parser.add_argument("--measure-seed", type=int, default=500000)
    parser.add_argument("--require-measure", type=float, default=None,
                        help="stop with exit code 3 when the instruction measure is below this "
                             "at --by-step")
    parser.add_argument("--by-step", type=int, default=2000)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prompts = PromptEncoder(TEMPLATE)
    preprocess = Preprocessor(TEMPLATE)
    checkpoint = work / "last.pt"
    saved = torch.load(checkpoint, weights_only=False) if checkpoint.exists() else None
    schedule = {"steps": args.steps, "lr": args.lr, "warmup": args.warmup}
    if saved is not None and saved.get("schedule") != schedule:
        print(f"{checkpoint}: the run was started with the schedule {saved.get('schedule')}, not "
              f"{schedule}; resume with the same --steps, --lr and --warmup (--until-step or "
              "--minutes stop earlier without changing it)", file=sys.stderr)
        return 2
    if saved is not None:
        dims = saved["dims"]
    elif args.init:
        dims = vla_torch.dims_from_checkpoint(pathlib.Path(args.init))
    else:
        dims = default_dims()
    data = Dataset([pathlib.Path(d) for d in args.data], dims.grid)
    colours = data.colours
    prompts_by_colour, colour_position = colour_prompts(prompts, colours)
    # Where the colour word sits in the LLM's sequence: <s>, then the image tokens, then the
    # prompt from its second id on, so prompt position p lands at p + the image token count.
    colour_sequence_position = colour_position + dims.grid ** 2
    stats = relabelled_statistics(data.actions.reshape(-1, 7))
    actions = ActionTokenizer(stats["q01"], stats["q99"], stats["mask"])
    action_tokens = torch.from_numpy(actions.tokens(data.actions).astype(np.int64))  # [N, colours, 7]
    label_counts = torch.bincount(data.patch_labels.flatten(), minlength=data.classes).float()
    label_weight = (label_counts.sum() / (label_counts + 1)).sqrt()
    label_weight /= label_weight.mean()

    torch.manual_seed(args.seed)
    model = vla_torch.load_checkpoint(pathlib.Path(args.init)) if args.init and saved is None else OpenVla(dims)
    heads = TrainingHeads(dims, data.classes, len(colours))
    params = list(model.parameters()) + list(heads.parameters())
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(args.seed)
    step = 0
    log = open(work / "train.log", "a")
    if saved is not None:
        model.load_state_dict(saved["model"])
        heads.load_state_dict(saved["heads"])
        optimiser.load_state_dict(saved["optimiser"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        step = saved["step"]
        print(f"resumed at step {step}", file=log, flush=True)
    print(f"{len(data)} frames x {len(colours)} colours, "
          f"{sum(p.numel() for p in model.parameters())} parameters, dims {dims}, "
          f"init {args.init}, schedule {schedule}", file=log, flush=True)
    import instruction
    scenes = instruction.build_scenes(args.measure_seed, args.measure_scenes)

    def save():
        torch.save({"model": model.state_dict(), "heads": heads.state_dict(),
                    "optimiser": optimiser.state_dict(), "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(), "step": step, "dims": dims,
                    "schedule": schedule}, checkpoint)

    measured: dict[int, float] = {}

    def measure() -> float:
        # The export reuses the figure of a run that ends on a measuring step.
        if step in measured:
            return measured[step]
        result = instruction_measure(model, preprocess, scenes, prompts_by_colour, colours, actions)
        per_colour = {c: round(v, 3) for c, v in result["per_colour"].items()}
        print(f"step {step} instruction measure {result['overall']:.3f} over {result['pairs']} "
              f"pairs, swap {result['swap']:.3f}, per colour {per_colour}", file=log, flush=True)
        measured[step] = result["overall"]
        return result["overall"]

    if step == 0:
        measure()
    started = time.monotonic()
    running: dict[str, float] = {}
    model.train()
    colour_index = torch.arange(len(colours)).repeat(args.batch)
    last_step = min(args.steps, args.until_step) if args.until_step is not None else args.steps
    while step < last_step:
        if args.minutes is not None and time.monotonic() - started > args.minutes * 60:
            break
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        index = torch.randint(len(data), (args.batch,), generator=generator)
        pixels = preprocess(data.frames[index])
        tokens = action_tokens[index].reshape(-1, ACTION_TOKENS)
        layer_outputs: list = []
        patches, llm_input, h_actions = forward_all_colours(model, pixels, prompts_by_colour, tokens,
                                                            layer_outputs)
        patch_labels = data.patch_labels[index]
        loss_attention = attention_on_target(model, layer_outputs, args.attention_layer,
                                             patch_labels.repeat_interleave(len(colours), 0),
                                             2 + colour_index)
        on_colour = head0_attention(model, llm_input, 0)[:, :, colour_sequence_position]
        loss_colour_attention = -torch.log(on_colour + 1e-6).mean()
        loss_colour_class = F.cross_entropy(
            heads.colour(layer_outputs[0][:, -ACTION_TOKENS:]).reshape(-1, len(colours)),
            colour_index.repeat_interleave(ACTION_TOKENS))
        candidates = torch.cat([ACTION_IDS, PAD_IDS, torch.randint(
            int(ACTION_IDS[0]), (args.sampled_text_ids,), generator=generator)])
        logits = h_actions @ model.language_model.lm_head.weight[candidates].T
        targets = tokens - int(ACTION_IDS[0])
        loss_tokens = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss_labels = F.cross_entropy(heads.patch_label(patches).reshape(-1, data.classes),
                                      patch_labels.reshape(-1), weight=label_weight)
        where = aux_targets(data.tip[index].repeat_interleave(len(colours), 0),
                            data.goals[index].reshape(-1, 3))
        loss_where = F.smooth_l1_loss(heads.where(h_actions[:, 0]), where)
        loss = (loss_tokens + args.patch_label_weight * loss_labels + args.where_weight * loss_where
                + args.attention_weight * loss_attention
                + args.colour_attention_weight * loss_colour_attention
                + args.colour_class_weight * loss_colour_class)
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
                            ("colour_attention", loss_colour_attention.item()),
                            ("colour_class", loss_colour_class.item()),
                            ("xyz_acc", xyz_accuracy)):
            running[name] = 0.98 * running.get(name, value) + 0.02 * value
        if step % 50 == 0:
            elapsed = time.monotonic() - started
            print(f"step {step} {elapsed:.0f}s lr {optimiser.param_groups[0]['lr']:.2e} "
                  + " ".join(f"{k} {v:.4f}" for k, v in running.items()), file=log, flush=True)
        if step % args.save_every == 0:
            save()
        if step % args.measure_every == 0:
            score = measure()
            if args.require_measure is not None and step >= args.by_step and score < args.require_measure:
                save()
                print(f"step {step}: instruction measure {score:.3f} < {args.require_measure}: "
                      "stopped", file=log, flush=True)
                return 3
    save()
    if args.export:
        info = {"dataset": data.meta["format"], "dataset_seed_ranges": data.meta["seed_ranges"],
                "episodes": data.meta["episodes"], "frames": len(data), "relabelled_colours": colours,
                "init": args.init, "train_seed": args.seed, "steps": step, "schedule": schedule,
                "frames_per_step": args.batch, "torch": torch.__version__,
                "instruction_measure": measure()}
        export(model, pathlib.Path(args.export), stats,
               dict(data.meta, transitions=len(data) * len(colours)), info)
        print(f"exported step {step} to {args.export}", file=log, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
