"""OpenVLA's inference architecture in PyTorch, small enough to train on a CPU, with
OpenVLA's tensor names, so that what it saves is an HF OpenVLA checkpoint that vla-rt loads.

It follows tests/fixtures/OPENVLA_FACTS.md: two timm ViTs (DINOv2 with 4 registers and
LayerScale as `featurizer`, SigLIP as `fused_featurizer`), each giving the output of block
depth - 2 with the prefix tokens dropped and no final norm; their patch features concatenated;
the fused GELU MLP projector; a Llama (RMSNorm eps 1e-6, RoPE theta 1e4, SwiGLU, untied head)
fed `<s>`, the 256 image tokens, then the rest of the prompt; greedy decoding of 7 action
tokens. `check_against_fixture` compares it with the reference fixture's golden numbers.

Modules that OpenVLA stores but never runs (each ViT's last block and final norm, SigLIP's
attention pool) are kept so that the checkpoint has OpenVLA's layout.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

VIT_LAYER_NORM_EPS = 1e-6
RMS_NORM_EPS = 1e-6
ROPE_THETA = 10000.0
TEXT_VOCAB = 32000
PAD_TO = 64
N_ACTION_BINS = 256
SPACE_TOKEN_ID = 29871
PROMPT = "In: What action should the robot take to {}?\nOut:"


@dataclasses.dataclass
class VitDims:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    registers: bool  # DINOv2: CLS + 4 registers and LayerScale; SigLIP: none, and an attention pool


@dataclasses.dataclass
class Dims:
    featurizer: VitDims
    fused_featurizer: VitDims
    hidden: int
    intermediate: int
    layers: int
    heads: int
    patch: int = 14
    image: int = 224

    @property
    def grid(self) -> int:
        return self.image // self.patch

    @property
    def vision_dim(self) -> int:
        return self.featurizer.embed_dim + self.fused_featurizer.embed_dim


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale_factor = nn.Parameter(torch.full((dim,), 1e-1))

    def forward(self, x):
        return x * self.scale_factor


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class VitAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class VitBlock(nn.Module):
    def __init__(self, dims: VitDims):
        super().__init__()
        d = dims.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=VIT_LAYER_NORM_EPS)
        self.attn = VitAttention(d, dims.num_heads)
        self.norm2 = nn.LayerNorm(d, eps=VIT_LAYER_NORM_EPS)
        self.mlp = Mlp(d, dims.mlp_hidden)
        if dims.registers:
            self.ls1 = LayerScale(d)
            self.ls2 = LayerScale(d)
        else:
            self.ls1 = nn.Identity()
            self.ls2 = nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class AttentionPool(nn.Module):
    """SigLIP's `attn_pool`: stored in OpenVLA checkpoints, never run."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=VIT_LAYER_NORM_EPS)
        self.mlp = Mlp(dim, hidden)


class Vit(nn.Module):
    def __init__(self, dims: VitDims, grid: int, patch: int):
        super().__init__()
        d = dims.embed_dim
        self.prefix = 5 if dims.registers else 0
        self.patch_embed = PatchEmbed(d, patch)
        self.pos_embed = nn.Parameter(sincos_position_embedding(d, grid).unsqueeze(0))
        if dims.registers:
            self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.reg_token = nn.Parameter(torch.randn(1, 4, d) * 0.02)
        self.blocks = nn.ModuleList(VitBlock(dims) for _ in range(dims.depth))
        self.norm = nn.LayerNorm(d, eps=VIT_LAYER_NORM_EPS)
        if not dims.registers:
            self.attn_pool = AttentionPool(d, dims.mlp_hidden)

    def forward(self, pixels):
        x = self.patch_embed(pixels) + self.pos_embed
        if self.prefix:
            b = x.shape[0]
            x = torch.cat([self.cls_token.expand(b, -1, -1), self.reg_token.expand(b, -1, -1), x], 1)
        for block in self.blocks[:-1]:
            x = block(x)
        return x[:, self.prefix:]


