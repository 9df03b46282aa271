#!/usr/bin/env python3
"""Write a CLIP ViT-B/32 folder with random weights at the real sizes, for tools/bench/http_load.sh.

    python3 tools/bench/make_random_clip.py OUT_DIR
    python3 tools/bench/make_random_clip.py --vit OUT_DIR   # ViT-B/16 classifier instead

`transformers` `CLIPModel(CLIPConfig())` (its defaults are ViT-B/32) saved with `save_pretrained`,
the tokenizer files of tests/fixtures/models/clip-tiny (the real CLIP vocabulary) and the real
B/32 preprocessor config. Speed does not depend on weight values. Needs torch + transformers
(tools/bench/requirements.txt; compare.py's venv has them).
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

ROOT = Path(__file__).resolve().parent.parent.parent


def vit(out):
    """ViTForImageClassification(ViTConfig()) (ViT-B/16 at 224) with the ImageNet-1k labels and
    preprocessor config of tests/fixtures/models/vit-tiny (google/vit-base-patch16-224's)."""
    from transformers import ViTConfig, ViTForImageClassification

    tiny = ROOT / "tests/fixtures/models/vit-tiny"
    labels = json.loads((tiny / "config.json").read_text())["id2label"]
    cfg = ViTConfig(id2label={int(k): v for k, v in labels.items()},
                    label2id={v: int(k) for k, v in labels.items()})
    ViTForImageClassification(cfg).save_pretrained(out)
    shutil.copy(tiny / "preprocessor_config.json", out / "preprocessor_config.json")
    print(out)


def main():
    args = sys.argv[1:]
    as_vit = "--vit" in args
    out = Path([a for a in args if a != "--vit"][0])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if as_vit:
        return vit(out)
    CLIPModel(CLIPConfig()).save_pretrained(out)
    tiny = ROOT / "tests/fixtures/models/clip-tiny"
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(tiny / f, out / f)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": 224}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    }, indent=2))
    print(out)


if __name__ == "__main__":
    main()
