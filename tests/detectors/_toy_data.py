"""Tiny drawn images with exact masks, for detector tests (no files, deterministic)."""

from __future__ import annotations

import torch

from instaseg.structures.instances import Targets


def toy_scene(seed: int, size: int = 96) -> tuple[torch.Tensor, Targets]:
    """An RGB image in [0, 255] with 2-3 objects: class 0 discs, class 1 squares, class 2 rings."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, size, size, generator=g) * 40 + 20
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    masks, labels = [], []
    occupied = torch.zeros(size, size, dtype=torch.bool)
    count = 2 + int(torch.randint(0, 2, (1,), generator=g))
    for k in range(count):
        for _ in range(20):
            label = int(torch.randint(0, 3, (1,), generator=g))
            r = float(torch.empty(1).uniform_(size * 0.12, size * 0.22, generator=g))
            cx, cy = (float(v) for v in torch.empty(2).uniform_(r + 1, size - r - 1, generator=g))
            if label == 0:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            elif label == 1:
                mask = ((xx - cx).abs() <= r) & ((yy - cy).abs() <= r)
            else:
                d2 = (xx - cx) ** 2 + (yy - cy) ** 2
                mask = (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
            if not (mask & occupied).any():
                break
        else:
            continue
        occupied |= mask
        colour = torch.tensor([[200.0, 60.0, 60.0], [60.0, 200.0, 60.0], [60.0, 60.0, 220.0]][label])
        image[:, mask] = colour[:, None]
        masks.append(mask)
        labels.append(label)
    masks_t = torch.stack(masks)
    boxes = []
    for m in masks_t:
        ys, xs = torch.where(m)
        boxes.append([float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1])
    return image, Targets(torch.tensor(boxes), torch.tensor(labels), masks_t)