def sincos_position_embedding(dim: int, grid: int) -> torch.Tensor:
    """2-D sine-cosine embedding [grid * grid, dim], row-major: half the channels encode the
    row, half the column. Only an initialisation: training changes it."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for c in (rows.flatten(), cols.flatten()):
        angles = c[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, 1)
    if table.shape[1] < dim:
        table = F.pad(table, (0, dim - table.shape[1]))
    return table.float()


class VisionBackbone(nn.Module):
    def __init__(self, dims: Dims):
        super().__init__()
        self.featurizer = Vit(dims.featurizer, dims.grid, dims.patch)
        self.fused_featurizer = Vit(dims.fused_featurizer, dims.grid, dims.patch)

    def forward(self, pixel_values):
        return torch.cat([self.featurizer(pixel_values[:, :3]),
                          self.fused_featurizer(pixel_values[:, 3:])], 2)


class Projector(nn.Module):
    def __init__(self, vision_dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, hidden)
        self.fc3 = nn.Linear(hidden, hidden)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


class RmsNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_NORM_EPS) * self.weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], -1)


class LlamaAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, cos, sin):
        b, n, d = x.shape
        hd = d // self.heads

        def split(t):
            return t.view(b, n, self.heads, hd).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, d))

    def probabilities(self, x, cos, sin, rows: int):
        """The attention probabilities [B, heads, rows, N] of the last `rows` positions, as
        `forward` computes them (x is the layer's normalised input)."""
        b, n, d = x.shape
        hd = d // self.heads
        q = self.q_proj(x[:, -rows:]).view(b, rows, self.heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.heads, hd).transpose(1, 2)
        q = q * cos[-rows:] + rotate_half(q) * sin[-rows:]
        k = k * cos + rotate_half(k) * sin
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        future = torch.arange(n)[None, :] > torch.arange(n - rows, n)[:, None]
        return scores.masked_fill(future, float("-inf")).softmax(-1)


class LlamaMlp(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLayer(nn.Module):
    def __init__(self, hidden: int, intermediate: int, heads: int):
        super().__init__()
        self.input_layernorm = RmsNorm(hidden)
        self.self_attn = LlamaAttention(hidden, heads)
        self.post_attention_layernorm = RmsNorm(hidden)
        self.mlp = LlamaMlp(hidden, intermediate)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, dims: Dims, vocab: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dims.hidden)
        self.layers = nn.ModuleList(LlamaLayer(dims.hidden, dims.intermediate, dims.heads)
                                    for _ in range(dims.layers))
        self.norm = RmsNorm(dims.hidden)
        self.head_dim = dims.hidden // dims.heads

    def rope(self, n: int):
        inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        freqs = torch.arange(n, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat([freqs, freqs], -1)
        return emb.cos(), emb.sin()

    def forward(self, x, hidden_states: list | None = None):
        cos, sin = self.rope(x.shape[1])
        for layer in self.layers:
            x = layer(x, cos, sin)
            if hidden_states is not None:
                hidden_states.append(x)
        return self.norm(x)


class LanguageModel(nn.Module):
    def __init__(self, dims: Dims, vocab: int):
        super().__init__()
        self.model = LlamaModel(dims, vocab)
        self.lm_head = nn.Linear(dims.hidden, vocab, bias=False)


class OpenVla(nn.Module):
    def __init__(self, dims: Dims, vocab: int = TEXT_VOCAB + PAD_TO):
        super().__init__()
        self.dims = dims
        self.vision_backbone = VisionBackbone(dims)
        self.projector = Projector(dims.vision_dim, dims.hidden)
        self.language_model = LanguageModel(dims, vocab)

    def embeddings(self, pixel_values, prompt_ids, extra_ids=None):
        """`<s>`, the image tokens, the rest of the prompt, then `extra_ids` (teacher forcing)."""
        patches = self.vision_backbone(pixel_values)
        image_tokens = self.projector(patches)
        embed = self.language_model.model.embed_tokens
        parts = [embed(prompt_ids[:, :1]), image_tokens, embed(prompt_ids[:, 1:])]
        if extra_ids is not None:
            parts.append(embed(extra_ids))
        return torch.cat(parts, 1), patches

    def forward_train(self, pixel_values, prompt_ids, action_tokens, hidden_states=None):
        """The vision patch features, and the final hidden states [B, 7, hidden] where each
        action token is predicted from the ones before it (teacher forcing); the caller
        applies the head."""
        x, patches = self.embeddings(pixel_values, prompt_ids, action_tokens[:, :-1])
        h = self.language_model.model(x, hidden_states)
        return patches, h[:, -action_tokens.shape[1]:]

    @torch.no_grad()
    def generate(self, pixel_values, prompt_ids, count: int = 7):
        """Greedy decoding (full recompute each step: the model is small). Returns the token
        ids [B, count], the step-0 logits [B, vocab] and each step's margin [B, count]: the top
        logit's lead over the runner-up of the whole vocabulary."""
        x, _ = self.embeddings(pixel_values, prompt_ids)
        embed = self.language_model.model.embed_tokens
        tokens, margins, first = [], [], None
        for _ in range(count):
            logits = self.language_model.lm_head(self.language_model.model(x)[:, -1])
            if first is None:
                first = logits
            top = logits.topk(2, -1)
            tokens.append(top.indices[:, 0])
            margins.append(top.values[:, 0] - top.values[:, 1])
            x = torch.cat([x, embed(top.indices[:, 0])[:, None]], 1)
        return torch.stack(tokens, 1), first, torch.stack(margins, 1)


# Checkpoint I/O ---------------------------------------------------------------------------

def dims_from_checkpoint(folder: pathlib.Path) -> Dims:
    """Dimensions of an OpenVLA checkpoint folder (config.json, vla_rt_model.json and the
    tensor shapes, as vla-rt reads them)."""
    from safetensors import safe_open
    config = json.loads((folder / "config.json").read_text())
    runtime = json.loads((folder / "vla_rt_model.json").read_text())
    text = config["text_config"]
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())

        def vit(name, registers):
            prefix = f"vision_backbone.{name}"
            depth = 0
            while f"{prefix}.blocks.{depth}.norm1.weight" in keys:
                depth += 1
            fc1 = f.get_slice(f"{prefix}.blocks.0.mlp.fc1.weight").get_shape()
            return VitDims(embed_dim=fc1[1], depth=depth, mlp_hidden=fc1[0],
                           num_heads=runtime[name]["num_heads"], registers=registers)

        patch = f.get_slice("vision_backbone.featurizer.patch_embed.proj.weight").get_shape()[-1]
        return Dims(featurizer=vit("featurizer", True), fused_featurizer=vit("fused_featurizer", False),
                    hidden=text["hidden_size"], intermediate=text["intermediate_size"],
                    layers=text["num_hidden_layers"], heads=text["num_attention_heads"],
                    patch=patch, image=config["image_sizes"][0])


def load_checkpoint(folder: pathlib.Path) -> OpenVla:
    from safetensors.torch import load_file
    folder = pathlib.Path(folder)
    model = OpenVla(dims_from_checkpoint(folder))
    state = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder}: missing tensors {missing}, unexpected {unexpected}")
    return model


