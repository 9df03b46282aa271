#!/usr/bin/env python3
"""Build the reference fixtures the Rust tests compare against.

Run with `/opt/gvenv/bin/python tools/make_fixtures.py` from anywhere. Deterministic (fixed seeds);
writes tiny random models of the real architectures, real photos in many formats, and the outputs of
the Hugging Face `transformers` reference pipeline under tests/fixtures/. See tools/README.md.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MODELS, IMAGES, EXPECTED = ROOT / "models", ROOT / "images", ROOT / "expected"
PIXELS = EXPECTED / "pixels"
SEED = 20240611
LABELS = ["car", "document", "motorcycle", "truck", "person", "other"]
TEMPLATE = "a photo of a {label}."
ENSEMBLE_TEMPLATES = ["a photo of a {label}.", "a blurry photo of a {label}.", "a {label} in the wild."]
MAX_LEN = 77


def r9(x):
    """Round floats to 9 significant digits (lossless for float32) to keep the JSON small."""
    if isinstance(x, (list, tuple)):
        return [r9(v) for v in x]
    if isinstance(x, np.ndarray) or torch.is_tensor(x):
        return r9(x.tolist())
    return float(f"{float(x):.9g}")


def to_json(obj, indent: int = 0) -> str:
    """Indented JSON, except that lists of scalars stay on one line (1000-float arrays stay readable)."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {to_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + to_json(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = to_json(obj) + "\n"
    assert json.loads(text) == json.loads(json.dumps(obj))
    path.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Tokenizer: openai's BPE vocabulary, shipped inside the open_clip_torch wheel.


def bytes_to_unicode() -> dict[int, str]:
    """openai/CLIP's byte -> printable unicode table (same as GPT-2's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_tokenizer(workdir: Path):
    import open_clip

    gz = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (workdir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = transformers.CLIPTokenizer.from_pretrained(str(workdir), model_max_length=MAX_LEN)
    ids = tok("a photo of a cat.")["input_ids"]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 269, 49407], ids
    return tok


TOKENIZER_TEXTS = [
    "a photo of a cat.",
    "a photo of a car.",
    "A Photo Of A CAR",
    "car",
    "",
    "sports car, sport car",
    "trailer truck, tractor trailer, trucking rig, rig, articulated lorry, semi",
    "Hello, world!!! How are you???",
    "   leading and trailing spaces   ",
    "multiple    spaces\tand\ttabs\nand newlines",
    "digits 0123456789 and 3.14159 and 1,000,000",
    "in 2024 the model v2.5 scored 99%",
    "don't stop, it's what we're doing; they'll see, I'm sure, you've been, he'd go",
    "DON'T SHOUT, IT'S LOUD",
    "café naïve résumé façade Ångström",
    "Straße, Œuvre, ﬁne (ligature)",
    "日本語のテキスト と 中文文本",
    "한국어 텍스트",
    "emoji 🚗🚚🏍️ and 👍🏽 and ❤️",
    "<b>bold</b> &amp; <i>italic</i> <br/>",
    "<|startoftext|>literal special tokens<|endoftext|>",
    "hyphen-ated words and under_scores and a/b/c paths",
    "quotes \"double\" and 'single' and `back`",
    "$100 + 20% = ? #hashtag @mention",
    "e\u0301 composed vs \u00e9 precomposed",
    "a " * 100,
    "the quick brown fox jumps over the lazy dog " * 12,
    ", ".join(f"label{i}" for i in range(60)),
]


def tokenizer_cases(tok) -> dict:
    cases = []
    for text in TOKENIZER_TEXTS:
        ids = tok(text, truncation=True, max_length=MAX_LEN)["input_ids"]
        cases.append({"text": text, "ids": ids})
    assert sum(len(c["ids"]) == MAX_LEN for c in cases) >= 3
    return {
        "max_length": MAX_LEN,
        "truncation": True,
        "source": f"transformers {transformers.__version__} CLIPTokenizer (tokenizers backend), "
        "text -> tok(text, truncation=True, max_length=77)['input_ids']; no padding",
        "cases": cases,
    }


# ----------------------------------------------------------------------------------------------
# Images: real photos from scikit-image and matplotlib, plus format variants made from them.


def fit600(im: Image.Image) -> Image.Image:
    if max(im.size) <= 600:
        return im
    s = 600 / max(im.size)
    return im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)


def make_images() -> dict[str, str]:
    """Writes tests/fixtures/images; returns {file name: what it is}."""
    import matplotlib.cbook
    import skimage.data

    IMAGES.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    desc: dict[str, str] = {}

    def save(name, im, what, **kw):
        im.save(IMAGES / name, **kw)
        desc[name] = what

    astronaut = Image.fromarray(skimage.data.astronaut())
    moto = fit600(Image.fromarray(skimage.data.stereo_motorcycle()[0]))
    page = Image.fromarray(skimage.data.page())
    coffee = Image.fromarray(skimage.data.coffee())
    chelsea = Image.fromarray(skimage.data.chelsea())
    hopper = fit600(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))

    save("astronaut.jpg", astronaut, "baseline JPEG 512x512", quality=85)
    save("astronaut_progressive.jpg", astronaut, "progressive JPEG", quality=85, progressive=True)
    save("motorcycle.jpg", moto, "baseline JPEG, downscaled from 741x500", quality=85)
    save("page.jpg", page, "greyscale (1-channel) JPEG", quality=85)
    save("coffee.jpg", coffee, "baseline JPEG 600x400", quality=85)
    # Pillow writes CMYK JPEGs Adobe-style (inverted, APP14 marker), as Photoshop does.
    save("coffee_cmyk.jpg", coffee.resize((300, 200), Image.LANCZOS).convert("CMYK"),
         "CMYK JPEG 300x200 (Adobe APP14, inverted)", quality=85)
    save("chelsea.jpg", chelsea, "baseline JPEG 451x300", quality=85)
    # Pixels stored rotated 90 degrees counter-clockwise; orientation 6 says "rotate 90 CW to show",
    # so an EXIF-aware decoder gets the upright 451x300 cat, a naive one a 300x451 sideways cat.
    exif = Image.Exif()
    exif[0x0112] = 6
    save("chelsea_exif6.jpg", chelsea.transpose(Image.Transpose.ROTATE_90), "JPEG, EXIF orientation 6",
         quality=85, exif=exif.tobytes())
    save("grace_hopper.jpg", hopper, "baseline JPEG from matplotlib sample data", quality=85)
    wide = moto.crop((0, 200, 600, 350))
    save("wide.jpg", wide, "very non-square JPEG 600x150", quality=85)
    save("tall.png", page.crop((100, 0, 150, 191)).convert("RGB"), "very non-square PNG 50x191 (RGB)")
    save("tiny.png", chelsea.resize((24, 16), Image.LANCZOS), "tiny PNG 24x16, smaller than the crop")
    # Shapes where Pillow 13 runs its vertical pass first (the height shrinks by more than twice the
    # width): a phone-portrait crop, the 120x300 case, and 1:25 strips both ways.
    save("portrait.jpg", hopper.crop((150, 0, 390, 600)), "portrait JPEG 240x600 (a person)", quality=85)
    save("tall_photo.png", moto.resize((120, 300), Image.LANCZOS), "tall PNG 120x300 (squeezed photo)")
    save("strip_tall.png", page.crop((180, 0, 188, 191)).resize((24, 600), Image.LANCZOS).convert("RGB"),
         "1:25 PNG 24x600 (a column of a scanned page)")
    save("strip_wide.png", moto.crop((0, 180, 600, 204)), "25:1 PNG 600x24 (a band of a photo)")

    small = astronaut.resize((224, 224), Image.LANCZOS)
    save("astronaut.png", small, "PNG RGB 224x224")
    yy, xx = np.mgrid[0:224, 0:224]
    r = np.hypot(yy - 112, xx - 112)
    alpha = np.clip(255 * (1.0 - (r - 60) / 50), 0, 255).astype(np.uint8)  # opaque disc, soft edge, clear corners
    rgba = small.copy()
    rgba.putalpha(Image.fromarray(alpha))
    save("rgba.png", rgba, "PNG RGBA with real (partial and full) transparency")
    la = small.convert("L")
    la.putalpha(Image.fromarray(alpha[:, ::-1].copy()))
    save("grey_alpha.png", la, "PNG greyscale+alpha (LA)")
    pal = chelsea.resize((226, 150), Image.LANCZOS).quantize(colors=63, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    pa = np.array(pal)
    pa[40:110, 60:160] = 63  # a transparent hole, index 63 (unused by the quantizer)
    pal2 = Image.fromarray(pa, mode="P")
    pal2.putpalette(pal.getpalette()[: 63 * 3] + [255, 0, 255])
    save("palette.png", pal2, "PNG palette (P) with a transparent index", transparency=63)
    # 16-bit greyscale: a smooth 16-bit rendering of the astronaut with values that are not n*257.
    g16 = np.asarray(small.convert("L"), dtype=np.float64) * 257.0
    g16 = np.clip(g16 + rng.uniform(-300, 300, g16.shape), 0, 65535).astype(np.uint16)
    save("grey16.png", Image.fromarray(g16), "PNG 16-bit greyscale (I;16)")
    save("grey.png", page, "PNG 8-bit greyscale (L) 384x191")
    save("coffee.webp", coffee.resize((300, 200), Image.LANCZOS), "lossy WebP 300x200", quality=80)
    f1 = chelsea.resize((150, 100), Image.LANCZOS)
    f2 = f1.transpose(Image.Transpose.FLIP_LEFT_RIGHT).point(lambda v: 255 - v)
    save("animated.gif", f1, "animated GIF, 2 frames (second mirrored and inverted)", save_all=True,
         append_images=[f2], duration=200, loop=0)
    save("coffee.bmp", coffee.resize((150, 100), Image.LANCZOS), "24-bit BMP 150x100")
    for name in desc:
        size = (IMAGES / name).stat().st_size
        assert size < 150_000, (name, size)
    return desc


# ----------------------------------------------------------------------------------------------
# The reference decode: what Glimpse promises to do before the model's image processor runs.


def reference_rgb(path: Path) -> Image.Image:
    """PIL open -> first frame -> EXIF transpose -> 16-bit to 8-bit -> alpha onto white -> RGB."""
    im = Image.open(path)
    im.seek(0)  # first frame of an animation
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: round(v / 257) (== (v + 128) // 257, no ties exist); PIL's convert clips.
        v = np.asarray(im, dtype=np.int64)
        assert v.min() >= 0 and v.max() <= 65535
        im = Image.fromarray(((v + 128) // 257).astype(np.uint8), mode="L")
    has_alpha = "A" in im.getbands() or im.info.get("transparency") is not None
    if has_alpha:
        # Exactly what transformers' convert_to_rgb does: PIL alpha_composite onto opaque white.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def check_flatten_formula() -> str:
    """Verify PIL's alpha_composite onto white equals the integer formula we document, for all c, a."""
    c, a = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    src = np.stack([c, c, c, a], -1).astype(np.uint8)
    out = np.asarray(Image.alpha_composite(Image.new("RGBA", (256, 256), (255,) * 4), Image.fromarray(src, "RGBA")))
    want = (c * a + 255 * (255 - a) + 127) // 255
    diff = np.abs(out[..., 0].astype(int) - want)
    formula = "out = (c*a + 255*(255-a) + 127) // 255"
    if diff.max() == 0:
        return formula + " (exact for all c, a: checked against PIL alpha_composite)"
    return f"PIL alpha_composite; differs from {formula} by up to {diff.max()} on {int((diff > 0).sum())} of 65536 (c, a)"


