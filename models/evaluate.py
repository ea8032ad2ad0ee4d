"""Evaluate a registered lung model: Dice on a real CT and on held-out synthetic phantoms.

    .venv/bin/python -m models.evaluate [--name lung-seg] [--version V] [--registry models]
        [--phantoms 6] [--out evaluation.json]

Real CT: ``../shared/data/totalsegmentator/example_ct_sm.nii.gz`` (lung bases, 3 mm) against
the lung lobes of ``example_seg.nii.gz`` (labels 10, 11 left; 13, 14 right). Phantoms: seeds
from train.HELD_OUT_SEED on, never rendered for training. Prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from inference.registry import ModelRegistry
from inference.segmentation import LEFT_LUNG, RIGHT_LUNG, LungSegmenter
from models.training import phantom

ROOT = Path(__file__).resolve().parents[1]

DATA = ROOT.parent / "shared" / "data" / "totalsegmentator"
REAL_CT = DATA / "example_ct_sm.nii.gz"
REAL_SEG = DATA / "example_seg.nii.gz"
LEFT_LOBES, RIGHT_LOBES = (10, 11), (13, 14)
HELD_OUT_SEED = 1_000_000  # train.HELD_OUT_SEED (train.py needs torch; not imported here)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def scores(pred: np.ndarray, right: np.ndarray, left: np.ndarray, voxel_ml: float) -> dict:
    return {
        "dice_lungs": round(dice(pred > 0, right | left), 4),
        "dice_right": round(dice(pred == RIGHT_LUNG, right), 4),
        "dice_left": round(dice(pred == LEFT_LUNG, left), 4),
        "volume_ml": round(float((pred > 0).sum() * voxel_ml), 1),
        "reference_volume_ml": round(float((right | left).sum() * voxel_ml), 1),
    }


def evaluate_real(segmenter: LungSegmenter) -> dict:
    """Dice on the TotalSegmentator example CT (the model never saw it)."""
    ct = sitk.ReadImage(str(REAL_CT))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL_SEG)))
    t0 = time.perf_counter()
    pred = sitk.GetArrayFromImage(segmenter.segment(ct))
    seconds = time.perf_counter() - t0
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000
    out = scores(pred, np.isin(ref, RIGHT_LOBES), np.isin(ref, LEFT_LOBES), voxel_ml)
    return out | {"ct": REAL_CT.name, "seconds": round(seconds, 2)}


def phantom_image(seed: int) -> tuple[sitk.Image, np.ndarray]:
    """Held-out phantom as an LPS SimpleITK image (3 mm) and its label array."""
    hu, label, _ = phantom.random_volume(seed)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((3.0, 3.0, 3.0))
    image.SetOrigin((-190.5, -190.5, 0.0))
    return image, label


def evaluate_phantoms(segmenter: LungSegmenter, count: int) -> dict:
    """Mean and minimum Dice over ``count`` held-out phantoms (whole pipeline, post-processed)."""
    rows = []
    for k in range(count):
        image, label = phantom_image(HELD_OUT_SEED + k)
        pred = sitk.GetArrayFromImage(segmenter.segment(image))
        rows.append(scores(pred, label == RIGHT_LUNG, label == LEFT_LUNG, 0.027))
    keys = ("dice_lungs", "dice_right", "dice_left")
    return {
        "count": count,
        "seeds": f"{HELD_OUT_SEED}..{HELD_OUT_SEED + count - 1}",
        **{f"mean_{k}": round(float(np.mean([r[k] for r in rows])), 4) for k in keys},
        **{f"min_{k}": round(float(np.min([r[k] for r in rows])), 4) for k in keys},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Evaluate a registered lung model.")
    ap.add_argument("--name", default="lung-seg")
    ap.add_argument("--version")
    ap.add_argument("--registry", type=Path, default=ROOT / "models")
    ap.add_argument("--phantoms", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    segmenter = LungSegmenter(
        ModelRegistry(args.registry, threads=args.threads), args.name, args.version
    )
    result = {
        "real_ct": evaluate_real(segmenter),
        "synthetic_held_out": evaluate_phantoms(segmenter, args.phantoms),
        "threads": args.threads,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
