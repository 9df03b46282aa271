#!/usr/bin/env python3
"""Base files for the hostile-upload tests (crates/glimpse/tests/cli/hostile.rs).

Writes tests/fixtures/hostile/flat_progressive.jpg: a flat-grey 4000x3000 progressive JPEG as
Pillow (libjpeg-turbo) writes it. The test makes the attack from it at run time by repeating its
last luma AC refinement scan (Ss=1, Se=63, Ah=2, Al=1; 65 bytes) hundreds of times: libjpeg only
warns about the bogus progression and decodes every copy, a pass over all 187 500 luma blocks
each (about 10 ms of CPU per copy at 12 MP), so a 40 KB file costs seconds of CPU.

Run with the project's venv:  /opt/gvenv/bin/python tools/make_hostile_fixtures.py
"""
import pathlib

from PIL import Image

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hostile"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (4000, 3000), (120, 130, 140))
    path = OUT / "flat_progressive.jpg"
    im.save(path, "JPEG", quality=75, progressive=True)
    print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
