"""Lung segmentation time for a 512 x 512 x 300 chest CT (shipped model, per stage).

    .venv/bin/python -m bench.lung_segmentation [--threads 2] [--repeat 3]

The CT is a synthetic phantom (models/training/phantom.py) rendered at 3 mm and resampled to
0.75 x 0.75 x 1 mm, int16 HU, so that the input has the size of a real thin-slice chest CT.
Prints the median seconds of pre_process, predict and post_process and peak memory, and writes
them with the model's evaluation figures (from its manifest) into docs/performance.md, section
*Lung segmentation model* (``--no-write`` to leave the file alone).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from bench.report import write_section
from inference.registry import ModelRegistry
from inference.segmentation import LungSegmenter
from models.training import phantom

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- bench/lung_segmentation.py: begin (generated, do not edit by hand) -->"
END = "<!-- bench/lung_segmentation.py: end -->"


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
    ap.add_argument("--no-write", action="store_true", help="do not touch docs/performance.md")
    args = ap.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    volume = chest_ct()
    segmenter = LungSegmenter(ModelRegistry(threads=args.threads))
    times: dict[str, list[float]] = {"pre_process": [], "predict": [], "post_process": []}
    cpu: dict[str, list[float]] = {key: [] for key in times}
    for _ in range(args.repeat):
        marks = [(time.perf_counter(), time.process_time())]
        prepared = segmenter.pre_process(volume)
        marks.append((time.perf_counter(), time.process_time()))
        probability = segmenter.predict(prepared)
        marks.append((time.perf_counter(), time.process_time()))
        labels = segmenter.post_process(probability, prepared)
        marks.append((time.perf_counter(), time.process_time()))
        for i, key in enumerate(times):
            times[key].append(marks[i + 1][0] - marks[i][0])
            cpu[key].append(marks[i + 1][1] - marks[i][1])
    lung_ml = sitk.GetArrayViewFromImage(labels).astype(bool).sum() * 0.75 * 0.75 / 1000
    medians = {key: statistics.median(values) for key, values in times.items()}
    cpu_medians = {key: statistics.median(values) for key, values in cpu.items()}
    total = sum(medians.values())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load = os.getloadavg()[0]
    for key, value in medians.items():
        print(f"{key:>13}: {value:.2f} s wall, {cpu_medians[key]:.2f} s CPU (median)")
    print(f"{'total':>13}: {total:.2f} s, peak RSS {peak_mib:.0f} MiB, lungs {lung_ml:.0f} mL")
    if not args.no_write:
        write_section(BEGIN, END, section(segmenter, medians, cpu_medians, peak_mib, load, args))
    return 0


def section(
    segmenter: LungSegmenter,
    medians: dict[str, float],
    cpu_medians: dict[str, float],
    peak_mib: float,
    load: float,
    args: argparse.Namespace,
) -> str:
    m = segmenter.manifest
    ev = m.evaluation
    real, synth, run = ev["real_ct"], ev["synthetic_held_out"], ev["training"]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = "\n".join(f"| {k} | {v:.2f} | {cpu_medians[k]:.2f} |" for k, v in medians.items())
    total, total_cpu = sum(medians.values()), sum(cpu_medians.values())
    keys = ("dice_lungs", "dice_right", "dice_left")
    size_mb = (ROOT / "models" / m.name / m.version / "model.onnx").stat().st_size / 1e6
    table = "\n".join(
        [
            f"| real CT `{real['ct']}` (lung bases, {real['reference_volume_ml']} mL) | "
            + " | ".join(str(real[k]) for k in keys)
            + " |",
            f"| {synth['count']} held-out synthetic phantoms, mean (min) | "
            + " | ".join(f"{synth['mean_' + k]} ({synth['min_' + k]})" for k in keys)
            + " |",
        ]
    )
    return f"""{BEGIN}
## Lung segmentation model (`bench/lung_segmentation.py`)

Model `{m.name} {m.version}` ([model card](../models/lung-seg/MODEL_CARD.md)): 2D U-Net,
2.5D input at 3 mm, ONNX {size_mb:.1f} MB.

Accuracy (`models/evaluate.py`, figures from the manifest):

| data | Dice both lungs | right | left |
|---|---|---|---|
{table}

Training: {run["samples_rendered"]} synthetic samples rendered in {run["render_s"]} s and
{run["steps_done"]} steps in {run["train_s"]} s on {run["gpu"] or "CPU"} ({run["cpus"]} CPU
cores), torch {run["torch"]}.

Inference, measured {now} with `python -m bench.lung_segmentation --threads {args.threads}` on
{platform.node()} ({os.cpu_count()} CPUs, load average {load:.1f} at the end: the machine was
shared), a 512 x 512 x 300 int16 CT (0.75 x 0.75 x 1 mm), onnxruntime CPU, median of
{args.repeat} runs; peak RSS of the process {peak_mib:.0f} MiB:

| stage | wall s | CPU s (all threads) |
|---|---|---|
{rows}
| **total** | **{total:.2f}** | **{total_cpu:.2f}** |

On a shared machine the wall time counts the waits for a core; the CPU seconds are the work,
which on two idle cores takes about half of it in wall time for the parallel stages.
{END}"""


if __name__ == "__main__":
    raise SystemExit(main())