def reference_pixels(proc, rgb: Image.Image, resample: int | None = None, shift: int = 0) -> np.ndarray:
    """The HF slow-processor steps done by hand with PIL; asserted equal to the processor's output."""
    arr = np.asarray(rgb)
    w, h = rgb.size
    if proc.size.get("shortest_edge"):
        s = proc.size["shortest_edge"]
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = s, int(s * long / short)
        nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        nh, nw = proc.size["height"], proc.size["width"]
    arr = np.asarray(Image.fromarray(arr).resize((nw, nh), resample=int(proc.resample if resample is None else resample)))
    if getattr(proc, "do_center_crop", False):
        ch, cw = proc.crop_size["height"], proc.crop_size["width"]
        top, left = (nh - ch) // 2, (nw - cw) // 2
        if shift:  # only for the sensitivity check: move the crop along the axis that has room
            top, left = (top + shift, left) if nh - ch > 1 else (top, left + shift)
        assert top >= 0 and left >= 0
        arr = arr[top : top + ch, left : left + cw]
    x = (arr.astype(np.float64) * proc.rescale_factor).astype(np.float32)
    x = (x - np.array(proc.image_mean, np.float32)) / np.array(proc.image_std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


# ----------------------------------------------------------------------------------------------
# Models: tiny, random, but with weights scaled so outputs depend strongly on the input.


def reinit(model: torch.nn.Module, seed: int) -> None:
    """Re-draw every weight at unit-ish scale. transformers' std=0.02 init makes the CLS token nearly
    input-independent, so fixtures made with it would not catch preprocessing errors."""
    g = torch.Generator().manual_seed(seed)

    def normal_(p, std, mean=0.0):
        p.copy_(torch.randn(p.shape, generator=g) * std + mean)

    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                normal_(mod.weight, 1 / math.sqrt(mod.in_features))
                if mod.bias is not None:
                    normal_(mod.bias, 0.1)
            elif isinstance(mod, torch.nn.Conv2d):
                normal_(mod.weight, 1 / math.sqrt(mod.weight[0].numel()))
                if mod.bias is not None:
                    normal_(mod.bias, 0.1)
            elif isinstance(mod, torch.nn.Embedding):
                normal_(mod.weight, 1.0)
            elif isinstance(mod, torch.nn.LayerNorm):
                normal_(mod.weight, 0.2, 1.0)
                normal_(mod.bias, 0.2)
        for name, p in model.named_parameters():
            if name.endswith(("class_embedding", "cls_token")):
                normal_(p, 1.0)
            elif name.endswith("position_embeddings") and p.dim() == 3:  # ViT's is a bare Parameter
                normal_(p, 0.5)


CLIP_OLD_PREPROC = {
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3, "size": 224,
}  # fmt: skip
CLIP_B16_PREPROC = {
    "crop_size": {"height": 96, "width": 96}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
    "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 96},
}  # fmt: skip
VIT_OLD_PREPROC = {
    "do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224,
}  # fmt: skip


def clip_config(text: dict, vision: dict, projection_dim: int) -> transformers.CLIPConfig:
    return transformers.CLIPConfig(
        # projection_dim repeated in the sub-configs, as real checkpoints have it (else they default to 512)
        text_config=dict(vocab_size=49408, max_position_embeddings=MAX_LEN, num_hidden_layers=2,
                         projection_dim=projection_dim, **text),
        vision_config=dict(num_channels=3, num_hidden_layers=2, projection_dim=projection_dim, **vision),
        projection_dim=projection_dim,
    )


def save_model(model, folder: Path, preproc: dict, tok=None) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(str(folder))
    assert (folder / "model.safetensors").exists()
    if tok is not None:
        tok.save_pretrained(str(folder))
        # Re-save tokenizer.json without indentation: same content, half the size (3.6 -> ~2 MB).
        tok.backend_tokenizer.save(str(folder / "tokenizer.json"), pretty=False)
    write_json(folder / "preprocessor_config.json", preproc)


def bin_copy(src: Path, dst: Path) -> None:
    """Same folder with the weights as a classic torch.save zip pickle of the state dict."""
    from safetensors.torch import load_file

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()
    state = {k: v.contiguous().clone() for k, v in load_file(str(src / "model.safetensors")).items()}
    torch.save(state, dst / "pytorch_model.bin")


def build_vit_labels() -> dict[int, str]:
    import timm

    info = Path(timm.__file__).parent / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemma = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    names = {i: lemma[s] for i, s in enumerate(synsets)}
    known = {0: "tench, Tinca tinca", 1: "goldfish, Carassius auratus", 407: "ambulance",
             670: "motor scooter, scooter", 817: "sports car, sport car",
             867: "trailer truck, tractor trailer, trucking rig, rig, articulated lorry, semi",
             999: "toilet tissue, toilet paper, bathroom tissue"}  # fmt: skip
    for i, n in known.items():
        assert names[i] == n, (i, names[i])
    assert len(names) == 1000
    return names


def load_processor(folder: Path):
    proc = transformers.AutoImageProcessor.from_pretrained(str(folder), backend="pil")
    # The PIL backend (the old "slow" processors): resize is PIL Image.resize.
    assert proc.backend == "pil" and type(proc).__name__.endswith("Pil"), type(proc)
    return proc


# ----------------------------------------------------------------------------------------------
# Running the reference pipeline and writing expected outputs.

# .f32 files for every image are written for clip-tiny-b16 only (96x96 is small); the 224x224 models
# get a subset covering each preprocessing path, to keep tests/fixtures under ~25 MB.
PIXEL_SUBSET = {
    "clip-tiny": ["astronaut.jpg", "chelsea_exif6.jpg", "rgba.png", "grey16.png", "wide.jpg"],
    "vit-tiny": ["astronaut.jpg", "chelsea_exif6.jpg", "wide.jpg"],
}
BATCH = ["astronaut.jpg", "rgba.png", "chelsea_exif6.jpg", "wide.jpg"]


def preprocess_all(name: str, proc, rgbs: dict, all_pixels: bool) -> tuple[dict, dict]:
    """Returns ({image: pixel array}, {image: relative .f32 path or None}); writes the .f32 files."""
    arrays, paths = {}, {}
    out_dir = PIXELS / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for img, rgb in rgbs.items():
        px = proc(images=rgb, return_tensors="np")["pixel_values"][0]
        mine = reference_pixels(proc, rgb)
        assert px.dtype == np.float32 and np.array_equal(px, mine), (name, img, np.abs(px - mine).max())
        arrays[img] = px
        if all_pixels or img in PIXEL_SUBSET[name]:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{img}.f32").write_bytes(px.astype("<f4").tobytes())
            paths[img] = f"pixels/{name}/{img}.f32"
        else:
            paths[img] = None
    return arrays, paths


def pixels_for(name: str, proc, rgbs: dict, all_pixels: bool, twin: str | None) -> tuple[dict, dict]:
    """A -bin twin (twin = its safetensors model) reuses the twin's .f32 files instead of writing more."""
    if twin is None:
        return preprocess_all(name, proc, rgbs, all_pixels)
    arrays = {k: reference_pixels(proc, v) for k, v in rgbs.items()}
    paths = {k: f"pixels/{twin}/{k}.f32" if (PIXELS / twin / f"{k}.f32").exists() else None for k in rgbs}
    return arrays, paths


def common_meta(name: str, kind: str, proc, folder: Path) -> dict:
    return {
        "model": name,
        "kind": kind,
        "model_dir": f"models/{name}",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "processor": f"{type(proc).__name__} (backend={proc.backend}, PIL Image.resize)",
        "processor_resolved": {k: (dict(v) if v is not None and not isinstance(v, (bool, int, float)) else v) for k, v in
                               [("size", proc.size), ("crop_size", getattr(proc, "crop_size", None)),
                                ("resample", int(proc.resample)), ("rescale_factor", proc.rescale_factor),
                                ("do_center_crop", bool(getattr(proc, "do_center_crop", False)))]},
        "pixel_values_note": "paths relative to tests/fixtures/expected/; raw little-endian float32 [3, H, W]",
        "weights": "model.safetensors" if (folder / "model.safetensors").exists() else "pytorch_model.bin",
    }  # fmt: skip


@torch.no_grad()
def run_clip(name: str, folder: Path, tok, rgbs: dict, all_pixels: bool, pixel_name: str | None = None) -> dict:
    model = transformers.CLIPModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    proc = load_processor(folder)
    arrays, paths = pixels_for(name, proc, rgbs, all_pixels, pixel_name)

    def embed_texts(prompts):
        enc = tok(prompts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
        out = model.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        e = model.text_projection(out.pooler_output)
        return e / e.norm(dim=-1, keepdim=True)

    prompts = [TEMPLATE.format(label=lab) for lab in LABELS]
    input_ids = [tok(p)["input_ids"] for p in prompts]
    text = embed_texts(prompts)
    for i, p in enumerate(prompts):  # padding must not change the pooled output
        assert torch.allclose(embed_texts([p])[0], text[i], atol=1e-5)
    scale = model.logit_scale.exp().item()

    def image_embeds(px: np.ndarray):
        out = model.vision_model(pixel_values=torch.from_numpy(px))
        e = model.visual_projection(out.pooler_output)
        return e / e.norm(dim=-1, keepdim=True)

    enc = tok(prompts, padding=True, return_tensors="pt")
    images = {}
    for img, px in arrays.items():
        emb = image_embeds(px[None])
        logits = scale * emb @ text.T
        probs = logits.softmax(-1)
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    pixel_values=torch.from_numpy(px[None]))  # fmt: skip
        assert torch.allclose(ref.logits_per_image, logits, atol=1e-4), (img, ref.logits_per_image, logits)
        assert torch.allclose(ref.logits_per_image.softmax(-1), probs, atol=1e-6)
        images[img] = {"pixel_values": paths[img], "image_embeds": r9(emb[0]), "logits": r9(logits[0]),
                       "probs": r9(ref.logits_per_image.softmax(-1)[0])}  # fmt: skip

    batch_px = torch.from_numpy(np.stack([arrays[b] for b in BATCH]))
    batch_probs = (scale * image_embeds(batch_px.numpy()) @ text.T).softmax(-1)

    ens_text = []
    for lab in LABELS:  # CLIP paper prompt ensembling: mean of normalised embeddings, renormalised
        e = embed_texts([t.format(label=lab) for t in ENSEMBLE_TEMPLATES]).mean(0)
        ens_text.append(e / e.norm())
    ens_text = torch.stack(ens_text)
    ens = {img: r9((scale * image_embeds(arrays[img][None]) @ ens_text.T).softmax(-1)[0]) for img in BATCH}

    text_cfg = model.config.text_config
    pooling = "first_eos" if text_cfg.eos_token_id != 2 else "argmax"
    return {
        **common_meta(name, "clip", proc, folder),
        "pooling": {
            "rule": pooling, "eos_token_id": text_cfg.eos_token_id,
            "note": "first_eos: pooled = hidden[first index where input_ids == eos_token_id]; argmax (legacy "
                    "configs with eos_token_id == 2, e.g. openai/clip-vit-base-patch32): hidden[argmax(input_ids)]."
                    " For tokenizer output (eos 49407 is the largest id) both pick the same position.",
        },  # fmt: skip
        "labels": LABELS, "template": TEMPLATE, "prompts": prompts, "input_ids": input_ids,
        "text_embeds": r9(text), "logit_scale": r9(model.logit_scale.item()), "logit_scale_exp": r9(scale),
        "logits_note": "logits = logit_scale_exp * (image_embeds . text_embeds) = CLIPModel logits_per_image; "
                       "probs = softmax(logits) (taken from logits_per_image.softmax(-1))",
        "images": images,
        "batch": {"images": BATCH, "probs": r9(batch_probs)},
        "ensemble": {"templates": ENSEMBLE_TEMPLATES, "text_embeds": r9(ens_text), "probs": ens},
    }  # fmt: skip


@torch.no_grad()
def run_vit(name: str, folder: Path, rgbs: dict, all_pixels: bool, pixel_name: str | None = None,
            model_cls=transformers.ViTForImageClassification) -> dict:
    model = model_cls.from_pretrained(str(folder), dtype=torch.float32).eval()
    proc = load_processor(folder)
    arrays, paths = pixels_for(name, proc, rgbs, all_pixels, pixel_name)
    images = {}
    for img, px in arrays.items():
        logits = model(pixel_values=torch.from_numpy(px[None])).logits[0]
        probs = logits.softmax(-1)
        top = probs.topk(5)
        images[img] = {"pixel_values": paths[img], "logits": r9(logits), "probs": r9(probs),
                       "top5": [{"index": int(i), "label": model.config.id2label[int(i)], "prob": r9(v)}
                                for v, i in zip(top.values, top.indices)]}  # fmt: skip
    batch_logits = model(pixel_values=torch.from_numpy(np.stack([arrays[b] for b in BATCH]))).logits
    return {
        **common_meta(name, "vit", proc, folder),
        "num_labels": model.config.num_labels,
        "images": images,
        "batch": {"images": BATCH, "probs": r9(batch_logits.softmax(-1))},
    }


def max_diff(a, b) -> float:
    """Largest (relative above 1) difference between two JSON-like trees; raises if their shapes or non-floats differ."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) / max(1.0, abs(a))  # relative for large values (CLIP logits are ~100 * cosine)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return max([max_diff(a[k], b[k]) for k in a], default=0.0)
    if isinstance(a, list):
        assert len(a) == len(b)
        return max([max_diff(x, y) for x, y in zip(a, b)], default=0.0)
    assert a == b, (a, b)
    return 0.0


@torch.no_grad()
def sensitivity(kind: str, folder: Path, tok, rgbs: dict) -> dict:
    """How much the probabilities move under plausible preprocessing mistakes: the fixtures are only
    useful if these are far above the contract's 1e-4 tolerance."""
    proc = load_processor(folder)
    if kind == "clip":
        model = transformers.CLIPModel.from_pretrained(str(folder), dtype=torch.float32).eval()
        enc = tok([TEMPLATE.format(label=lab) for lab in LABELS], padding=True, return_tensors="pt")

        def probs(px):
            return model(**enc, pixel_values=torch.from_numpy(px[None])).logits_per_image.softmax(-1)[0]
    else:
        model = transformers.ViTForImageClassification.from_pretrained(str(folder), dtype=torch.float32).eval()

        def probs(px):
            return model(pixel_values=torch.from_numpy(px[None])).logits.softmax(-1)[0]

    other = 2 if int(proc.resample) == 3 else 3
    worst = {"other_resample": 0.0, "one_level_brighter": 0.0, "top_prob_range": [1.0, 0.0]}
    if getattr(proc, "do_center_crop", False):
        worst["crop_shift_1px"] = 0.0
    for img in ["astronaut.jpg", "chelsea.jpg", "rgba.png", "wide.jpg"]:
        base = reference_pixels(proc, rgbs[img])
        p0 = probs(base)
        worst["top_prob_range"] = [min(worst["top_prob_range"][0], p0.max().item()),
                                   max(worst["top_prob_range"][1], p0.max().item())]  # fmt: skip
        variants = {"other_resample": reference_pixels(proc, rgbs[img], resample=other),
                    "one_level_brighter": base + np.float32(1 / 255) / np.array(proc.image_std, np.float32)[:, None, None]}  # fmt: skip
        if getattr(proc, "do_center_crop", False) and rgbs[img].size[0] != rgbs[img].size[1]:
            variants["crop_shift_1px"] = reference_pixels(proc, rgbs[img], shift=1)
        for k, px in variants.items():
            worst[k] = max(worst[k], (probs(px) - p0).abs().max().item())
    return {k: r9(v) for k, v in worst.items()}


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    MODELS.mkdir(parents=True, exist_ok=True)
    EXPECTED.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(ROOT / ".tokenizer-build")
    write_json(EXPECTED / "tokenizer_cases.json", tokenizer_cases(tok))

    desc = make_images()
    rgbs, decoded = {}, {}
    for name in sorted(desc):
        rgb = reference_rgb(IMAGES / name)
        raw = np.asarray(rgb, dtype=np.uint8).tobytes()
        with Image.open(IMAGES / name) as src:
            fmt, mode, size = src.format, src.mode, src.size
        rgbs[name] = rgb
        decoded[name] = {"width": rgb.width, "height": rgb.height, "sha256_rgb8": hashlib.sha256(raw).hexdigest(),
                         "format": fmt, "mode": mode, "stored_size": list(size), "what": desc[name]}  # fmt: skip
    write_json(EXPECTED / "decoded.json", decoded)

    # clip-tiny: openai-like (quick_gelu, patch 32, 224, old-style preprocessor config), logit scale ln(100).
    clip = transformers.CLIPModel(clip_config(
        dict(hidden_size=16, intermediate_size=64, num_attention_heads=4, hidden_act="quick_gelu"),
        dict(hidden_size=32, intermediate_size=128, num_attention_heads=4, image_size=224, patch_size=32,
             hidden_act="quick_gelu"), projection_dim=16)).eval()  # fmt: skip
    reinit(clip, SEED + 1)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(100.0))
    save_model(clip, MODELS / "clip-tiny", CLIP_OLD_PREPROC, tok)
    bin_copy(MODELS / "clip-tiny", MODELS / "clip-tiny-bin")
    link_clip_tokenizer(MODELS / "clip-tiny-bin")

    b16 = transformers.CLIPModel(clip_config(
        dict(hidden_size=8, intermediate_size=32, num_attention_heads=2, hidden_act="gelu"),  # 8: the 49408-row embedding dominates the size
        dict(hidden_size=48, intermediate_size=96, num_attention_heads=4, image_size=96, patch_size=16,
             hidden_act="gelu"), projection_dim=24)).eval()  # fmt: skip
    reinit(b16, SEED + 2)
    with torch.no_grad():
        b16.logit_scale.fill_(math.log(50.0))
    save_model(b16, MODELS / "clip-tiny-b16", CLIP_B16_PREPROC, tok)
    link_clip_tokenizer(MODELS / "clip-tiny-b16")

    labels = build_vit_labels()
    vit_cfg = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=224,
        patch_size=16, num_channels=3, id2label=labels, label2id={v: k for k, v in labels.items()})  # fmt: skip
    vit = transformers.ViTForImageClassification(vit_cfg).eval()
    reinit(vit, SEED + 3)
    with torch.no_grad():
        vit.classifier.weight.mul_(VIT_CLASSIFIER_GAIN)  # so the 1000-way softmax is far from flat
    save_model(vit, MODELS / "vit-tiny", VIT_OLD_PREPROC)
    bin_copy(MODELS / "vit-tiny", MODELS / "vit-tiny-bin")
    shutil.rmtree(ROOT / ".tokenizer-build")

    results = {
        "clip-tiny": run_clip("clip-tiny", MODELS / "clip-tiny", tok, rgbs, all_pixels=False),
        "clip-tiny-b16": run_clip("clip-tiny-b16", MODELS / "clip-tiny-b16", tok, rgbs, all_pixels=True),
        "vit-tiny": run_vit("vit-tiny", MODELS / "vit-tiny", rgbs, all_pixels=False),
    }
    results["clip-tiny-bin"] = run_clip("clip-tiny-bin", MODELS / "clip-tiny-bin", tok, rgbs, False, "clip-tiny")
    results["vit-tiny-bin"] = run_vit("vit-tiny-bin", MODELS / "vit-tiny-bin", rgbs, False, "vit-tiny")
    skip = {"model", "model_dir", "weights"}
    for twin in ("clip-tiny", "vit-tiny"):  # the .bin twins must give the same outputs
        a, b = results[twin], results[twin + "-bin"]
        diff = max_diff({k: v for k, v in a.items() if k not in skip}, {k: v for k, v in b.items() if k not in skip})
        # Not bit-identical: safetensors weights are mmapped at unaligned addresses and MKL's GEMM
        # rounds differently by alignment (measured: 1 ulp). Everything else is exactly equal.
        assert diff <= 2e-5, (twin, diff)  # logits are 100 * cosine: 1 ulp of a cosine is ~1e-5 here
        print(f"{twin} vs {twin}-bin: max diff {diff:.3g}")
    for name, res in results.items():
        kind = res["kind"]
        res["sensitivity"] = sensitivity(kind, MODELS / name, tok, rgbs)
        write_json(EXPECTED / f"{name}.json", res)
        print(name, "sensitivity (max |dprob|):", res["sensitivity"])

    write_json(EXPECTED / "pipeline.json", {
        "decode": "PIL Image.open; first frame (GIF); ImageOps.exif_transpose; then to RGB8 as below",
        "sixteen_bit_grey": "I;16 samples v -> round(v / 257) == (v + 128) // 257 (no ties exist); PIL's own convert clips at 255",
        "alpha": "RGBA, LA and P/L/RGB with a transparency entry: convert('RGBA') then PIL alpha_composite onto opaque "
                 "white (as transformers' convert_to_rgb does); " + check_flatten_formula(),
        "cmyk": "PIL convert('RGB'): r = round((255 - c) * (255 - k) / 255) (Pillow's MULDIV255); Adobe JPEGs are stored inverted",
        "greyscale_and_palette": "PIL convert('RGB') (grey replicated; palette looked up)",
        "processor": "transformers PIL backend; identical to: PIL Image.resize(size, resample) on uint8 RGB "
                     "(CLIP: shortest edge s, long = int(s * long / short); ViT: to height x width), centre crop "
                     "top = (h - ch) // 2, left = (w - cw) // 2, then float32(float64(x) * rescale_factor), "
                     "then (x - mean) / std in float32; asserted bit-identical for every image and model",
        "decoded_json": "sha256 of the raw RGB8 bytes (row-major, HWC) after the steps above, before resizing",
        "transformers_version": transformers.__version__,
        "pillow_version": Image.__version__,
    })  # fmt: skip