def state_dict_bf16(model: OpenVla) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}


# Inputs -----------------------------------------------------------------------------------

class Preprocessor:
    """`pixel_values` for 224 x 224 RGB frames (no resize: the camera's size), with the
    normalisations of the checkpoint's preprocessor_config.json."""

    def __init__(self, folder: pathlib.Path):
        config = json.loads((pathlib.Path(folder) / "preprocessor_config.json").read_text())
        params = config["tvf_normalize_params"]
        mean = np.array([p["mean"] for p in params], np.float32).reshape(6, 1, 1)
        std = np.array([p["std"] for p in params], np.float32).reshape(6, 1, 1)
        self.mean = torch.from_numpy(mean)
        self.std = torch.from_numpy(std)

    def __call__(self, frames_uint8: torch.Tensor) -> torch.Tensor:
        """[B, 224, 224, 3] uint8 to [B, 6, 224, 224] float32."""
        x = frames_uint8.permute(0, 3, 1, 2).float() / 255.0
        return (torch.cat([x, x], 1) - self.mean) / self.std


class PromptEncoder:
    def __init__(self, folder: pathlib.Path):
        from tokenizers import Tokenizer
        self.tokenizer = Tokenizer.from_file(str(pathlib.Path(folder) / "tokenizer.json"))

    def __call__(self, instruction: str) -> list[int]:
        ids = self.tokenizer.encode(PROMPT.format(instruction.lower())).ids
        if ids[-1] != SPACE_TOKEN_ID:
            ids.append(SPACE_TOKEN_ID)
        return ids


