"""Train the lung segmentation model on synthetic phantoms and export it to ONNX.

2D U-Net (the UNet-Small layout of inference/byo_unet.py: 16-32-64 channels, middle 128) on
2.5D input: 3 adjacent axial slices resampled to 3 mm isotropic, LPS orientation, HU clipped
to [-1024, 1024] and divided by 512 -> probability of lung for the middle slice.

Seeded and reproducible: sample i is rendered from seed (SEED, i) whatever the worker count;
torch is seeded and runs deterministic algorithms on CPU. Two phases: render N samples in a
process pool (each phantom slab of SLAB slices, 2 x 2 x 2 sub-voxels for partial volume, gives
SLAB - 2 samples), then train for S steps with random affine, noise and intensity
augmentation on the device. Held-out phantoms (seeds from 1_000_000 on) are never
rendered for training.

    python -m models.training.train --out /tmp/lung-seg --samples 16000 --steps 3000

Writes ``model.onnx`` (built with inference.byo_unet from the trained state dict),
``weights.npz`` and ``training.json`` (configuration, losses, timings, versions) into --out;
models/training/package.py turns that into a registry entry with manifest and model card.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inference.byo_unet import build_unet_onnx
from models.training import phantom

SPACING = 3.0
SIZE = 128
CONTEXT = 1  # slices each side
HU_MIN, HU_MAX, HU_SCALE = -1024.0, 1024.0, 1.0 / 512.0
HELD_OUT_SEED = 1_000_000
SLAB = 5  # slices rendered per phantom: SLAB - 2 * CONTEXT training samples
AIR = HU_MIN * HU_SCALE


def normalise(hu: np.ndarray) -> np.ndarray:
    """The manifest's intensity transform."""
    return (np.clip(hu, HU_MIN, HU_MAX) * HU_SCALE).astype(np.float32)