VIT_CLASSIFIER_GAIN = 3.0


# ----------------------------------------------------------------------------------------------
# DeiT and a ViT fine-tune with its own labels (issue 23). Made by `--only deit`, which writes only
# these models and their references and leaves every other fixture as it is.

DEIT_OLD_PREPROC = {
    "crop_size": 64, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "DeiTFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 72,
}  # fmt: skip
"""facebook/deit-*-patch16-224's processor (size 256 square, bicubic, crop 224, ImageNet mean/std) at
72 -> 64 px: an int `size` is a square here (DeiT's `default_to_square`), not a shortest edge."""
FT_LABELS = {0: "cat", 1: "dog", 2: "bird", 3: "fish", 4: "horse"}
PIXEL_SUBSET["deit-tiny"] = ["astronaut.jpg", "chelsea_exif6.jpg", "rgba.png", "grey16.png", "wide.jpg", "tall.png"]


def existing_rgbs() -> dict:
    """The fixture images as the reference decodes them, read from tests/fixtures/images as they are."""
    names = json.loads((EXPECTED / "decoded.json").read_text(encoding="utf-8"))
    return {name: reference_rgb(IMAGES / name) for name in sorted(names)}


def make_deit_and_ft() -> None:
    torch.manual_seed(SEED + 10)
    torch.set_num_threads(2)
    rgbs = existing_rgbs()
    labels = build_vit_labels()

    # deit-tiny: DeiTForImageClassificationWithTeacher (class and distillation tokens, two heads,
    # logits = their mean), ImageNet-1k labels like facebook/deit-*-distilled-patch16-224.
    deit_cfg = transformers.DeiTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=64,
        patch_size=16, num_channels=3, id2label=labels, label2id={v: k for k, v in labels.items()},
        architectures=["DeiTForImageClassificationWithTeacher"])  # fmt: skip
    deit = transformers.DeiTForImageClassificationWithTeacher(deit_cfg).eval()
    reinit(deit, SEED + 4)
    with torch.no_grad():
        g = torch.Generator().manual_seed(SEED + 5)
        tok = deit.deit.embeddings.distillation_token
        tok.copy_(torch.randn(tok.shape, generator=g))
        deit.cls_classifier.weight.mul_(VIT_CLASSIFIER_GAIN)
        deit.distillation_classifier.weight.mul_(VIT_CLASSIFIER_GAIN)
    save_model(deit, MODELS / "deit-tiny", DEIT_OLD_PREPROC)
    bin_copy(MODELS / "deit-tiny", MODELS / "deit-tiny-bin")

    # vit-tiny-ft: a ViT fine-tune with five labels of its own, at vit-tiny's input (its pixels).
    ft_cfg = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=224,
        patch_size=16, num_channels=3, id2label=FT_LABELS, label2id={v: k for k, v in FT_LABELS.items()})  # fmt: skip
    ft = transformers.ViTForImageClassification(ft_cfg).eval()
    reinit(ft, SEED + 6)
    save_model(ft, MODELS / "vit-tiny-ft", VIT_OLD_PREPROC)

    deit_cls = transformers.DeiTForImageClassificationWithTeacher
    results = {
        "deit-tiny": run_vit("deit-tiny", MODELS / "deit-tiny", rgbs, False, model_cls=deit_cls),
        "vit-tiny-ft": run_vit("vit-tiny-ft", MODELS / "vit-tiny-ft", rgbs, False, "vit-tiny"),
    }
    results["deit-tiny-bin"] = run_vit("deit-tiny-bin", MODELS / "deit-tiny-bin", rgbs, False, "deit-tiny",
                                       model_cls=deit_cls)  # fmt: skip
    skip = {"model", "model_dir", "weights"}
    a, b = results["deit-tiny"], results["deit-tiny-bin"]
    diff = max_diff({k: v for k, v in a.items() if k not in skip}, {k: v for k, v in b.items() if k not in skip})
    assert diff <= 2e-5, diff
    with torch.no_grad():  # the two heads really are averaged (and differ, so the test would see one alone)
        px = torch.from_numpy(reference_pixels(load_processor(MODELS / "deit-tiny"), rgbs["astronaut.jpg"])[None])
        out = deit(pixel_values=px)
        assert torch.allclose(out.logits, (out.cls_logits + out.distillation_logits) / 2)
        assert (out.cls_logits - out.distillation_logits).abs().max() > 0.1
    for name, res in results.items():
        res["kind"] = "deit" if name.startswith("deit") else "vit"
        write_json(EXPECTED / f"{name}.json", res)
        print(name, "top-1 range:", min(max(e["probs"]) for e in res["images"].values()),
              max(max(e["probs"]) for e in res["images"].values()))  # fmt: skip