class ActionTokenizer:
    """OpenVLA's: normalised action in [-1, 1] to a token just below the text vocabulary,
    and back (OPENVLA_FACTS §6)."""

    def __init__(self, q01, q99, mask):
        self.q01 = np.asarray(q01, np.float64)
        self.q99 = np.asarray(q99, np.float64)
        self.mask = np.asarray(mask, bool)
        self.bins = np.linspace(-1, 1, N_ACTION_BINS)
        self.centers = (self.bins[:-1] + self.bins[1:]) / 2

    def normalise(self, actions: np.ndarray) -> np.ndarray:
        scaled = 2 * (actions - self.q01) / np.maximum(self.q99 - self.q01, 1e-8) - 1
        return np.clip(np.where(self.mask, scaled, actions), -1, 1)

    def tokens(self, actions: np.ndarray) -> np.ndarray:
        return TEXT_VOCAB - np.digitize(self.normalise(actions), self.bins)

    def normalised(self, tokens: np.ndarray) -> np.ndarray:
        """The bin centre in [-1, 1] of each action token."""
        return self.centers[np.clip(TEXT_VOCAB - np.asarray(tokens) - 1, 0, len(self.centers) - 1)]

    def actions(self, tokens: np.ndarray) -> np.ndarray:
        normalised = self.normalised(tokens)
        return np.where(self.mask, 0.5 * (normalised + 1) * (self.q99 - self.q01) + self.q01, normalised)


def check_against_fixture(fixture: pathlib.Path, model_dir: pathlib.Path) -> list[str]:
    """Compares this implementation with the reference fixture's golden numbers; returns one
    line per case."""
    fixture, model_dir = pathlib.Path(fixture), pathlib.Path(model_dir)
    expected = json.loads((fixture / "expected.json").read_text())
    model = load_checkpoint(model_dir).eval()
    lines = []
    for case in expected["cases"]:
        pixels = torch.from_numpy(np.load(fixture / case["pixel_values"]["file"]))
        ids = torch.tensor([case["input_ids"]])
        with torch.no_grad():
            dino = model.vision_backbone.featurizer(pixels[:, :3])[0].numpy()
            siglip = model.vision_backbone.fused_featurizer(pixels[:, 3:])[0].numpy()
            projected = model.projector(model.vision_backbone(pixels))[0].numpy()
            tokens, logits, _ = model.generate(pixels, ids)

        def rel(a, b):
            return float(np.linalg.norm(a - b) / np.linalg.norm(b))

        lines.append(
            f"{case['name']}: dinov2 rel {rel(dino, np.load(fixture / case['dinov2_patches']['file'])):.2e}, "
            f"siglip rel {rel(siglip, np.load(fixture / case['siglip_patches']['file'])):.2e}, "
            f"projector rel {rel(projected, np.load(fixture / case['projector_out']['file'])):.2e}, "
            f"step-0 logits max abs {np.abs(logits[0].numpy() - np.load(fixture / case['step0_logits']['file'])).max():.2e}, "
            f"tokens {'equal' if tokens[0].tolist() == case['generated_token_ids'] else 'DIFFER'}")
    return lines


if __name__ == "__main__":
    import sys
    root = pathlib.Path(__file__).resolve().parent.parent
    fixture = root / "tests" / "fixtures" / "openvla-tiny"
    for line in check_against_fixture(fixture, pathlib.Path(sys.argv[1]) if len(sys.argv) > 1
                                      else root / "engines" / "openvla-tiny"):
        print(line)
