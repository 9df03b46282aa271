#!/usr/bin/env python3
"""Glimpse vs PyTorch vs ONNX Runtime on the same CPU, in one run.

Builds the architectures `glimpse bench` runs (CLIPVisionModelWithProjection B/32 and
ViTForImageClassification B/16, random weights at the real sizes) in PyTorch, exports them to
ONNX, makes dynamic-int8 copies with onnxruntime.quantization.quantize_dynamic, and times

  PyTorch fp32, ONNX Runtime fp32, ONNX Runtime int8, glimpse fp32, glimpse bf16, glimpse int8

at the same thread count and batch sizes (median of --iters after --warmup), then prints a
markdown table with Glimpse/ORT ratios. Speed does not depend on weight values.

Usage:  python3 tools/bench/compare.py [--threads 2] [--batches 1 8] [--iters 11]
        [--glimpse target/release/glimpse] [--python /path/to/python] [--json out.json]

Without --python it creates its own venv (default ~/.cache/glimpse-bench-venv, or
$GLIMPSE_BENCH_VENV) and installs requirements.txt there (PyPI) before re-running itself in it.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ARCHS = ["clip-b32", "vit-b16"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--iters", type=int, default=11)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--glimpse", default=str(ROOT / "target/release/glimpse"))
    p.add_argument("--glimpse-precisions", nargs="+", default=["fp32", "bf16", "int8"])
    p.add_argument("--python", help="use this interpreter (with requirements.txt installed) instead of the venv")
    p.add_argument("--no-venv", action="store_true", help="run in the current interpreter")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args()


def ensure_env(args):
    """Re-run inside an interpreter that has the requirements."""
    if args.no_venv or os.environ.get("GLIMPSE_BENCH_CHILD"):
        return
    if args.python:
        python = args.python
    else:
        venv = Path(os.environ.get("GLIMPSE_BENCH_VENV", Path.home() / ".cache/glimpse-bench-venv"))
        python = str(venv / "bin/python")
        if not Path(python).exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "-r", str(HERE / "requirements.txt")], check=True)
    env = dict(os.environ, GLIMPSE_BENCH_CHILD="1")
    sys.exit(subprocess.run([python, __file__, *sys.argv[1:]], env=env).returncode)


def pin_threads(n):
    # Before torch/numpy start their pools.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


def build_torch(arch):
    import torch
    from transformers import (CLIPVisionConfig, CLIPVisionModelWithProjection, ViTConfig,
                              ViTForImageClassification)
    torch.manual_seed(0)
    if arch == "clip-b32":
        cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                               num_hidden_layers=12, patch_size=32, image_size=224,
                               projection_dim=512, hidden_act="quick_gelu")
        model = CLIPVisionModelWithProjection(cfg)
    else:
        cfg = ViTConfig(num_labels=1000)  # defaults are ViT-B/16 at 224
        model = ViTForImageClassification(cfg)
    return model.eval()



def export_onnx(model, path):
    import torch

    class Head(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            out = self.m(pixel_values=pixel_values)
            # The one output Glimpse computes: image_embeds (CLIP) or logits (ViT).
            return out.image_embeds if hasattr(out, "image_embeds") else out.logits

    x = torch.randn(1, 3, 224, 224)
    kw = dict(input_names=["pixel_values"], output_names=["out"],
              dynamic_axes={"pixel_values": {0: "batch"}, "out": {0: "batch"}}, opset_version=17)
    try:
        torch.onnx.export(Head(model), (x,), str(path), dynamo=False, **kw)
    except TypeError:
        torch.onnx.export(Head(model), (x,), str(path), **kw)


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1000)
    return ms


def summary(ms, batch):
    ms = sorted(ms)
    pick = lambda q: ms[round((len(ms) - 1) * q)]
    p50 = statistics.median(ms)
    return {"ms_p50": round(p50, 2), "ms_p10": round(pick(0.1), 2), "ms_p90": round(pick(0.9), 2),
            "img_per_s": round(batch * 1000 / p50, 2)}


def run_glimpse(args, arch, batch, precision):
    cmd = [args.glimpse, "bench", "--arch", arch, "--batch", str(batch), "--threads", str(args.threads),
           "--precision", precision, "--iters", str(args.iters), "--warmup", str(args.warmup)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return {k: r[k] for k in ("ms_p50", "ms_p10", "ms_p90", "img_per_s")}


def loadavg():
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return None


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    args = parse_args()
    ensure_env(args)
    pin_threads(args.threads)
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.set_num_threads(args.threads)
    results = {}  # (runtime, arch, batch) -> summary
    load_before = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            model = build_torch(arch)
            fp32 = Path(tmp) / f"{arch}.onnx"
            int8 = Path(tmp) / f"{arch}-int8.onnx"
            export_onnx(model, fp32)
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sessions = {name: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
                        for name, p in (("ORT fp32", fp32), ("ORT int8", int8))}
            for batch in args.batches:
                x = torch.randn(batch, 3, 224, 224)
                xn = x.numpy()
                with torch.inference_mode():
                    ms = timed(lambda: model(pixel_values=x), args.warmup, args.iters)
                results[("PyTorch fp32", arch, batch)] = summary(ms, batch)
                for name, sess in sessions.items():
                    ms = timed(lambda: sess.run(None, {"pixel_values": xn}), args.warmup, args.iters)
                    results[(name, arch, batch)] = summary(ms, batch)
                for prec in args.glimpse_precisions:
                    results[(f"Glimpse {prec}", arch, batch)] = run_glimpse(args, arch, batch, prec)
                for (rt, a, b), r in results.items():
                    if a == arch and b == batch:
                        print(f"{rt:14} {a} b{b}: {r['ms_p50']:8.1f} ms  {r['img_per_s']:6.2f} img/s", file=sys.stderr)
            del sessions, model
    load_after = loadavg()
    print_table(args, results, load_before, load_after, np, ort, torch)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"cpu": cpu_model(), "threads": args.threads, "load_before": load_before, "load_after": load_after,
             "results": [{"runtime": k[0], "arch": k[1], "batch": k[2], **v} for k, v in results.items()]},
            indent=2))


def print_table(args, results, load_before, load_after, np, ort, torch):
    runtimes = list(dict.fromkeys(k[0] for k in results))
    cols = [(a, b) for a in ARCHS for b in args.batches]
    head = ["runtime"] + [f"{a} b{b} ms / img/s" for a, b in cols]
    print(f"\nCPU: {cpu_model()}; threads {args.threads}; median of {args.iters} after {args.warmup} warm-up")
    print(f"load average before {load_before}, after {load_after}")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for rt in runtimes:
        cells = []
        for a, b in cols:
            r = results.get((rt, a, b))
            cells.append(f"{r['ms_p50']:.1f} / {r['img_per_s']:.2f}" if r else "-")
        print(f"| {rt} | " + " | ".join(cells) + " |")
    # Ratios: throughput Glimpse/ORT (>1 is faster) at every batch; batch-1 latency ORT/Glimpse
    # would be the same number, so one ratio per cell.
    print("\nThroughput ratio Glimpse / ORT (> 1.0: Glimpse faster):\n")
    print("| Glimpse vs ORT | " + " | ".join(f"{a} b{b}" for a, b in cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for g in [r for r in runtimes if r.startswith("Glimpse")]:
        for o in ("ORT fp32", "ORT int8"):
            cells = []
            for a, b in cols:
                rg, ro = results.get((g, a, b)), results.get((o, a, b))
                cells.append(f"{rg['img_per_s'] / ro['img_per_s']:.2f}x" if rg and ro else "-")
            print(f"| {g} / {o} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
