#!/usr/bin/env python3
"""Glimpse vs PyTorch, ONNX Runtime and OpenVINO on the same CPU, in one run.

Builds the architectures `glimpse bench` runs (random weights at the real sizes; by default
CLIPVisionModelWithProjection B/32, ViTForImageClassification B/16 and SiglipVisionModel B/16 with
its attention-pooling head) in PyTorch, exports each to ONNX, and times

  PyTorch fp32,
  ONNX Runtime fp32 and dynamic int8 (quantize_dynamic) on that export,
  ONNX Runtime fp32 and dynamic int8 after onnxruntime.transformers' fusion optimiser ("fused"),
  OpenVINO fp32 and OpenVINO with the bf16 inference-precision hint on that export,
  glimpse fp32, bf16, int8

at the same thread count and batch sizes (median of --iters after --warmup), then prints a
markdown table, Glimpse against the best other runtime of its precision class, and the
Glimpse/ORT ratios. A runtime that fails to export, fuse or compile gets a "failed: reason" row;
the run goes on. Speed does not depend on weight values.

Usage:  python3 tools/bench/compare.py [--threads 2] [--batches 1 8] [--iters 11]
        [--archs clip-b32 vit-b16 siglip-b16] [--glimpse target/release/glimpse]
        [--glimpse-precisions fp32 bf16 int8 | none] [--python /path/to/python] [--json out.json]

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
# Every architecture `glimpse bench --arch` knows (crates/glimpse-candle/src/presets.rs).
ARCHS = ["clip-b32", "clip-b16", "clip-l14", "vit-b16", "siglip-b16", "siglip2-b16"]
DEFAULT_ARCHS = ["clip-b32", "vit-b16", "siglip-b16"]
# onnxruntime.transformers.optimizer model_type per family: the one that fuses the most
# (tried: clip, vit, bert). "clip" fuses CLIP's and SigLIP's attention (12 Attention per B model,
# from an eager-attention export; the SDPA export fuses none), SkipLayerNormalization and the
# activation; for ViT no type fuses its attention, "vit" fuses the rest.
FUSE_MODEL_TYPE = {"clip": "clip", "siglip": "clip", "vit": "vit"}

ORT_ROWS = ["ORT fp32", "ORT int8", "ORT fp32 (fused)", "ORT int8 (fused)"]
OV_FP32 = "OpenVINO fp32"
OV_BF16 = "OpenVINO bf16 hint"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--iters", type=int, default=11)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--archs", nargs="+", default=DEFAULT_ARCHS, choices=ARCHS, metavar="ARCH",
                   help=f"any of {' '.join(ARCHS)} (default: {' '.join(DEFAULT_ARCHS)})")
    p.add_argument("--glimpse", default=str(ROOT / "target/release/glimpse"))
    p.add_argument("--glimpse-precisions", nargs="+", default=["fp32", "bf16", "int8"],
                   help="fp32 bf16 int8, or none to time no Glimpse row")
    p.add_argument("--ov-bf16", choices=["auto", "always", "never"], default="auto",
                   help="time OpenVINO's bf16 hint: auto = only where the CPU plugin reports BF16 "
                        "among its OPTIMIZATION_CAPABILITIES (elsewhere it emulates bf16, >15x slower)")
    p.add_argument("--python", help="use this interpreter (with requirements.txt installed) instead of the venv")
    p.add_argument("--no-venv", action="store_true", help="run in the current interpreter")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    args.glimpse_precisions = [x for x in args.glimpse_precisions if x.lower() != "none"]
    return args


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


def family(arch):
    return arch.split("-")[0].rstrip("2")  # clip, vit, siglip (siglip2 has the same image tower)


def build_torch(arch, attn=None):
    """The image path `glimpse bench --arch ARCH` times, at the sizes of presets.rs.

    Returns (model, num_heads, hidden_size). `attn` picks transformers' attention implementation
    (None: its default, SDPA)."""
    import torch
    from transformers import (CLIPVisionConfig, CLIPVisionModelWithProjection, SiglipVisionConfig,
                              SiglipVisionModel, ViTConfig, ViTForImageClassification)
    torch.manual_seed(0)
    if arch.startswith("clip-"):
        kw = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                  patch_size={"clip-b32": 32, "clip-b16": 16, "clip-l14": 14}[arch], image_size=224,
                  projection_dim=512, hidden_act="quick_gelu")
        if arch == "clip-l14":
            kw.update(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                      projection_dim=768)
        cfg, cls = CLIPVisionConfig(**kw), CLIPVisionModelWithProjection
    elif arch == "vit-b16":
        cfg, cls = ViTConfig(num_labels=1000), ViTForImageClassification  # defaults are ViT-B/16 at 224
    else:
        # google/siglip-base-patch16-224 and siglip2-base-patch16-224 share this image tower:
        # the encoder, post-layernorm and the attention-pooling head (pooler_output).
        cfg = SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                 num_hidden_layers=12, patch_size=16, image_size=224,
                                 hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=True)
        cls = SiglipVisionModel
    if attn:
        cfg._attn_implementation = attn
    model = cls(cfg).eval()
    return model, cfg.num_attention_heads, cfg.hidden_size


def head_output(out):
    """The one output Glimpse computes: image_embeds (CLIP), logits (ViT) or the
    attention-pooling head's pooler_output (SigLIP)."""
    if getattr(out, "image_embeds", None) is not None:
        return out.image_embeds
    if getattr(out, "logits", None) is not None:
        return out.logits
    return out.pooler_output


