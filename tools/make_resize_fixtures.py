#!/usr/bin/env python3
"""Reference outputs of Pillow's Image.resize for glimpse-core's resample port.

Writes tests/fixtures/resize/: a few small input PNGs, one PNG per (input, size, filter) case, and
manifest.json listing them. The Rust test `crates/glimpse-core/tests/core/resize_parity.rs` resizes each
input with every filter and checks the bytes are identical. The large input is a synthetic pattern
that the test regenerates (see `synthetic`), so it is not stored.

Run with the project's venv:  /opt/gvenv/bin/python tools/make_resize_fixtures.py
"""
import json
import pathlib

import numpy as np
import PIL
from PIL import Image
from skimage import data

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "resize"
FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def synthetic(w, h):
    """Smooth ramps plus a hard-edged checkerboard (to exercise ringing); mirrored in Rust."""
    x = np.arange(w, dtype=np.int64)[None, :].repeat(h, 0)
    y = np.arange(h, dtype=np.int64)[:, None].repeat(w, 1)
    r = x * 255 // max(w - 1, 1)
    g = y * 255 // max(h - 1, 1)
    b = ((x // 37 + y // 29) % 2) * 255
    return np.stack([r, g, b], -1).astype(np.uint8)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.png"):
        old.unlink()
    rng = np.random.default_rng(1234)
    inputs = {
        "astronaut.png": data.astronaut()[40:120, 180:276],  # 96 x 80, a face: real content
        "coffee.png": data.coffee()[100:164, 200:290],  # 90 x 64
        "noise.png": rng.integers(0, 256, (29, 41, 3), dtype=np.uint8),
        "one.png": np.array([[[200, 10, 99]]], dtype=np.uint8),
        "two_by_three.png": rng.integers(0, 256, (3, 2, 3), dtype=np.uint8),
        "tall.png": synthetic(3, 300),
    }
    sizes = {
        "astronaut.png": [(48, 40), (31, 27), (150, 97), (224, 224)],
        "coffee.png": [(1, 1), (90, 1), (13, 64), (90, 37), (45, 200)],
        "noise.png": [(7, 5), (82, 58), (40, 30), (3, 100), (41, 29)],
        "one.png": [(5, 3)],
        "two_by_three.png": [(1, 1), (7, 11)],
        "tall.png": [(1, 224), (224, 4)],
        "synthetic:1000x750": [(298, 224), (224, 168), (224, 224), (17, 401)],
    }
    for name, arr in inputs.items():
        Image.fromarray(arr, "RGB").save(OUT / name, optimize=True)

    cases = []
    for name, targets in sizes.items():
        if name.startswith("synthetic:"):
            w, h = map(int, name.split(":")[1].split("x"))
            img = Image.fromarray(synthetic(w, h), "RGB")
            stem = f"synthetic_{w}x{h}"
        else:
            img = Image.open(OUT / name).convert("RGB")
            stem = name[:-4]
        for (w, h) in targets:
            for f, fname in FILTERS.items():
                out = img.resize((w, h), resample=f)
                out_name = f"{stem}_{w}x{h}_{fname}.png"
                out.save(OUT / out_name, optimize=True)
                cases.append({"input": name, "width": w, "height": h, "filter": f, "output": out_name})
    manifest = {"pillow": PIL.__version__, "cases": cases}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(cases)} cases, {total / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    main()
