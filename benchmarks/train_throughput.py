"""Training throughput: opengpt4's training step vs a minimal reference loop, same model size, same run.

    python benchmarks/train_throughput.py [--presets d4 d6 d8] [--dtypes bfloat16 float32] [--steps 8]

"ours" is the real `Trainer.train_step` (packed loader batches, autocast, summed loss over the
global token count, clipping, AdamW with parameter groups) on a `test`-preset data dir built in a
temp dir. "reference" is a plain-PyTorch Llama written out below the obvious way (separate
q/k/v/gate/up matmuls, K/V repeated for GQA, RMSNorm by hand, plain AdamW) fed random tokens of
the same shape. Both report tokens/s and MFU against the same measured matmul peak. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from opengpt4.config import ModelConfig, TrainConfig
from opengpt4.train.metrics import matmul_peak_flops


class RefBlock(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.c = c
        hd = c.head_dim
        self.q, self.k, self.v = (nn.Linear(c.n_embd, n * hd, bias=False) for n in (c.n_head, c.n_kv_head, c.n_kv_head))
        self.o = nn.Linear(c.n_head * hd, c.n_embd, bias=False)
        self.gate, self.up = nn.Linear(c.n_embd, c.mlp_hidden, bias=False), nn.Linear(c.n_embd, c.mlp_hidden, bias=False)
        self.down = nn.Linear(c.mlp_hidden, c.n_embd, bias=False)
        self.n1, self.n2 = nn.Parameter(torch.ones(c.n_embd)), nn.Parameter(torch.ones(c.n_embd))

    @staticmethod
    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        c, hd = self.c, self.c.head_dim
        h = self.norm(x, self.n1)
        q = self.q(h).view(B, T, c.n_head, hd).transpose(1, 2)
        k = self.k(h).view(B, T, c.n_kv_head, hd).transpose(1, 2)
        v = self.v(h).view(B, T, c.n_kv_head, hd).transpose(1, 2)

        def rope(t):
            t1, t2 = t[..., : hd // 2], t[..., hd // 2 :]
            return t * cos + torch.cat([-t2, t1], -1) * sin

        q, k = rope(q), rope(k)
        rep = c.n_head // c.n_kv_head
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
        x = x + self.o(y)
        h = self.norm(x, self.n2)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class RefModel(nn.Module):
    def __init__(self, c: ModelConfig, seq_len: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(c.vocab_size, c.n_embd)
        self.blocks = nn.ModuleList(RefBlock(c) for _ in range(c.n_layer))
        self.head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.head.weight = self.emb.weight
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2).float() / c.head_dim))
        f = torch.outer(torch.arange(seq_len).float(), inv)
        self.register_buffer("cos", torch.cat([f, f], -1).cos())
        self.register_buffer("sin", torch.cat([f, f], -1).sin())

    def forward(self, idx, targets):
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x, self.cos, self.sin)
        logits = self.head(self.blocks[-1].norm(x, 1.0))
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def time_steps(step, n: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_reference(c: ModelConfig, cfg: TrainConfig, steps: int) -> float:
    torch.manual_seed(0)
    model = RefModel(c, cfg.seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dtype = getattr(torch, cfg.dtype)
    idx = torch.randint(0, c.vocab_size, (cfg.batch_size, cfg.seq_len + 1))

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return time_steps(step, steps)


def bench_ours(preset: str, data: Path, cfg: TrainConfig, steps: int, out: Path):
    from opengpt4.train.pretrain import build_trainer

    trainer = build_trainer(preset, data, out, cfg, [], max_steps=10**6, max_minutes=None, resume=False, fsdp=False)
    return time_steps(trainer.train_step, steps), trainer.objective.model_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["d4", "d6", "d8"])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    args = p.parse_args()
    from opengpt4.data.build import build

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = build("test", Path(tmp) / "data", seed=0)
        for dtype in args.dtypes:
            peak = matmul_peak_flops(getattr(torch, dtype), torch.device("cpu"), seconds=1.0)
            for preset in args.presets:
                # text only on both sides: the reference has no vision tower
                cfg = TrainConfig(seq_len=args.seq_len, batch_size=args.batch_size, dtype=dtype, eval_every=0,
                                  mixture={"world": 1.0}, warmup_steps=1)
                ours_s, model_config = bench_ours(preset, data, cfg, args.steps, Path(tmp) / f"out-{preset}")
                ref_s = bench_reference(model_config, cfg, args.steps)
                tokens = cfg.batch_size * cfg.seq_len
                flops = model_config.flops_per_token(cfg.seq_len) * tokens
                row = {"preset": preset, "dtype": dtype, "params_M": round(model_config.num_params() / 1e6, 2),
                       "peak_gflops": round(peak / 1e9, 1),
                       "ours_tokens_per_s": round(tokens / ours_s), "ref_tokens_per_s": round(tokens / ref_s),
                       "ours_mfu": round(flops / ours_s / peak, 3), "ref_mfu": round(flops / ref_s / peak, 3),
                       "ratio_vs_reference": round(ref_s / ours_s, 3)}
                results.append(row)
                print(json.dumps(row), file=sys.stderr)
    print(json.dumps({"batch_size": args.batch_size, "seq_len": args.seq_len, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