def make_sample(args: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Phantom i: SLAB - 2 samples (3 x 128 x 128 float16 normalised slices, 128 x 128 uint8
    lung mask of the middle one)."""
    seed, i = args
    rng = np.random.default_rng([seed, i])
    anat = phantom.random_anatomy(rng)
    u = rng.uniform()
    if u < 0.45:  # lung bases and domes: the hard part
        zc = rng.uniform(anat.dome_r - anat.recess - 25, anat.dome_r + 25)
    elif u < 0.65:  # upper abdomen with bowel gas
        zc = rng.uniform(anat.dome_r - 170, anat.dome_r - anat.recess)
    else:  # chest up to the apex
        zc = rng.uniform(anat.dome_r + 25, anat.apex + 15)
    blur = rng.uniform(0.3, 1.8)  # mm: reconstruction kernel and resampling
    hu, label = phantom.render(
        anat,
        (SLAB, SIZE, SIZE),
        (SPACING, SPACING, SPACING),
        zc - (SLAB // 2) * SPACING,
        rng,
        (2, 2),
        blur=blur,
    )
    x = normalise(hu).astype(np.float16)
    return [
        (x[k - CONTEXT : k + CONTEXT + 1], (label[k] > 0).astype(np.uint8))
        for k in range(CONTEXT, SLAB - CONTEXT)
    ]


def augment(
    x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random left-right flip, scale 0.85-1.15, rotation +-10 degrees, shift +-10 voxels
    (image bilinear, label bilinear = soft target), noise 0-25 HU, offset +-20 HU; ``gen``
    lives on the tensors' device."""
    b = x.shape[0]

    def rand(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen, device=x.device)

    flip = torch.where(rand(0, 1) < 0.5, -1.0, 1.0)
    scale, angle = rand(0.85, 1.15), rand(-10, 10) * np.pi / 180
    shift = 10.0 / (SIZE / 2)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = flip * torch.cos(angle) / scale
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = flip * torch.sin(angle) / scale
    theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, 0, 2], theta[:, 1, 2] = rand(-shift, shift), rand(-shift, shift)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = nn.functional.grid_sample(x - AIR, grid, align_corners=False) + AIR
    y = nn.functional.grid_sample(y, grid, align_corners=False)
    noise = rand(0, 25 * HU_SCALE)[:, None, None, None]
    offset = rand(-20 * HU_SCALE, 20 * HU_SCALE)[:, None, None, None]
    x = x + noise * torch.randn(x.shape, generator=gen, device=x.device) + offset
    return x, y


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """The UNet-Small layout (names match inference.byo_unet)."""

    def __init__(self, cin: int = 2 * CONTEXT + 1, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        self.depth = len(widths)
        prev = cin
        for k, w in enumerate(widths, 1):
            setattr(self, f"conv{k}", block(prev, w))
            prev = w
        self.middle = block(prev, 2 * prev)
        prev = 2 * prev
        for k in range(self.depth, 0, -1):
            w = widths[k - 1]
            setattr(
                self,
                f"upsample{k}",
                nn.ConvTranspose2d(prev, w, 3, stride=2, padding=1, output_padding=1),
            )
            setattr(self, f"upconv{k}", block(2 * w, w))
            prev = w
        self.final = nn.Conv2d(prev, 1, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # logits
        skips = []
        for k in range(1, self.depth + 1):
            x = getattr(self, f"conv{k}")(x)
            skips.append(x)
            x = self.pool(x)
        x = self.middle(x)
        for k in range(self.depth, 0, -1):
            x = getattr(self, f"upsample{k}")(x)
            x = getattr(self, f"upconv{k}")(torch.cat([x, skips[k - 1]], 1))
        return self.final(x)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    return 1 - (2 * inter + 1) / (p.sum() + target.sum() + 1)


def predict_volume(model: nn.Module, hu: np.ndarray, device: str) -> np.ndarray:
    """Lung mask of a [z, y, x] 3 mm volume (used for held-out validation)."""
    x = normalise(hu)
    pad = np.pad(x, ((CONTEXT, CONTEXT), (0, 0), (0, 0)), mode="edge")
    stacks = np.stack([pad[z : z + 2 * CONTEXT + 1] for z in range(x.shape[0])])
    with torch.no_grad():
        t = torch.from_numpy(stacks).to(device)
        prob = torch.cat([torch.sigmoid(model(t[i : i + 32])) for i in range(0, len(t), 32)])
    return prob[:, 0].cpu().numpy() > 0.5


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train the lung segmentation U-Net.")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=20261125)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--validate", type=int, default=4, help="held-out phantom volumes")
    ap.add_argument("--render-budget-s", type=float, default=0, help="stop rendering early")
    ap.add_argument("--train-budget-s", type=float, default=0, help="stop training early")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    if args.device == "cpu":
        torch.use_deterministic_algorithms(True)
    log: dict[str, object] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
    }
    t0 = time.time()
    data = []
    with Pool(args.workers) as pool:
        val = pool.map_async(
            phantom.random_volume, [HELD_OUT_SEED + k for k in range(args.validate)]
        )
        per = SLAB - 2 * CONTEXT
        jobs = [(args.seed, i) for i in range(-(-args.samples // per))]
        for items in pool.imap(make_sample, jobs, chunksize=4):
            data.extend(items)
            if args.render_budget_s and time.time() - t0 > args.render_budget_s:
                break
        val_volumes = val.get()
    log["phantoms_rendered"] = len(data) // per
    log["samples_rendered"] = len(data)
    xs = torch.from_numpy(np.stack([d[0] for d in data]))
    ys = torch.from_numpy(np.stack([d[1] for d in data]))[:, None]
    del data
    log["render_s"] = round(time.time() - t0, 1)
    print(f"rendered {len(xs)} samples in {log['render_s']} s", flush=True)

    model = UNet().to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    bce = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(args.seed)
    aug_gen = torch.Generator(device=args.device).manual_seed(args.seed)
    xs_d, ys_d = xs.to(args.device), ys.to(args.device)
    losses = []
    t1 = time.time()
    model.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(xs), (args.batch,), generator=gen).to(args.device)
        x, y = augment(xs_d[idx].float(), ys_d[idx].float(), aug_gen)  # binary lung: flips are fine
        logits = model(x)
        loss = bce(logits, y) + dice_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if args.train_budget_s and time.time() - t1 > args.train_budget_s:
            print(f"training budget reached at step {step}", flush=True)
            break
        if step % 100 == 0 or step == args.steps - 1:
            print(
                f"step {step} loss {np.mean(losses[-100:]):.4f} {time.time() - t1:.0f}s", flush=True
            )
    log["steps_done"] = len(losses)
    log["train_s"] = round(time.time() - t1, 1)
    log["final_loss"] = round(float(np.mean(losses[-100:])), 4)

    model.eval()
    dices = []
    for hu, label, _ in val_volumes:
        pred = predict_volume(model, hu, args.device)
        ref = label > 0
        dices.append(float(2 * (pred & ref).sum() / max(1, pred.sum() + ref.sum())))
    log["held_out_dice_raw"] = [round(d, 4) for d in dices]
    print("held-out phantom Dice (no post-processing):", log["held_out_dice_raw"], flush=True)

    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    np.savez(args.out / "weights.npz", **state)
    onnx_model = build_unet_onnx(state)
    import onnx

    onnx.save(onnx_model, args.out / "model.onnx")
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(
            str(args.out / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        probe = xs[:4].float()
        with torch.no_grad():
            ref_p = torch.sigmoid(model(probe.to(args.device))).cpu().numpy()
        got = sess.run(None, {"input": probe.numpy()})[0]
        log["onnx_max_abs_diff"] = float(np.abs(got - ref_p).max())
        print("onnx vs torch max abs diff", log["onnx_max_abs_diff"], flush=True)
    except ImportError:
        pass
    log["total_s"] = round(time.time() - t0, 1)
    (args.out / "training.json").write_text(json.dumps(log, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
