"""Lung segmentation time for a 512 x 512 x 300 chest CT (shipped model, per stage).

    .venv/bin/python bench/lung_segmentation.py [--threads 2] [--repeat 3]

The CT is a synthetic phantom (models/training/phantom.py) rendered at 3 mm and resampled to
0.75 x 0.75 x 1 mm, int16 HU, so that the input has the size of a real thin-slice chest CT.
Prints the median seconds of pre_process, predict and post_process, and peak memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.registry import ModelRegistry  # noqa: E402
from inference.segmentation import LungSegmenter  # noqa: E402
from models.training import phantom  # noqa: E402


def chest_ct() -> sitk.Image:
    rng = np.random.default_rng(42)
    anat = phantom.random_anatomy(rng)
    hu, _ = phantom.render(anat, (100, 128, 128), (3.0, 3.0, 3.0), anat.dome_r - 90, rng, (1, 1))
    coarse = sitk.GetImageFromArray(hu)
    coarse.SetSpacing((3.0, 3.0, 3.0))
    coarse.SetOrigin((-190.5, -190.5, 0.0))
    fine = sitk.Resample(
        coarse,
        [512, 512, 300],
        sitk.Transform(),
        sitk.sitkLinear,
        (-191.625, -191.625, 0.0),
        (0.75, 0.75, 1.0),
        coarse.GetDirection(),
        -1024.0,
        sitk.sitkInt16,
    )
    return fine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    volume = chest_ct()
    segmenter = LungSegmenter(ModelRegistry(threads=args.threads))
    times: dict[str, list[float]] = {"pre_process": [], "predict": [], "post_process": []}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        prepared = segmenter.pre_process(volume)
        t1 = time.perf_counter()
        probability = segmenter.predict(prepared)
        t2 = time.perf_counter()
        labels = segmenter.post_process(probability, prepared)
        t3 = time.perf_counter()
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            times[key].append(value)
    lung_ml = sitk.GetArrayViewFromImage(labels).astype(bool).sum() * 0.75 * 0.75 / 1000
    total = sum(statistics.median(v) for v in times.values())
    print(f"machine: {platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"model {segmenter.manifest.name} {segmenter.manifest.version}, threads {args.threads}")
    print(f"input {volume.GetSize()} int16, lungs found {lung_ml:.0f} mL")
    for key, values in times.items():
        print(f"{key:>13}: {statistics.median(values):.2f} s (median of {len(values)})")
    print(f"{'total':>13}: {total:.2f} s")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
