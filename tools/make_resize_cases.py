#!/usr/bin/env python3
"""Random-shape property cases for glimpse-core's Pillow resample port.

Writes tests/fixtures/resize/random_cases.json: a few hundred (input size, output size, filter)
triples drawn with a fixed seed, each with the SHA-256 of Pillow's `Image.resize` output bytes.
The inputs are not stored: `pattern` below makes them from integer arithmetic that the Rust test
`crates/glimpse-core/tests/core/resize_random.rs` mirrors exactly, so the fixture stays a few tens of KB.

The draw covers what one lucky shape cannot: 1-pixel-wide and 1-pixel-tall images, ratios past
1:20 both ways, portrait and landscape, up- and downscales on each axis independently, sizes that
are equal on one axis (Pillow skips that pass), and 4000x3000-class phone-photo downscales.

Run with the project's venv:  /opt/gvenv/bin/python tools/make_resize_cases.py
"""
import hashlib
import json
import pathlib
import random

import numpy as np
import PIL
from PIL import Image

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "resize"
FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
M32 = 0xFFFFFFFF


def pattern(w, h, kind, seed):
    """RGB8 test image; mirrored by `pattern` in resize_random.rs (u32 wrapping arithmetic).

    kind 0: hashed noise (every pixel independent: exercises every tap and rounding);
    kind 1: smooth ramps with a hard-edged checkerboard (ringing, clipping at 0 and 255);
    kind 2: mostly flat with sparse bright dots (large negative lobes next to edges).
    """
    x = np.arange(w, dtype=np.uint64)[None, :, None]
    y = np.arange(h, dtype=np.uint64)[:, None, None]
    c = np.arange(3, dtype=np.uint64)[None, None, :]
    s = np.uint64(seed)
    # 32-bit mix (lowbias32), computed in u64 and masked so numpy cannot overflow.
    v = (x * np.uint64(0x9E3779B1) + y * np.uint64(0x85EBCA77) + c * np.uint64(0xC2B2AE3D) + s) & np.uint64(M32)
    v ^= v >> np.uint64(16)
    v = (v * np.uint64(0x7FEB352D)) & np.uint64(M32)
    v ^= v >> np.uint64(15)
    v = (v * np.uint64(0x846CA68B)) & np.uint64(M32)
    v ^= v >> np.uint64(16)
    noise = v & np.uint64(255)
    if kind == 0:
        out = noise
    elif kind == 1:
        wm = np.uint64(max(w - 1, 1))
        hm = np.uint64(max(h - 1, 1))
        r = x * np.uint64(255) // wm + np.zeros_like(y)
        g = y * np.uint64(255) // hm + np.zeros_like(x)
        b = ((x // np.uint64(7 + seed % 31) + y // np.uint64(5 + seed % 29)) % np.uint64(2)) * np.uint64(255)
        out = np.where(c == 0, r, np.where(c == 1, g, b))
    else:
        out = np.where(noise > np.uint64(250), np.uint64(255), np.uint64(40) + (c * np.uint64(50)))
    return np.ascontiguousarray(out.astype(np.uint8))


def draw_cases(rng):
    cases = []

    def add(w, h, ow, oh, f=None, kind=None):
        cases.append(
            {
                "w": w,
                "h": h,
                "kind": rng.randrange(3) if kind is None else kind,
                "seed": rng.randrange(1 << 31),
                "ow": ow,
                "oh": oh,
                "filter": rng.randrange(6) if f is None else f,
            }
        )

    def side(lo, hi):
        # Log-uniform: as many small sizes as large ones.
        return max(1, int(round(np.exp(rng.uniform(np.log(lo), np.log(hi))))))

    # General: each axis independently up or down, any aspect ratio.
    for _ in range(260):
        add(side(1, 700), side(1, 700), side(1, 400), side(1, 400))
    # Model-shaped targets: 224x224 (ViT), shortest-edge 224 (CLIP), 384, 256, 336.
    for _ in range(120):
        w, h = side(1, 1500), side(1, 1500)
        t = rng.choice([224, 256, 336, 384])
        if rng.random() < 0.5:
            ow, oh = t, t
        else:
            short, long_ = (w, h) if w <= h else (h, w)
            nl = max(1, int(t * long_ / short))
            ow, oh = (t, nl) if w <= h else (nl, t)
            if nl > 6000:  # keep the fixture's work bounded; extreme ratios are drawn below
                ow, oh = (t, t)
        add(w, h, ow, oh)
    # 1-pixel-wide and 1-pixel-tall, and ratios past 1:20 both ways.
    for _ in range(40):
        n = side(2, 900)
        add(1, n, side(1, 300), side(1, 300))
        add(n, 1, side(1, 300), side(1, 300))
    for _ in range(30):
        a, r = side(1, 40), rng.uniform(20, 80)
        b = max(1, int(a * r))
        add(a, b, side(1, 300), side(1, 300))
        add(b, a, side(1, 300), side(1, 300))
    # One axis unchanged (Pillow skips that pass).
    for _ in range(30):
        w, h = side(1, 600), side(1, 600)
        if rng.random() < 0.5:
            add(w, h, w, side(1, 600))
        else:
            add(w, h, side(1, 600), h)
    # Upscales to odd sizes.
    for _ in range(20):
        w, h = side(1, 60), side(1, 60)
        add(w, h, side(61, 500), side(61, 500))
    # Phone-photo downscales (every filter once, both orientations).
    for f in range(6):
        w, h = rng.choice([(4032, 3024), (4000, 3000), (3024, 4032), (3000, 4000), (4624, 3472)])
        if rng.random() < 0.5:
            ow, oh = 224, 224
        else:
            short, long_ = (w, h) if w <= h else (h, w)
            nl = int(224 * long_ / short)
            ow, oh = (224, nl) if w <= h else (nl, 224)
        add(w, h, ow, oh, f=f, kind=rng.randrange(3))
    return cases


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261205)
    cases = draw_cases(rng)
    for case in cases:
        img = Image.fromarray(pattern(case["w"], case["h"], case["kind"], case["seed"]), "RGB")
        out = img.resize((case["ow"], case["oh"]), resample=case["filter"])
        assert out.mode == "RGB" and out.size == (case["ow"], case["oh"])
        case["sha256"] = hashlib.sha256(out.tobytes()).hexdigest()
    manifest = {
        "pillow": PIL.__version__,
        "note": "made by tools/make_resize_cases.py; inputs from `pattern`, outputs as SHA-256 of RGB8 bytes",
        "filters": FILTERS,
        "cases": cases,
    }
    path = OUT / "random_cases.json"
    path.write_text(json.dumps(manifest, separators=(",", ":")) + "\n")
    print(f"{len(cases)} cases, {path.stat().st_size / 1e3:.1f} KB in {path}")


if __name__ == "__main__":
    main()