# SigLIP and SigLIP 2 (`SiglipModel`, model_type "siglip"): run on their own with `--only siglip`,
# which writes models/siglip-tiny*, models/siglip2-tiny*, expected/siglip*.json and
# expected/pixels/siglip-tiny/ and touches nothing else (the photos are read, not rewritten).

SIGLIP_MAX_LEN = 64
SIGLIP_IMAGES = ["astronaut.jpg", "rgba.png", "chelsea_exif6.jpg", "wide.jpg", "grey16.png"]
SIGLIP_PREPROC = {
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5],
    "processor_class": "SiglipProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"height": 96, "width": 96},
}  # fmt: skip
SIGLIP_TOKENIZER_TEXTS = TOKENIZER_TEXTS + [
    "</s> a literal end token </s>",
    "<unk> and <pad> written out",
    "▁already▁underlined▁text",
    "ΟΔΟΣ Σίσυφος",  # final sigma when lowercased
    "unit\x1fseparator\x1cfile",  # whitespace to Python's re \s, not to Rust's char::is_whitespace
    "non\u00a0breaking\u3000spaces",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ ①②",  # NFKC in the SentencePiece normaliser
    "x" * 300,
    "zqzqzq qqq jjjx",  # pieces the tiny vocabulary lacks
]


def siglip_corpus() -> list[str]:
    """Training text for the fixtures' tokenizers: ImageNet class names and the English test texts
    (no CJK or emoji, so those stay unknown / byte-fallback)."""
    import timm

    info = Path(timm.__file__).parent / "data" / "_info"
    lines = (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
    corpus = [line.split("\t", 1)[1] for line in lines]
    corpus += [TEMPLATE.format(label=lab) for lab in LABELS] + [t for t in TOKENIZER_TEXTS if t.isascii()]
    corpus += [f"a photo of a {lemma.split(',')[0]}." for lemma in corpus[:1000]]
    return corpus


def build_siglip_tokenizer(folder: Path):
    """SigLIP v1 as Google's repositories ship it: a SentencePiece unigram `spiece.model` (trained
    here, tiny: pad 0, eos 1, unk 2, like the real one) and SiglipTokenizer's config files."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(siglip_corpus()), model_writer=buf, vocab_size=700, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        character_coverage=1.0, normalization_rule_name="nmt_nfkc", hard_vocab_limit=False,
        num_threads=1, minloglevel=2,
    )  # fmt: skip
    (folder / "spiece.model").write_bytes(buf.getvalue())
    write_json(folder / "tokenizer_config.json", {
        "added_tokens_decoder": {
            "1": {"content": "</s>", "lstrip": True, "normalized": False, "rstrip": True, "single_word": False, "special": True},
            "2": {"content": "<unk>", "lstrip": True, "normalized": False, "rstrip": True, "single_word": False, "special": True},
        },
        "additional_special_tokens": [], "clean_up_tokenization_spaces": True, "do_lower_case": True,
        "eos_token": "</s>", "model_input_names": ["input_ids"], "model_max_length": SIGLIP_MAX_LEN,
        "pad_token": "</s>", "processor_class": "SiglipProcessor", "sp_model_kwargs": {},
        "tokenizer_class": "SiglipTokenizer", "unk_token": "<unk>",
    })  # fmt: skip
    write_json(folder / "special_tokens_map.json", {
        "eos_token": {"content": "</s>", "lstrip": True, "normalized": False, "rstrip": True, "single_word": False},
        "pad_token": {"content": "</s>", "lstrip": True, "normalized": False, "rstrip": True, "single_word": False},
        "unk_token": {"content": "<unk>", "lstrip": True, "normalized": False, "rstrip": True, "single_word": False},
    })  # fmt: skip
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert type(tok).__name__ == "SiglipTokenizer", type(tok)
    assert tok.pad_token_id == 1 and tok.eos_token_id == 1 and tok.unk_token_id == 2
    return tok


def build_gemma_tokenizer(folder: Path):
    """SigLIP 2 as its fixed-resolution repositories ship it: a Gemma-style `tokenizer.json` (BPE
    with byte fallback, spaces as ▁, `<eos>` appended, no `<bos>`), trained here on a tiny corpus,
    with the GemmaTokenizer config the conversion script writes (right padding, no attention mask)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.normalizer = normalizers.Replace(" ", "▁")
    draft.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    draft.train_from_iterator(siglip_corpus(), trainers.BpeTrainer(vocab_size=400, special_tokens=[], show_progress=False))
    learned = json.loads(draft.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>", pair="$A <eos> $B <eos>",
                                                       special_tokens=[("<eos>", 1)])  # fmt: skip
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    tok.save(str(folder / "tokenizer.json"), pretty=False)
    write_json(folder / "tokenizer_config.json", {
        "add_bos_token": False, "add_eos_token": True, "bos_token": "<bos>", "clean_up_tokenization_spaces": False,
        "eos_token": "<eos>", "mask_token": "<mask>", "model_input_names": ["input_ids"],
        "model_max_length": 1000000000000000019884624838656, "pad_token": "<pad>", "padding_side": "right",
        "processor_class": "SiglipProcessor", "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer", "unk_token": "<unk>", "use_default_system_prompt": False,
    })  # fmt: skip
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert hf.pad_token_id == 0 and hf.eos_token_id == 1, (hf.pad_token_id, hf.eos_token_id)
    return hf


def siglip_tokenizer_cases(tok) -> list[dict]:
    cases = []
    for text in SIGLIP_TOKENIZER_TEXTS:
        enc = tok(text, padding="max_length", truncation=True, max_length=SIGLIP_MAX_LEN)
        assert "attention_mask" not in enc, "the fixture tokenizers return input_ids only, as the real ones"
        cases.append({"text": text, "ids": enc["input_ids"]})
    assert all(len(c["ids"]) == SIGLIP_MAX_LEN for c in cases)
    return cases


def siglip_model(text: dict, vision: dict, seed: int, scale: float, bias: float):
    cfg = transformers.SiglipConfig(
        text_config=dict(max_position_embeddings=SIGLIP_MAX_LEN, num_hidden_layers=2, **text),
        vision_config=dict(num_channels=3, num_hidden_layers=2, **vision))  # fmt: skip
    model = transformers.SiglipModel(cfg).eval()
    reinit(model, seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        head = model.vision_model.head
        head.probe.copy_(torch.randn(head.probe.shape, generator=g))
        d = head.attention.in_proj_weight.shape[1]
        head.attention.in_proj_weight.copy_(torch.randn(head.attention.in_proj_weight.shape, generator=g) / math.sqrt(d))
        head.attention.in_proj_bias.copy_(torch.randn(head.attention.in_proj_bias.shape, generator=g) * 0.1)
        model.logit_scale.fill_(math.log(scale))
        model.logit_bias.fill_(bias)
    return model


@torch.no_grad()
def run_siglip(name: str, folder: Path, tok, rgbs: dict, pixel_name: str | None = None) -> dict:
    model = transformers.SiglipModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    proc = load_processor(folder)
    rgbs = {k: rgbs[k] for k in SIGLIP_IMAGES}
    if pixel_name is None:
        arrays, paths = preprocess_all(name, proc, rgbs, all_pixels=True)
    else:
        arrays, paths = pixels_for(name, proc, rgbs, False, pixel_name)

    def ids_of(prompts):
        return tok(prompts, padding="max_length", truncation=True, max_length=SIGLIP_MAX_LEN, return_tensors="pt")

    def embed_texts(prompts):
        e = model.text_model(input_ids=ids_of(prompts)["input_ids"]).pooler_output
        return e / e.norm(dim=-1, keepdim=True)

    def image_embeds(px: np.ndarray):
        e = model.vision_model(pixel_values=torch.from_numpy(px)).pooler_output
        return e / e.norm(dim=-1, keepdim=True)

    prompts = [TEMPLATE.format(label=lab) for lab in LABELS]
    enc = ids_of(prompts)
    text = embed_texts(prompts)
    for i, p in enumerate(prompts):  # each prompt alone: the same (every row is padded to 64 anyway)
        assert torch.allclose(embed_texts([p])[0], text[i], atol=1e-6)
    scale, bias = model.logit_scale.exp().item(), model.logit_bias.item()
    clf = transformers.pipeline("zero-shot-image-classification", model=model, tokenizer=tok, image_processor=proc)
    images = {}
    for img, px in arrays.items():
        emb = image_embeds(px[None])
        logits = scale * emb @ text.T + bias
        ref = model(input_ids=enc["input_ids"], pixel_values=torch.from_numpy(px[None]))
        assert torch.allclose(ref.logits_per_image, logits, atol=1e-5), (img, ref.logits_per_image, logits)
        probs = torch.sigmoid(ref.logits_per_image)[0]
        # What transformers' zero-shot pipeline answers (sigmoid scores, sorted): the reference.
        answer = {r["label"]: r["score"] for r in clf(rgbs[img], candidate_labels=LABELS,
                                                       hypothesis_template=TEMPLATE.replace("{label}", "{}"))}  # fmt: skip
        pipe = torch.tensor([answer[lab] for lab in LABELS])
        assert torch.allclose(pipe, probs, atol=1e-6), (img, pipe, probs)
        images[img] = {"pixel_values": paths[img], "image_embeds": r9(emb[0]), "logits": r9(logits[0]),
                       "probs": r9(pipe)}  # fmt: skip
    batch_px = np.stack([arrays[b] for b in BATCH])
    batch_probs = torch.sigmoid(scale * image_embeds(batch_px) @ text.T + bias)
    ens_text = []
    for lab in LABELS:
        e = embed_texts([t.format(label=lab) for t in ENSEMBLE_TEMPLATES]).mean(0)
        ens_text.append(e / e.norm())
    ens_text = torch.stack(ens_text)
    # With an attention mask over the padding (not what the real tokenizers return: kept to test
    # that the mask is honoured when a tokenizer_config asks for one).
    masked_enc = tok(prompts, padding="max_length", truncation=True, max_length=SIGLIP_MAX_LEN,
                     return_attention_mask=True, return_tensors="pt")  # fmt: skip
    masked = model.text_model(input_ids=masked_enc["input_ids"], attention_mask=masked_enc["attention_mask"]).pooler_output
    masked = masked / masked.norm(dim=-1, keepdim=True)
    return {
        **common_meta(name, "siglip", proc, folder),
        "tokenizer": type(tok).__name__, "pad_token_id": tok.pad_token_id, "max_length": SIGLIP_MAX_LEN,
        "labels": LABELS, "template": TEMPLATE, "prompts": prompts,
        "input_ids": enc["input_ids"].tolist(), "text_embeds": r9(text),
        "logit_scale": r9(model.logit_scale.item()), "logit_scale_exp": r9(scale), "logit_bias": r9(bias),
        "logits_note": "logits = logit_scale_exp * (image_embeds . text_embeds) + logit_bias = SiglipModel "
                       "logits_per_image; probs = sigmoid(logits), as the zero-shot-image-classification pipeline "
                       "answers them (asserted equal to its scores); they do not sum to 1",
        "images": images,
        "batch": {"images": BATCH, "probs": r9(batch_probs)},
        "ensemble": {"templates": ENSEMBLE_TEMPLATES, "text_embeds": r9(ens_text),
                     "probs": {img: r9(torch.sigmoid(scale * image_embeds(arrays[img][None]) @ ens_text.T + bias)[0])
                               for img in BATCH}},
        "masked_text": {"note": "text_model(input_ids, attention_mask) with the tokenizer's own attention_mask (0 on padding), L2-normalised",
                        "text_embeds": r9(masked)},
        "tokenizer_cases": siglip_tokenizer_cases(tok),
    }  # fmt: skip


def siglip_main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    rgbs = {name: reference_rgb(IMAGES / name) for name in SIGLIP_IMAGES}
    results = {}

    v1 = MODELS / "siglip-tiny"
    if v1.exists():
        shutil.rmtree(v1)
    tok = build_siglip_tokenizer(v1)
    model = siglip_model(
        dict(vocab_size=tok.vocab_size, hidden_size=24, intermediate_size=48, num_attention_heads=4,
             projection_size=32, pad_token_id=1, eos_token_id=1, bos_token_id=None),
        dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, image_size=96, patch_size=16),
        SEED + 11, scale=20.0, bias=3.0)  # fmt: skip
    model.save_pretrained(str(v1))
    write_json(v1 / "preprocessor_config.json", SIGLIP_PREPROC)
    bin_copy(v1, MODELS / "siglip-tiny-bin")
    results["siglip-tiny"] = run_siglip("siglip-tiny", v1, tok, rgbs)
    results["siglip-tiny-bin"] = run_siglip("siglip-tiny-bin", MODELS / "siglip-tiny-bin", tok, rgbs, "siglip-tiny")

    v2 = MODELS / "siglip2-tiny"
    if v2.exists():
        shutil.rmtree(v2)
    tok2 = build_gemma_tokenizer(v2)
    model2 = siglip_model(
        dict(vocab_size=len(tok2), hidden_size=48, intermediate_size=96, num_attention_heads=4,
             projection_size=48, pad_token_id=0, eos_token_id=1, bos_token_id=2),
        dict(hidden_size=48, intermediate_size=96, num_attention_heads=4, image_size=64, patch_size=16),
        SEED + 12, scale=15.0, bias=-1.0)  # fmt: skip
    model2.save_pretrained(str(v2))
    write_json(v2 / "preprocessor_config.json", {**SIGLIP_PREPROC, "size": {"height": 64, "width": 64}})
    bin_copy(v2, MODELS / "siglip2-tiny-bin")
    results["siglip2-tiny"] = run_siglip("siglip2-tiny", v2, tok2, rgbs)
    results["siglip2-tiny-bin"] = run_siglip("siglip2-tiny-bin", MODELS / "siglip2-tiny-bin", tok2, rgbs, "siglip2-tiny")

    skip = {"model", "model_dir", "weights"}
    for twin in ("siglip-tiny", "siglip2-tiny"):  # the .bin twins must give the same outputs
        a, b = results[twin], results[twin + "-bin"]
        diff = max_diff({k: v for k, v in a.items() if k not in skip}, {k: v for k, v in b.items() if k not in skip})
        assert diff <= 2e-5, (twin, diff)
    for name, res in results.items():
        write_json(EXPECTED / f"{name}.json", res)
        probs = [p for e in res["images"].values() for p in e["probs"]]
        print(f"{name}: probs from {min(probs):.3g} to {max(probs):.3g}")


# CLIP at other sizes and sources (issue 23): `--only clip-variants` writes models/clip-tiny-l14-336
# and models/clip-tiny-laion, their expected/*.json and expected/pixels/, and nothing else. Both
# share clip-tiny's 1.7 MB tokenizer.json through a relative symlink (it is the same openai BPE
# vocabulary); their weights are stored in half precision (fp16, bf16) to keep each under 0.5 MB,
# since CLIP's 49408-row token embedding dominates. transformers reads them back as float32.

CLIP_L14_336_PREPROC = {**CLIP_OLD_PREPROC, "crop_size": 56, "size": 56}
"""openai/clip-vit-large-patch14-336's old-style CLIPFeatureExtractor config (int size = shortest
edge, crop 336) at 56 px."""
CLIP_LAION_PREPROC = {**CLIP_B16_PREPROC, "crop_size": {"height": 42, "width": 42}, "size": {"shortest_edge": 42}}
"""A new-style CLIPImageProcessor config (as converted OpenCLIP checkpoints are saved today) at 42 px."""
PIXEL_SUBSET["clip-tiny-l14-336"] = list(BATCH)
PIXEL_SUBSET["clip-tiny-laion"] = list(BATCH)
CLIP_VARIANT_EPS = {"text": 1e-3, "vision": 1e-2}


def shared_clip_tokenizer(folder: Path, config_overrides: dict | None = None):
    """Point `folder/tokenizer.json` at clip-tiny's (a relative symlink) and write the folder's own
    tokenizer_config.json (clip-tiny's, with `config_overrides`); returns the loaded tokenizer."""
    src = MODELS / "clip-tiny"
    link_clip_tokenizer(folder)
    cfg = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg.update(config_overrides or {})
    write_json(folder / "tokenizer_config.json", cfg)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), model_max_length=MAX_LEN)
    assert tok("a photo of a cat.")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    return tok


