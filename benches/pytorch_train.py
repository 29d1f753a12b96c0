#!/usr/bin/env python3
"""PyTorch counterpart of `src/bin/bench_train.rs`: forward and LoRA training throughput on CPU.

Same measurements, models, inputs and settings as the Rust bench, with `transformers` + `peft`:
batch 8 x 128 synthetic token ids (the same xorshift64 stream and seed, so both see identical
ids), f32 weights, `torch.set_num_threads(2)` by default, `--warmup` untimed then `--steps`
timed steps per phase.

  (a) forward tokens/s of the frozen base model under `torch.inference_mode()` (encoder: last
      hidden state, no pooler; decoder: full-sequence logits);
  (b) LoRA training tokens/s: r=8, alpha=16, dropout 0 on query/value (BERT) or q_proj/v_proj
      (Llama) via `peft.get_peft_model`, `torch.optim.AdamW(lr=1e-4, weight_decay=0)`; one
      forward + backward + update per step. Encoder loss: cross-entropy of a 2-class linear head
      (normal(0, 0.02) init, zero bias) on the [CLS] hidden state; decoder loss: next-token
      cross-entropy over the sequence. The model is kept in eval mode so that BERT's dropout is
      off, as in smelt (LoRA gradients flow regardless);
  (c) peak RSS (VmHWM, reset via /proc/self/clear_refs before the model is loaded; it includes
      the ~0.3-0.5 GB that importing torch costs).

Attention uses transformers' default implementation (SDPA). Setup (outside the repo):

  python3 -m venv /tmp/venv-bench
  /tmp/venv-bench/bin/pip install torch transformers peft safetensors
  /tmp/venv-bench/bin/python benches/pytorch_train.py --model small
  SMELT_SMOLLM2=/tmp/smollm2 /tmp/venv-bench/bin/python benches/pytorch_train.py --model smollm2
"""

import argparse
import os
import sys
import time
from pathlib import Path

BATCH, SEQ, RANK, ALPHA, LR = 8, 128, 8, 16, 1e-4
SEED = 0x5EED0F5E17
LOW_ID = 1000
MASK64 = (1 << 64) - 1
ROOT = Path(__file__).resolve().parent.parent
BASE_RSS = [0.0]  # RSS once torch/transformers/peft are imported


def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def synthetic_ids(vocab):
    """Same stream as `synthetic_ids` in bench_train.rs."""
    state, span, out = SEED, vocab - LOW_ID, []
    for _ in range(BATCH * SEQ):
        state ^= (state << 13) & MASK64
        state ^= state >> 7
        state ^= (state << 17) & MASK64
        out.append(LOW_ID + (state >> 11) % span)
    return out


def timed(warmup, steps, f):
    for _ in range(warmup):
        f()
    best = float("inf")
    start = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    total = time.perf_counter() - start
    return steps * BATCH * SEQ / total, best


def bench(name, path, warmup, steps):
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM
    except OSError:
        pass
    t = time.perf_counter()
    cfg = AutoConfig.from_pretrained(path)
    decoder = cfg.model_type == "llama"
    if decoder:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        targets = ["q_proj", "v_proj"]
    else:
        model = AutoModel.from_pretrained(path, dtype=torch.float32, add_pooling_layer=False)
        targets = ["query", "value"]
    model.eval()
    print(
        f"{name} ({cfg.model_type}, {path}): loaded in {time.perf_counter() - t:.2f} s, "
        f"RSS {status_mb('VmRSS:'):.0f} MB, attention {model.config._attn_implementation}"
    )
    ids = torch.tensor(synthetic_ids(cfg.vocab_size), dtype=torch.long).reshape(BATCH, SEQ)

    def forward():
        with torch.inference_mode():
            model(input_ids=ids)

    fwd_tps, fwd_best = timed(warmup, steps, forward)
    print(f"  forward: {fwd_tps:.0f} tokens/s (best step {fwd_best:.3f} s; batch {BATCH} x {SEQ})")

    lcfg = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=targets)
    pmodel = get_peft_model(model, lcfg)
    pmodel.eval()
    params = [p for p in pmodel.parameters() if p.requires_grad]
    if decoder:

        def loss_fn():
            logits = pmodel(input_ids=ids).logits
            v = logits.shape[-1]
            return F.cross_entropy(logits[:, :-1].reshape(-1, v), ids[:, 1:].reshape(-1))

    else:
        torch.manual_seed(0)
        head = torch.nn.Linear(cfg.hidden_size, 2)
        torch.nn.init.normal_(head.weight, std=0.02)
        torch.nn.init.zeros_(head.bias)
        params += list(head.parameters())
        labels = torch.arange(BATCH) % 2

        def loss_fn():
            cls = pmodel(input_ids=ids).last_hidden_state[:, 0]
            return F.cross_entropy(head(cls), labels)

    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    last = [float("nan")]

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        last[0] = loss.item()

    train_tps, train_best = timed(warmup, steps, step)
    print(
        f"  LoRA r={RANK} {targets} + AdamW: {train_tps:.0f} training tokens/s "
        f"(best step {train_best:.3f} s; {trainable} trainable params; last loss {last[0]:.4f})"
    )
    peak = status_mb("VmHWM:")
    print(f"  peak RSS {peak:.0f} MB ({peak - BASE_RSS[0]:.0f} MB above the RSS after import)")
    print(
        f"RESULT pytorch {name} forward_tok_s={fwd_tps:.0f} train_tok_s={train_tps:.0f} "
        f"peak_rss_mb={peak:.0f}"
    )


def smollm2_dir():
    for d in (os.environ.get("SMELT_SMOLLM2"), str(ROOT / "../shared/smollm2")):
        if d and (Path(d) / "config.json").is_file():
            return d
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--model", choices=["small", "smollm2", "all"], default="all")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.steps < 1:
        sys.exit("--steps must be at least 1")

    import peft
    import torch
    import transformers

    torch.set_num_threads(a.threads)
    BASE_RSS[0] = status_mb("VmRSS:")
    print(
        f"pytorch_train: torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}, {torch.get_num_threads()} threads; batch {BATCH} x {SEQ} "
        f"synthetic tokens (xorshift64 seed {SEED:#x}), {a.warmup} warm-up + {a.steps} timed "
        f"steps, CPU; RSS after import {BASE_RSS[0]:.0f} MB"
    )
    if a.model != "smollm2":
        bench("small", str(ROOT / "assets/models/minilm-l3-v8k"), a.warmup, a.steps)
    if a.model != "small":
        d = smollm2_dir()
        if d:
            bench("smollm2", d, a.warmup, a.steps)
        else:
            print(
                "smollm2: skipped (set SMELT_SMOLLM2=DIR or build ../shared/smollm2 with "
                "shared/assets/scripts/get-smollm2.sh DIR f16)"
            )


if __name__ == "__main__":
    main()
