#!/usr/bin/env python3
"""PyTorch reference timings on the same card and shapes as `vla-rt bench --backend cuda
--random-weights --shape openvla-7b`: DINOv2 ViT-L/14-reg4 and SigLIP SO400M/14 (timm, random
bf16 weights, up to block depth-2 as OpenVLA uses them), each alone, both on one stream, on
two streams, as one CUDA graph (encoders + concat + projector), then a Llama-2-7B-shaped
transformers model: prefill of the same sequence length, one decode token, and HF
`generate` of 7 greedy tokens. Prints `name median_ms` lines that bench/gpu_check.sh reads.
"""
import argparse
import statistics
import time

import torch


def timed(fn, runs, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples)


def report(name, ms, note=""):
    print(f"{name} {ms:.3f} {note}".rstrip(), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--prefill", type=int, default=256 + 22, help="prefill positions")
    ap.add_argument("--skip-llm", action="store_true")
    args = ap.parse_args()
    import timm

    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    print(f"# torch {torch.__version__}, timm {timm.__version__}, {torch.cuda.get_device_name()}")
    dino = timm.create_model("vit_large_patch14_reg4_dinov2", pretrained=False, img_size=224,
                             num_classes=0).to(dev, dt).eval()
    siglip = timm.create_model("vit_so400m_patch14_siglip_224", pretrained=False,
                               num_classes=0).to(dev, dt).eval()
    # OpenVLA takes the output of block depth-2: drop the last block.
    dino.blocks = dino.blocks[:-1]
    siglip.blocks = siglip.blocks[:-1]
    proj = torch.nn.Sequential(torch.nn.Linear(2176, 8704), torch.nn.GELU(),
                               torch.nn.Linear(8704, 4096), torch.nn.GELU(),
                               torch.nn.Linear(4096, 4096)).to(dev, dt)
    x = torch.randn(1, 3, 224, 224, device=dev, dtype=dt)
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()

    def feats(m):
        return m.forward_features(x)

    def both_one():
        a = feats(dino)
        b = feats(siglip)
        return a, b

    def both_two():
        cur = torch.cuda.current_stream()
        s1.wait_stream(cur)
        s2.wait_stream(cur)
        with torch.cuda.stream(s1):
            a = feats(dino)
        with torch.cuda.stream(s2):
            b = feats(siglip)
        cur.wait_stream(s1)
        cur.wait_stream(s2)
        return a, b

    def vision():
        a, b = both_two()
        fused = torch.cat([a[:, 5:], b], dim=-1)
        return proj(fused)

    with torch.inference_mode():
        report("dino", timed(lambda: feats(dino), args.runs))
        report("siglip", timed(lambda: feats(siglip), args.runs))
        report("both_1stream", timed(both_one, args.runs))
        report("both_2streams", timed(both_two, args.runs))
        report("vision_eager", timed(vision, args.runs))
        g = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                vision()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(g):
            vision()
        report("vision_graph", timed(g.replay, args.runs))
    del g
    n = 1 << 28
    a = torch.empty(n, device=dev, dtype=torch.float32)
    b = torch.empty_like(a)
    ms = timed(lambda: b.copy_(a), args.runs)
    report("copy", ms, f"{2 * 4 * n / ms / 1e6:.0f}GB/s")
    del a, b, dino, siglip, proj
    torch.cuda.empty_cache()
    if args.skip_llm:
        return
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                      max_position_embeddings=2048)
    cfg._attn_implementation = "sdpa"
    with torch.device(dev):
        llm = LlamaForCausalLM(cfg).to(dt).eval()
    embeds = torch.randn(1, args.prefill, 4096, device=dev, dtype=dt) * 0.02
    with torch.inference_mode():
        report("prefill", timed(lambda: llm(inputs_embeds=embeds, use_cache=True), args.runs))
        out = llm(inputs_embeds=embeds, use_cache=True)
        past = out.past_key_values
        tok = out.logits[:, -1:].argmax(-1)

        def one_token():
            # Re-uses the prefill cache at the same position each time (crop back after).
            r = llm(input_ids=tok, past_key_values=past, use_cache=True)
            past.crop(args.prefill)
            return r

        report("decode_token", timed(one_token, args.runs))
        report("generate", timed(lambda: llm.generate(inputs_embeds=embeds, max_new_tokens=7,
                                                      do_sample=False, min_new_tokens=7),
                                 max(3, args.runs // 2)), "HF generate, 7 tokens")


if __name__ == "__main__":
    main()
