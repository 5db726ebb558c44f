#!/usr/bin/env python3
"""PyTorch CPU eager reference timing for `vla-rt bench --random-weights --shape SHAPE`.

Builds the same architecture with random f32 weights (DINOv2-reg4 + SigLIP ViTs run to block
depth-2, fused-GELU projector, Llama with GQA and a preallocated KV cache, SDPA attention)
and times the same stages: vision, projector, prefill (283 positions), 6 decode steps.
With --oft-chunk K it instead times OpenVLA-OFT's parallel decoding (predict_action of
moojink/openvla-oft 213c5ff8): vision, projector, ONE bidirectional pass of all decoder layers
over [<s>, 256 image tokens, 26 prompt ids ending in 29871, 7K zero placeholder rows, </s>]
(1 + 256 + 26 + 7K + 1 positions) with the final RMSNorm of the 7K rows the head reads, and
the L1 regression head (MLPResNet, 2 blocks) giving K actions; no lm_head, no decode steps.
Usage: python3 scripts/bench_policy_torch.py --shape mid --runs 3 --threads 2
       python3 scripts/bench_policy_torch.py --shape mid --oft-chunk 8 --runs 3
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = {
    "tiny": dict(vits=[(48, 4, 3, 192, 5), (40, 4, 2, 149, 0)], llm=(64, 2, 4, 4, 172)),
    "mid": dict(vits=[(384, 12, 6, 1536, 5), (384, 12, 6, 1536, 0)], llm=(1024, 24, 16, 4, 2816)),
    "openvla-7b": dict(vits=[(1024, 24, 16, 4096, 5), (1152, 27, 16, 4304, 0)], llm=(4096, 32, 32, 32, 11008)),
}
VOCAB, PATCHES, PROMPT, ACTION_DIM = 32064, 256, 27, 7  # PROMPT ids incl. <s>: 1 + 256 + 26 = 283 positions


def rand(*shape, scale=0.02):
    return (torch.rand(*shape) * 2 - 1) * scale


class Vit:
    def __init__(self, d, depth, heads, mlp, prefix):
        self.d, self.heads, self.prefix = d, heads, prefix
        self.patch_w, self.patch_b = rand(d, 3, 14, 14), rand(d)
        self.pos, self.pre = rand(1, PATCHES, d), rand(1, prefix, d)
        self.blocks = [
            dict(n1=(torch.ones(d), rand(d)), qkv=(rand(3 * d, d), rand(3 * d)), proj=(rand(d, d), rand(d)),
                 n2=(torch.ones(d), rand(d)), fc1=(rand(mlp, d), rand(mlp)), fc2=(rand(d, mlp), rand(d)),
                 ls=(torch.full((d,), 0.1), torch.full((d,), 0.1)) if prefix else None)
            for _ in range(depth - 1)  # block depth-1 is never used
        ]

    def __call__(self, img):
        x = F.conv2d(img, self.patch_w, self.patch_b, stride=14).flatten(2).transpose(1, 2) + self.pos
        if self.prefix:
            x = torch.cat([self.pre, x], dim=1)
        n, hd = x.shape[1], self.d // self.heads
        for b in self.blocks:
            h = F.layer_norm(x, (self.d,), *b["n1"], eps=1e-6)
            q, k, v = F.linear(h, *b["qkv"]).reshape(1, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, n, self.d)
            a = F.linear(a, *b["proj"])
            x = x + (a * b["ls"][0] if b["ls"] is not None else a)
            h = F.linear(F.gelu(F.linear(F.layer_norm(x, (self.d,), *b["n2"], eps=1e-6), *b["fc1"])), *b["fc2"])
            x = x + (h * b["ls"][1] if b["ls"] is not None else h)
        return x[:, self.prefix:]


def rms(x, w, eps=1e-6):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


class Llama:
    def __init__(self, h, layers, heads, kv, inter, capacity):
        self.h, self.heads, self.kv, self.hd = h, heads, kv, h // heads
        self.embed = rand(VOCAB, h, scale=1.0)
        self.layers = [dict(n1=torch.ones(h), q=rand(h, h), k=rand(kv * self.hd, h), v=rand(kv * self.hd, h),
                            o=rand(h, h), n2=torch.ones(h), g=rand(inter, h), u=rand(inter, h), d=rand(h, inter))
                       for _ in range(layers)]
        self.norm, self.head = torch.ones(h), rand(VOCAB, h)
        self.kc = torch.zeros(layers, 1, kv, capacity, self.hd)
        self.vc = torch.zeros(layers, 1, kv, capacity, self.hd)
        inv = 1.0 / (10000.0 ** (torch.arange(0, self.hd, 2).float() / self.hd))
        f = torch.outer(torch.arange(capacity).float(), inv)
        emb = torch.cat([f, f], dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()

    def rope(self, x, pos):
        c, s = self.cos[pos], self.sin[pos]
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * c + rot * s

    def __call__(self, x, past):
        n = x.shape[1]
        pos = torch.arange(past, past + n)
        for i, l in enumerate(self.layers):
            h = rms(x, l["n1"])
            q = self.rope(F.linear(h, l["q"]).view(1, n, self.heads, self.hd).transpose(1, 2), pos)
            k = self.rope(F.linear(h, l["k"]).view(1, n, self.kv, self.hd).transpose(1, 2), pos)
            v = F.linear(h, l["v"]).view(1, n, self.kv, self.hd).transpose(1, 2)
            self.kc[i, :, :, past:past + n] = k
            self.vc[i, :, :, past:past + n] = v
            rep = self.heads // self.kv
            keys = self.kc[i, :, :, :past + n].repeat_interleave(rep, dim=1)
            vals = self.vc[i, :, :, :past + n].repeat_interleave(rep, dim=1)
            a = F.scaled_dot_product_attention(q, keys, vals, is_causal=n > 1)
            x = x + F.linear(a.transpose(1, 2).reshape(1, n, self.h), l["o"])
            h = rms(x, l["n2"])
            x = x + F.linear(F.silu(F.linear(h, l["g"])) * F.linear(h, l["u"]), l["d"])
        return F.linear(rms(x[:, -1], self.norm), self.head)

    def bidirectional(self, x, rows):
        """OFT's single pass: no KV cache, full attention (no mask), positions 0..n-1; returns the
        final-norm hidden states of `rows` (a slice of the sequence) without the lm_head."""
        n = x.shape[1]
        pos = torch.arange(n)
        rep = self.heads // self.kv
        for l in self.layers:
            h = rms(x, l["n1"])
            q = self.rope(F.linear(h, l["q"]).view(1, n, self.heads, self.hd).transpose(1, 2), pos)
            k = self.rope(F.linear(h, l["k"]).view(1, n, self.kv, self.hd).transpose(1, 2), pos)
            v = F.linear(h, l["v"]).view(1, n, self.kv, self.hd).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1),
                                               is_causal=False)
            x = x + F.linear(a.transpose(1, 2).reshape(1, n, self.h), l["o"])
            h = rms(x, l["n2"])
            x = x + F.linear(F.silu(F.linear(h, l["g"])) * F.linear(h, l["u"]), l["d"])
        return rms(x[:, rows], self.norm)


class MlpResNetHead:
    """OFT's L1 regression head (MLPResNet, 2 blocks): [K*7, H] -> [K, 7H] -> LayerNorm -> Linear(7H, H) -> ReLU
    -> 2 x (x + ReLU(Linear(LayerNorm(x)))) -> LayerNorm -> Linear(H, 7); LayerNorm eps 1e-5."""

    def __init__(self, h, blocks=2):
        d = ACTION_DIM * h
        self.h = h
        self.ln1, self.fc1 = (torch.ones(d), rand(d)), (rand(h, d), rand(h))
        self.blocks = [((torch.ones(h), rand(h)), (rand(h, h), rand(h))) for _ in range(blocks)]
        self.ln2, self.fc2 = (torch.ones(h), rand(h)), (rand(ACTION_DIM, h), rand(ACTION_DIM))

    def __call__(self, x):
        x = x.reshape(-1, ACTION_DIM * self.h)
        x = F.relu(F.linear(F.layer_norm(x, (ACTION_DIM * self.h,), *self.ln1, eps=1e-5), *self.fc1))
        for ln, fc in self.blocks:
            x = x + F.relu(F.linear(F.layer_norm(x, (self.h,), *ln, eps=1e-5), *fc))
        return F.linear(F.layer_norm(x, (self.h,), *self.ln2, eps=1e-5), *self.fc2)


def image_tokens(vits, proj, pixels):
    """Both encoders, then the projector: the start, after-vision and after-projector times
    and the image tokens."""
    t0 = time.perf_counter()
    feats = torch.cat([vits[0](pixels[:, :3]), vits[1](pixels[:, 3:])], dim=2)
    t1 = time.perf_counter()
    p = F.gelu(F.linear(feats, *proj[0]))
    p = F.gelu(F.linear(p, *proj[1]))
    p = F.linear(p, *proj[2])
    return t0, t1, time.perf_counter(), p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="mid", choices=SHAPES)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--oft-chunk", type=int, default=0, metavar="K",
                    help="time OpenVLA-OFT's parallel decoding of a chunk of K actions instead of the token path")
    args = ap.parse_args()
    if args.oft_chunk < 0:
        ap.error("--oft-chunk must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = SHAPES[args.shape]
    vits = [Vit(*v) for v in spec["vits"]]
    vision = sum(v[0] for v in spec["vits"])
    h = spec["llm"][0]
    proj = [(rand(4 * vision, vision), rand(4 * vision)), (rand(h, 4 * vision), rand(h)), (rand(h, h), rand(h))]
    chunk = args.oft_chunk
    placeholders = chunk * ACTION_DIM
    seq = 1 + PATCHES + (PROMPT - 1) + placeholders + 1  # chunk path: <s>, image, prompt, placeholders, </s>
    llama = Llama(*spec["llm"], capacity=max(1 + PATCHES + 512, seq))
    pixels = torch.rand(1, 6, 224, 224) * 2 - 1
    ids = torch.randint(0, 32000, (PROMPT,))
    if chunk:
        return bench_chunk(args, vits, proj, llama, pixels, ids, seq)
    rows = {k: [] for k in ["vision", "projector", "prefill", "decode", "total"]}
    with torch.inference_mode():
        for run in range(args.warmup + args.runs):
            t0, t1, t2, p = image_tokens(vits, proj, pixels)
            emb = torch.cat([llama.embed[ids[:1]][None], p, llama.embed[ids[1:]][None]], dim=1)
            logits = llama(emb, 0)
            t3 = time.perf_counter()
            past = emb.shape[1]
            for step in range(ACTION_DIM - 1):
                tok = int(logits.argmax())
                logits = llama(llama.embed[tok][None, None], past + step)
            t4 = time.perf_counter()
            if run >= args.warmup:
                for k, v in zip(rows, [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0]):
                    rows[k].append(v * 1e3)
    print(f"pytorch {torch.__version__} CPU eager f32, shape {args.shape}, {torch.get_num_threads()} threads, "
          f"{args.runs} runs after {args.warmup} warm-up, prefill {PATCHES + PROMPT} positions")
    print(f"{'stage':<22} {'median ms':>10} {'min ms':>10} {'max ms':>10}")
    for k, v in rows.items():
        print(f"{k:<22} {statistics.median(v):>10.2f} {min(v):>10.2f} {max(v):>10.2f}")
    per = [d / (ACTION_DIM - 1) for d in rows["decode"]]
    print(f"{'decode per token':<22} {statistics.median(per):>10.2f} {min(per):>10.2f} {max(per):>10.2f}")


def bench_chunk(args, vits, proj, llama, pixels, ids, seq):
    chunk = args.oft_chunk
    placeholders = chunk * ACTION_DIM
    ids = ids.clone()
    ids[0], ids[-1] = 1, 29871  # <s> ... prompt ends with token 29871 ("▁"), as OFT's prompt does
    first = PATCHES + PROMPT - 1  # row of token 29871 in the full sequence; the head reads 7K rows from here
    rows_read = slice(first, first + placeholders)
    head = MlpResNetHead(llama.h)
    zeros = torch.zeros(1, placeholders, llama.h)
    stop = torch.tensor([2])
    rows = {k: [] for k in ["vision", "projector", "llm pass", "head", "total"]}
    with torch.inference_mode():
        for run in range(args.warmup + args.runs):
            t0, t1, t2, p = image_tokens(vits, proj, pixels)
            emb = torch.cat([llama.embed[ids[:1]][None], p, llama.embed[ids[1:]][None], zeros,
                             llama.embed[stop][None]], dim=1)
            assert emb.shape[1] == seq
            hidden = llama.bidirectional(emb, rows_read)
            t3 = time.perf_counter()
            actions = head(hidden[0])
            t4 = time.perf_counter()
            assert actions.shape == (chunk, ACTION_DIM)
            if run >= args.warmup:
                for k, v in zip(rows, [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0]):
                    rows[k].append(v * 1e3)
    print(f"pytorch {torch.__version__} CPU eager f32, shape {args.shape}, {torch.get_num_threads()} threads, "
          f"{args.runs} runs after {args.warmup} warm-up, OFT chunk {chunk} (L1 head): one bidirectional "
          f"LLM pass over {seq} positions, head reads rows {rows_read.start}..{rows_read.stop - 1}")
    print(f"{'stage':<22} {'median ms':>10} {'min ms':>10} {'max ms':>10}")
    for k, v in rows.items():
        print(f"{k:<22} {statistics.median(v):>10.2f} {min(v):>10.2f} {max(v):>10.2f}")
    aps = [chunk / (t / 1e3) for t in rows["total"]]
    print(f"{'':<22} {'median /s':>10} {'min /s':>10} {'max /s':>10}")
    print(f"{'actions per second':<22} {statistics.median(aps):>10.2f} {min(aps):>10.2f} {max(aps):>10.2f}")


if __name__ == "__main__":
    main()