def export_onnx(model, path):
    import torch

    class Head(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return head_output(self.m(pixel_values=pixel_values))

    x = torch.randn(1, 3, 224, 224)
    kw = dict(input_names=["pixel_values"], output_names=["out"],
              dynamic_axes={"pixel_values": {0: "batch"}, "out": {0: "batch"}}, opset_version=17)
    try:
        torch.onnx.export(Head(model), (x,), str(path), dynamo=False, **kw)
    except TypeError:
        torch.onnx.export(Head(model), (x,), str(path), **kw)


def why(e):
    """One short line for a table cell."""
    msg = " ".join(str(e).split())[:160] or "(no message)"
    return f"{type(e).__name__}: {msg}".replace("|", "/")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


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
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise RuntimeError(f"glimpse bench exited {p.returncode}: {tail}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
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


class Failed(Exception):
    """A runtime that could not be prepared; the reason goes into its row."""


def ort_session(ort, path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda xn: sess.run(None, {"pixel_values": xn})


def prepare_onnx(args, arch, tmp, meta):
    """Exports, quantises and fuses; returns {row: path or Failed}."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    paths = {}
    fp32, int8 = Path(tmp) / f"{arch}.onnx", Path(tmp) / f"{arch}-int8.onnx"
    try:
        model, _, _ = build_torch(arch)
        export_onnx(model, fp32)
        del model
        paths["ORT fp32"] = paths[OV_FP32] = paths[OV_BF16] = fp32
    except Exception as e:  # noqa: BLE001 - every failure becomes a row
        paths["ORT fp32"] = paths[OV_FP32] = paths[OV_BF16] = Failed(f"ONNX export: {why(e)}")
    if isinstance(paths["ORT fp32"], Failed):
        paths["ORT int8"] = paths["ORT fp32"]
    else:
        try:
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
            paths["ORT int8"] = int8
        except Exception as e:  # noqa: BLE001
            paths["ORT int8"] = Failed(f"quantize_dynamic: {why(e)}")

    # The fusion optimiser matches the attention of an eager-attention export (CLIP, SigLIP); the
    # same seed gives the same weights as the export above.
    fused, fused8 = Path(tmp) / f"{arch}-fused.onnx", Path(tmp) / f"{arch}-fused-int8.onnx"
    mtype = FUSE_MODEL_TYPE[family(arch)]
    try:
        from onnxruntime.transformers.optimizer import optimize_model
        model, heads, hidden = build_torch(arch, attn="eager")
        eager = Path(tmp) / f"{arch}-eager.onnx"
        export_onnx(model, eager)
        del model
        opt = optimize_model(str(eager), model_type=mtype, num_heads=heads, hidden_size=hidden)
        stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        meta.setdefault("fused_ops", {})[arch] = {"model_type": mtype, **stats}
        log(f"{arch}: ORT fusion (model_type {mtype!r}): {stats}")
        if not stats.get("Attention") and not stats.get("MultiHeadAttention"):
            log(f"{arch}: note: the optimiser fused no attention")
        opt.save_model_to_file(str(fused))
        eager.unlink()
        paths["ORT fp32 (fused)"] = fused
    except Exception as e:  # noqa: BLE001
        paths["ORT fp32 (fused)"] = paths["ORT int8 (fused)"] = Failed(f"fusion ({mtype}): {why(e)}")
    if "ORT int8 (fused)" not in paths:
        try:
            # The fused graph's com.microsoft ops leave some tensor types uninferred; they are all
            # float, which quantize_dynamic is told (it then makes QAttention of Attention).
            import onnx
            quantize_dynamic(str(fused), str(fused8), weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            paths["ORT int8 (fused)"] = fused8
        except Exception as e:  # noqa: BLE001
            paths["ORT int8 (fused)"] = Failed(f"quantize_dynamic (fused): {why(e)}")
    return paths


class OpenVino:
    """One compiled model per batch size (static shape), at a given precision hint."""

    def __init__(self, ov, core, path, hint, threads):
        self.ov, self.core, self.path, self.hint, self.threads = ov, core, path, hint, threads
        self.ran = None  # what the compiled model reports, e.g. "f32" or "bf16"

    def compile(self, batch):
        model = self.core.read_model(str(self.path))
        model.reshape([batch, 3, 224, 224])
        compiled = self.core.compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": self.hint,
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
        })
        prop = compiled.get_property("INFERENCE_PRECISION_HINT")
        ran = prop.get_type_name() if hasattr(prop, "get_type_name") else str(prop)
        # What the matrix products really run in: the runtime graph's precision for them.
        mm = set()
        for op in compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            if "layerType" in rt and rt["layerType"].astype(str) in ("FullyConnected", "MatMul", "Convolution"):
                mm.add(rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?")
        self.ran = ran
        self.products = sorted(mm)
        req = compiled.create_infer_request()
        return lambda xn: req.infer({0: xn}, share_inputs=True)


def first_output(np, res):
    """The output array of a torch tensor, an ORT list or an OpenVINO OVDict."""
    if hasattr(res, "detach"):
        return res.detach().float().numpy()
    return np.asarray(res[0], dtype=np.float32)


def min_cosine(np, a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return round(float(cos.min()), 6)


def main():
    args = parse_args()
    ensure_env(args)
    pin_threads(args.threads)
    import numpy as np
    import onnxruntime as ort
    import torch
    try:
        import openvino as ov
        core = ov.Core()
        ov_caps = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        ov_err = None
    except Exception as e:  # noqa: BLE001
        ov, core, ov_caps, ov_err = None, None, [], Failed(f"openvino: {why(e)}")

    torch.set_num_threads(args.threads)
    results = {}  # (runtime, arch, batch) -> summary or {"failed": reason}
    reference = {}  # arch -> PyTorch's output at the first batch size
    meta = {"openvino_caps": ov_caps}
    bf16_native = "BF16" in ov_caps
    time_ov_bf16 = args.ov_bf16 == "always" or (args.ov_bf16 == "auto" and bf16_native)
    if ov is not None:
        log(f"OpenVINO CPU capabilities: {ov_caps}")
    load_before = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            paths = prepare_onnx(args, arch, tmp, meta)
            try:
                model, _, _ = build_torch(arch)
            except Exception as e:  # noqa: BLE001
                model = Failed(f"build: {why(e)}")
            runners = {}
            for name in ORT_ROWS:
                p = paths[name]
                try:
                    runners[name] = p if isinstance(p, Failed) else ort_session(ort, p, args.threads)
                except Exception as e:  # noqa: BLE001
                    runners[name] = Failed(f"session: {why(e)}")
            ovs = {}
            for name, hint in ((OV_FP32, "f32"), (OV_BF16, "bf16")):
                p = paths[name]
                if ov_err is not None:
                    ovs[name] = ov_err
                elif isinstance(p, Failed):
                    ovs[name] = p
                else:
                    ovs[name] = OpenVino(ov, core, p, hint, args.threads)
            for batch in args.batches:
                x = torch.randn(batch, 3, 224, 224)
                xn = x.numpy()

                def record(name, fn):
                    key = (name, arch, batch)
                    try:
                        if isinstance(fn, Failed):
                            raise fn
                        results[key] = summary(timed(lambda: fn(xn), args.warmup, args.iters), batch)
                        if batch == args.batches[0]:
                            # Same weights and input as PyTorch: the answers must agree.
                            out = first_output(np, fn(xn))
                            if name == "PyTorch fp32":
                                reference[arch] = out
                            elif arch in reference:
                                results[key]["cos_vs_torch"] = min_cosine(np, out, reference[arch])
                    except Failed as e:
                        results[key] = {"failed": str(e)}
                    except Exception as e:  # noqa: BLE001
                        results[key] = {"failed": f"run: {why(e)}"}

                if isinstance(model, Failed):
                    record("PyTorch fp32", model)
                else:
                    with torch.inference_mode():
                        record("PyTorch fp32", lambda xn: head_output(model(pixel_values=x)))
                for name, fn in runners.items():
                    record(name, fn)
                for name, o in ovs.items():
                    label, fn = name, o
                    if isinstance(o, OpenVino):
                        try:
                            fn = o.compile(batch)
                            if name == OV_BF16 or o.ran != "f32":
                                label = f"{name} (ran: {o.ran})"
                            if batch == args.batches[0]:
                                log(f"{arch}: {name}: compiled INFERENCE_PRECISION_HINT {o.ran}, "
                                    f"matrix products in {'/'.join(o.products)}")
                                meta.setdefault("openvino_ran", {})[f"{arch} {name}"] = {
                                    "inference_precision_hint": o.ran, "products": o.products}
                            if name == OV_BF16 and args.ov_bf16 == "never":
                                fn = Failed("skipped: --ov-bf16 never")
                            elif name == OV_BF16 and not time_ov_bf16:
                                # The plugin's OPTIMIZATION_CAPABILITIES are on stderr and in the table head.
                                fn = Failed("skipped: no native bf16, it would be emulated (--ov-bf16 always)")
                        except Exception as e:  # noqa: BLE001
                            fn = Failed(f"compile: {why(e)}")
                    record(label, fn)
                    fn = None  # frees the compiled model before the next batch
                for prec in args.glimpse_precisions:
                    key = (f"Glimpse {prec}", arch, batch)
                    try:
                        results[key] = run_glimpse(args, arch, batch, prec)
                    except Exception as e:  # noqa: BLE001
                        results[key] = {"failed": why(e)}
                for (rt, a, b), r in results.items():
                    if a == arch and b == batch:
                        if "failed" in r:
                            log(f"{rt:34} {a} b{b}: {r['failed']}")
                        else:
                            cos = f"  cos vs PyTorch {r['cos_vs_torch']:.6f}" if "cos_vs_torch" in r else ""
                            log(f"{rt:34} {a} b{b}: {r['ms_p50']:8.1f} ms  {r['img_per_s']:6.2f} img/s{cos}")
            del runners, ovs, model
    load_after = loadavg()
    versions = {"torch": torch.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
                "openvino": ov.__version__ if ov is not None else None}
    print_table(args, results, meta, versions, load_before, load_after)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"cpu": cpu_model(), "threads": args.threads, "load_before": load_before, "load_after": load_after,
             "versions": versions, **meta,
             "results": [{"runtime": k[0], "arch": k[1], "batch": k[2], **v} for k, v in results.items()]},
            indent=2))


def precision_class(rt):
    """fp32, bf16 or int8 for a row name."""
    if "int8" in rt:
        return "int8"
    if "bf16" in rt:
        return "bf16"
    return "fp32"


def print_table(args, results, meta, versions, load_before, load_after):
    runtimes = list(dict.fromkeys(k[0] for k in results))
    cols = [(a, b) for a in args.archs for b in args.batches]
    ok = lambda rt, a, b: (lambda r: r if r and "failed" not in r else None)(results.get((rt, a, b)))
    head = ["runtime"] + [f"{a} b{b} ms / img/s" for a, b in cols]
    print(f"\nCPU: {cpu_model()}; threads {args.threads}; median of {args.iters} after {args.warmup} warm-up")
    print(f"load average before {load_before}, after {load_after}")
    print(", ".join(f"{k} {v}" for k, v in versions.items() if v))
    if meta.get("openvino_caps"):
        print(f"OpenVINO CPU capabilities: {', '.join(meta['openvino_caps'])}")
    for arch, st in meta.get("fused_ops", {}).items():
        print(f"ORT fusion {arch}: " + ", ".join(f"{k} {v}" for k, v in st.items()))
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for rt in runtimes:
        cells = []
        for a, b in cols:
            r = results.get((rt, a, b))
            if r is None:
                cells.append("-")
            elif "failed" in r:
                cells.append(r["failed"] if r["failed"].startswith("skipped") else f"failed: {r['failed']}")
            else:
                cells.append(f"{r['ms_p50']:.1f} / {r['img_per_s']:.2f}")
        print(f"| {rt} | " + " | ".join(cells) + " |")

    b0 = args.batches[0]
    print(f"\nAgreement with PyTorch fp32 (lowest cosine over the batch-{b0} outputs, same weights and input):\n")
    for a in args.archs:
        agree = [f"{rt} {ok(rt, a, b0)['cos_vs_torch']:.6f}" for rt in runtimes
                 if ok(rt, a, b0) and "cos_vs_torch" in ok(rt, a, b0)]
        print(f"- {a}: " + (", ".join(agree) if agree else "-"))

    glimpse = [r for r in runtimes if r.startswith("Glimpse")]
    others = [r for r in runtimes if not r.startswith("Glimpse")]
    # Glimpse at each precision against the best other runtime of that class: fp32 against every
    # fp32 row but PyTorch's; int8 against the int8 rows; bf16 against every fp32 and bf16 row.
    pool = {
        "fp32": [r for r in others if precision_class(r) == "fp32" and not r.startswith("PyTorch")],
        "int8": [r for r in others if precision_class(r) == "int8"],
        "bf16": [r for r in others if precision_class(r) in ("fp32", "bf16")],
    }
    print("\nThroughput ratio Glimpse / best other runtime of its precision class (> 1.0: Glimpse faster):\n")
    print("| Glimpse vs best | " + " | ".join(f"{a} b{b}" for a, b in cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for g in glimpse:
        cells = []
        for a, b in cols:
            rg = ok(g, a, b)
            cands = [(ok(o, a, b)["img_per_s"], o) for o in pool[precision_class(g)] if ok(o, a, b)]
            if rg and cands:
                best, name = max(cands)
                cells.append(f"{rg['img_per_s'] / best:.2f}x vs {name}")
            else:
                cells.append("-")
        print(f"| {g} | " + " | ".join(cells) + " |")
    # The old ratios: throughput Glimpse/ORT (>1 is faster) at every batch; batch-1 latency
    # ORT/Glimpse would be the same number, so one ratio per cell.
    print("\nThroughput ratio Glimpse / ORT (> 1.0: Glimpse faster):\n")
    print("| Glimpse vs ORT | " + " | ".join(f"{a} b{b}" for a, b in cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for g in glimpse:
        for o in ("ORT fp32", "ORT int8"):
            cells = []
            for a, b in cols:
                rg, ro = ok(g, a, b), ok(o, a, b)
                cells.append(f"{rg['img_per_s'] / ro['img_per_s']:.2f}x" if rg and ro else "-")
            print(f"| {g} / {o} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
