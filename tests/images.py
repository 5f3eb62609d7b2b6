"""Small image-folder trees written on the fly (no dataset can be downloaded in tests)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 40, seed: int = 0) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.jpg``: each class a different mean
    colour plus noise, so a model can learn something from a few images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n, ext in (("train", per_class, "png"), ("val", max(2, per_class // 2), "jpg")):
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            colour = np.array([60 + 60 * c, 200 - 50 * c, 40 + 90 * (c % 2)])
            for i in range(n):
                img = np.clip(colour + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.{ext}")
    return root
