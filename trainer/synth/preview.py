"""PNG montage of a study (axial and coronal slices, label outlines, report text) so a person can judge realism."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _window(a: np.ndarray, lo: float = -160, hi: float = 240) -> np.ndarray:
    return (np.clip((a - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _overlay(gray: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Grey image with coloured label boundaries (boundaries keep the CT texture visible)."""
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)
    edge = np.zeros(lab.shape, dtype=bool)
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge &= lab > 0
    palette = (np.stack([(np.arange(256) * 67) % 256, (np.arange(256) * 131) % 256, (np.arange(256) * 197) % 256],
                        axis=1)).astype(np.uint8)
    rgb[edge] = palette[lab[edge]]
    return rgb


def write_preview(path: str | Path, hu: np.ndarray, labels: np.ndarray, spacing, text: str,
                  title: str = "") -> Path:
    from PIL import Image, ImageDraw

    nz, ny, nx = hu.shape
    tile_w = 384
    th = int(round(tile_w * ny * spacing[1] / (nx * spacing[2])))
    rows = []
    for fz in (0.25, 0.45, 0.62, 0.8):  # axial: pelvis .. chest (axis 0 runs inferior -> superior)
        k = int(fz * (nz - 1))
        win = (-1000, 400) if fz > 0.7 else (-160, 240)
        pair = [Image.fromarray(_overlay(_window(hu[k], *win), labels[k] * 0)).resize((tile_w, th)),
                Image.fromarray(_overlay(_window(hu[k], *win), labels[k])).resize((tile_w, th))]
        rows.append(np.concatenate([np.asarray(t) for t in pair], axis=1))
    axial = np.concatenate(rows, axis=0)
    j = int(0.55 * (ny - 1))
    ch = int(round(tile_w * nz * spacing[0] / (nx * spacing[2])))
    cor = [Image.fromarray(_overlay(_window(hu[::-1, j, :]), labels[::-1, j, :] * 0)).resize((tile_w, ch)),
           Image.fromarray(_overlay(_window(hu[::-1, j, :], -1000, 400), labels[::-1, j, :])).resize((tile_w, ch))]
    coronal = np.concatenate([np.asarray(t) for t in cor], axis=1)
    height = max(axial.shape[0], coronal.shape[0] + 700)
    canvas = Image.new("RGB", (axial.shape[1] + coronal.shape[1], height), "black")
    canvas.paste(Image.fromarray(axial), (0, 0))
    canvas.paste(Image.fromarray(coronal), (axial.shape[1], 0))
    draw = ImageDraw.Draw(canvas)
    lines = [title] if title else []
    for para in text.splitlines():
        while len(para) > 110:
            cut = para.rfind(" ", 0, 110)
            cut = cut if cut > 0 else 110
            lines.append(para[:cut]); para = para[cut:].lstrip()
        lines.append(para)
    draw.multiline_text((axial.shape[1] + 8, coronal.shape[0] + 8), "\n".join(lines[:60]), fill="white")
    path = Path(path)
    canvas.save(path)
    return path