def link_clip_tokenizer(folder: Path) -> None:
    """Make `folder/tokenizer.json` a relative symlink to clip-tiny's (replacing an identical copy):
    every CLIP fixture has the same openai BPE tokenizer, 1.7 MB each."""
    link, target = folder / "tokenizer.json", MODELS / "clip-tiny" / "tokenizer.json"
    if link.exists() or link.is_symlink():
        assert link.read_bytes() == target.read_bytes(), link
        link.unlink()
    link.symlink_to(Path("..") / "clip-tiny" / "tokenizer.json")


def save_half(model, folder: Path, dtype: torch.dtype, preproc: dict) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    model.to(dtype).save_pretrained(str(folder))
    from safetensors import safe_open

    want = {torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert all(f.get_slice(k).get_dtype() == want for k in f.keys())
    write_json(folder / "preprocessor_config.json", preproc)


@torch.no_grad()
def eps_sensitivity(folder: Path, tok, rgbs: dict) -> float:
    """How far the probabilities move if layer_norm_eps were read as transformers' default 1e-5."""
    proc = load_processor(folder)
    enc = tok([TEMPLATE.format(label=lab) for lab in LABELS], padding=True, return_tensors="pt")
    model = transformers.CLIPModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    worst = 0.0
    for img in BATCH:
        px = torch.from_numpy(reference_pixels(proc, rgbs[img])[None])
        p0 = model(**enc, pixel_values=px).logits_per_image.softmax(-1)
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.eps, mod.saved_eps = 1e-5, mod.eps
        p1 = model(**enc, pixel_values=px).logits_per_image.softmax(-1)
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.eps = mod.saved_eps
        worst = max(worst, (p1 - p0).abs().max().item())
    return worst


def make_clip_variants() -> None:
    torch.manual_seed(SEED + 20)
    torch.set_num_threads(2)
    rgbs = existing_rgbs()
    results = {}

    # clip-tiny-l14-336: openai/clip-vit-large-patch14-336 scaled down: patch 14 at 56 px (16
    # patches), quick_gelu, text and vision widths that differ and a projection unlike both.
    folder = MODELS / "clip-tiny-l14-336"
    l14 = transformers.CLIPModel(clip_config(
        dict(hidden_size=4, intermediate_size=16, num_attention_heads=2, hidden_act="quick_gelu"),
        dict(hidden_size=24, intermediate_size=96, num_attention_heads=4, image_size=56, patch_size=14,
             hidden_act="quick_gelu"), projection_dim=12)).eval()  # fmt: skip
    reinit(l14, SEED + 21)
    with torch.no_grad():
        l14.logit_scale.fill_(math.log(100.0))
    save_half(l14, folder, torch.float16, CLIP_L14_336_PREPROC)
    tok = shared_clip_tokenizer(folder)
    results["clip-tiny-l14-336"] = run_clip("clip-tiny-l14-336", folder, tok, rgbs, all_pixels=False)

    # clip-tiny-laion: an OpenCLIP checkpoint (laion/CLIP-ViT-H-14-laion2B-s32B-b79K) converted to
    # CLIPModel: gelu, its own layer_norm_eps (non-default here, so reading it matters), its own
    # projection size, the legacy eos_token_id 2 of 2022 conversions and open_clip's pad token "!".
    folder = MODELS / "clip-tiny-laion"
    laion_cfg = clip_config(
        dict(hidden_size=4, intermediate_size=16, num_attention_heads=2, hidden_act="gelu",
             layer_norm_eps=CLIP_VARIANT_EPS["text"], bos_token_id=0, eos_token_id=2, pad_token_id=1),
        dict(hidden_size=20, intermediate_size=80, num_attention_heads=4, image_size=42, patch_size=14,
             hidden_act="gelu", layer_norm_eps=CLIP_VARIANT_EPS["vision"]), projection_dim=10)  # fmt: skip
    laion = transformers.CLIPModel(laion_cfg).eval()
    reinit(laion, SEED + 23)  # + 22 gave near-flat probabilities (top 0.18 of 6)
    with torch.no_grad():
        laion.logit_scale.fill_(math.log(100.0))  # OpenCLIP's clamp, where trained scales end
    save_half(laion, folder, torch.bfloat16, CLIP_LAION_PREPROC)
    tok_laion = shared_clip_tokenizer(folder, {"pad_token": "!"})
    assert tok_laion.pad_token_id == 0
    results["clip-tiny-laion"] = run_clip("clip-tiny-laion", folder, tok_laion, rgbs, all_pixels=False)

    for name, res in results.items():
        folder = MODELS / name
        t = tok_laion if name == "clip-tiny-laion" else tok
        res["sensitivity"] = sensitivity("clip", folder, t, rgbs)
        if name == "clip-tiny-laion":
            res["sensitivity"]["layer_norm_eps_as_default"] = r9(eps_sensitivity(folder, t, rgbs))
            assert res["sensitivity"]["layer_norm_eps_as_default"] > 1e-3, res["sensitivity"]
        write_json(EXPECTED / f"{name}.json", res)
        print(name, "sensitivity (max |dprob|):", res["sensitivity"])


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["deit", "siglip", "clip-variants"],
                        help="build only this family's fixtures (the rest stay as they are): deit = deit-tiny, "
                             "deit-tiny-bin and vit-tiny-ft; siglip = siglip-tiny, siglip-tiny-bin, siglip2-tiny and "
                             "siglip2-tiny-bin; clip-variants = clip-tiny-l14-336 and clip-tiny-laion")
    only = parser.parse_args().only
    if only == "deit":
        make_deit_and_ft()
    elif only == "siglip":
        siglip_main()
    elif only == "clip-variants":
        make_clip_variants()
    else:
        main()
        make_deit_and_ft()
        siglip_main()
        make_clip_variants()
