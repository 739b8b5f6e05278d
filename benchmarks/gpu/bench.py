"""U-Net 2D and 3D U-Net training steps and inference on one accelerator: lesionjax (float32 and
bfloat16) against PyTorch (AMP bf16, channels-last, cudnn benchmark; eager and torch.compile),
same device, same run. Called by ``benchmarks/gpu/run.sh``; runs alone too:

    python benchmarks/gpu/bench.py [--parts 2d,3d] [--steps 20] [--cpu-smoke]

Models: the U-Net 2D of the 2D papers (32..512, 256 x 256, 1 channel, BatchNorm + ReLU, soft Dice)
and the 3D cascade's U-Net (32..320, 128^3 patches, 3 windows, InstanceNorm + LeakyReLU, Dice +
BCE, pools of the 3D plan); each step is forward + backward + Adam with coupled L2 on one batch
that stays on the device (the input pipeline is ``benchmarks/pipeline.py``). lesionjax: the
trainer's ``make_train_step`` jitted with donation and ``make_predict_fn``; bf16 is the
trainer's ``train.precision = "bf16"`` (bf16 compute, float32 parameters, optimizer and loss).
PyTorch: ``benchmarks/torch_unet.py`` / ``torch_unet3d.py`` (the same architectures) under
``torch.autocast(bfloat16)``, ``channels_last`` memory format, ``cudnn.benchmark = True``, then
the same wrapped in ``torch.compile`` (default mode).

Timing: ``--warmup`` untimed steps, then ``--steps`` steps back to back with one device sync at
the end (so the host's dispatch overlaps the device's work in both frameworks). MFU = the
analytic conv FLOPs of a step (``train_step.conv_flops`` / ``train_step3d.conv_flops``) / time /
the device's dense bf16 peak (a table of NVIDIA parts; ``--peak-tflops`` overrides), for every
row, float32 included.

``--cpu-smoke``: the same code on the CPU, each part one warm-up and one timed step at toy sizes
(2D 64 x 64, batch 2; 3D 32^3, batch 1, narrower widths), so the script is tested where there is
no GPU; its numbers mean nothing. Last line: ``ratio_train2d=<lesionjax bf16 / best torch>
ratio_train3d=... ratio_infer2d=... ratio_infer3d=... mfu2d_bf16=...`` (images/s ratios).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Dense bf16 tensor-core peaks, FLOP/s (NVIDIA data sheets; sparsity not counted).
BF16_PEAKS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="2d,3d", help="comma-separated: 2d, 3d")
    parser.add_argument("--batch2d", type=int, default=32)
    parser.add_argument("--batch3d", type=int, default=2)
    parser.add_argument("--size2d", type=int, default=256)
    parser.add_argument("--shape3d", default="128,128,128")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak")
    parser.add_argument(
        "--variants",
        default="jax-bf16,torch-amp,torch-amp-compile,jax-fp32",
        help="rows to run, in this order",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="rows not started by this many seconds are reported as skipped",
    )
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--cpu-smoke", action="store_true", help="one step per row, toy sizes")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.batch2d, args.size2d, args.batch3d = 2, 64, 1
        args.shape3d, args.steps, args.warmup = "32,32,32", 1, 1
    return args


# ----------------------------------------------------------------------------- models, FLOPs


def part_spec(part: str, args) -> dict:
    """Architecture, input shape and FLOPs of one part."""
    from benchmarks import train_step, train_step3d

    if part == "2d":
        features = (8, 16, 32, 64) if args.cpu_smoke else (32, 64, 128, 256, 512)
        batch, size = args.batch2d, args.size2d
        flops = train_step.conv_flops(batch, size, 1, features)
        return {
            "name": f"U-Net 2D {features[0]}..{features[-1]}, {size}x{size}x1, batch {batch}",
            "features": features,
            "batch": batch,
            "image": (batch, size, size, 1),
            "flops": flops,
        }
    shape = tuple(int(n) for n in args.shape3d.split(","))
    features, pools = train_step3d.architecture(shape, 8 if args.cpu_smoke else 32)
    batch = args.batch3d
    flops = train_step3d.conv_flops(batch, shape, 3, features, pools)
    return {
        "name": (
            f"3D U-Net {features[0]}..{features[-1]} ({len(features)} levels), "
            f"{'x'.join(map(str, shape))}x3, batch {batch}"
        ),
        "features": tuple(features),
        "pools": pools,
        "batch": batch,
        "image": (batch, *shape, 3),
        "flops": flops,
    }


# ----------------------------------------------------------------------------- lesionjax


def jax_runner(part: str, spec: dict, dtype_name: str) -> dict:
    """Compiled lesionjax train step and predict as callables; sync blocks on the device."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lesionjax.losses import dice_bce_loss, soft_dice_loss
    from lesionjax.models.unet2d import UNet2D
    from lesionjax.models.unet3d import UNet3D
    from lesionjax.train.step import (
        make_init_fn,
        make_optimizer,
        make_predict_fn,
        make_train_step,
        train_compiler_options,
    )

    dtype = jnp.bfloat16 if dtype_name == "bf16" else jnp.float32
    if part == "2d":
        tx, _ = make_optimizer(1e-3, steps_per_epoch=1000)
        model_fn = lambda rngs: UNet2D(1, 1, spec["features"], rngs=rngs, dtype=dtype)  # noqa: E731
        loss = soft_dice_loss
    else:
        tx, _ = make_optimizer(1e-2, steps_per_epoch=250, weight_decay=3e-5)
        model_fn = lambda rngs: UNet3D(  # noqa: E731
            3, 1, spec["features"], rngs=rngs, pools=spec["pools"], dtype=dtype
        )
        loss = dice_bce_loss
    graphdef, init = make_init_fn(model_fn, tx)
    rng = np.random.default_rng(0)
    shape = spec["image"]
    batch = {
        "image": jnp.asarray(rng.random(shape), jnp.float32),
        "mask": jnp.asarray(rng.random((*shape[:-1], 1)) > 0.9, jnp.float32),
        "weight": jnp.ones((shape[0],), jnp.float32),
    }
    key = jax.random.key(1)
    box = {"state": jax.jit(init)(jax.random.key(0))}
    options = train_compiler_options()
    t0 = time.perf_counter()
    step = jax.jit(make_train_step(graphdef, tx, loss), donate_argnums=0, compiler_options=options)
    compiled = step.lower(box["state"], batch, key).compile()
    predict = jax.jit(make_predict_fn(graphdef), compiler_options=options)
    variables = lambda: (box["state"].params, box["state"].model_state)  # noqa: E731
    predict_c = predict.lower(variables(), batch["image"]).compile()
    compile_s = time.perf_counter() - t0

    def train():
        box["state"], box["metrics"] = compiled(box["state"], batch, key)

    def infer():
        box["probs"] = predict_c(variables(), batch["image"])

    def sync():
        jax.block_until_ready((box["state"], box.get("probs")))

    return {
        "train": train,
        "infer": infer,
        "sync": sync,
        "compile_s": compile_s,
        "loss": lambda: float(box["metrics"]["loss"]),
    }


# ----------------------------------------------------------------------------- PyTorch


def torch_runner(part: str, spec: dict, compiled: bool) -> dict:
    """PyTorch AMP bf16 + channels-last (+ torch.compile) train step and inference."""
    import torch

    from benchmarks.torch_unet import TorchUNet2D, soft_dice_loss
    from benchmarks.torch_unet3d import TorchUNet3D, dice_bce_loss

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    shape = spec["image"]
    if part == "2d":
        model = TorchUNet2D(1, 1, spec["features"])
        layout = torch.channels_last
        loss_fn, lr, wd = soft_dice_loss, 1e-3, 1e-6
    else:
        model = TorchUNet3D(3, 1, spec["features"], spec["pools"])
        layout = torch.channels_last_3d
        loss_fn, lr, wd = dice_bce_loss, 1e-2, 3e-5
    model = model.to(device, memory_format=layout)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    gen = torch.Generator().manual_seed(0)
    nchw = (shape[0], shape[-1], *shape[1:-1])
    image = torch.rand(nchw, generator=gen).to(device, memory_format=layout)
    mask = (torch.rand((shape[0], 1, *shape[1:-1]), generator=gen) > 0.9).float()
    mask = mask.to(device, memory_format=layout)
    forward = torch.compile(model) if compiled else model
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    box = {}

    def train():
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            logits = forward(image)
        loss = loss_fn(logits.float(), mask)
        loss.backward()
        opt.step()
        box["loss"] = loss.detach()

    def infer():
        model.eval()
        with torch.inference_mode(), autocast():
            box["probs"] = torch.sigmoid(forward(image).float())

    def sync():
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    train()  # torch.compile compiles here (train graph), and infer() below the eval graph
    infer()
    sync()
    return {
        "train": train,
        "infer": infer,
        "sync": sync,
        "compile_s": time.perf_counter() - t0,
        "loss": lambda: float(box["loss"]),
        "free": lambda: torch.cuda.empty_cache() if cuda else None,
    }


# ----------------------------------------------------------------------------- timing


def seconds_per_call(fn, sync, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t0) / steps


def make_runner(variant: str, part: str, spec: dict) -> dict:
    if variant == "jax-bf16":
        return jax_runner(part, spec, "bf16")
    if variant == "jax-fp32":
        return jax_runner(part, spec, "fp32")
    if variant == "torch-amp":
        return torch_runner(part, spec, compiled=False)
    if variant == "torch-amp-compile":
        return torch_runner(part, spec, compiled=True)
    raise SystemExit(f"error: --variants: unknown variant {variant!r}")


def run_row(variant: str, part: str, spec: dict, args, peak: float | None) -> dict:
    row = {"part": part, "variant": variant}
    try:
        runner = make_runner(variant, part, spec)
        train_s = seconds_per_call(runner["train"], runner["sync"], args.warmup, args.steps)
        infer_s = seconds_per_call(runner["infer"], runner["sync"], args.warmup, args.steps)
        row.update(
            status="ok",
            compile_s=runner["compile_s"],
            train_img_s=spec["batch"] / train_s,
            infer_img_s=spec["batch"] / infer_s,
            train_ms=1e3 * train_s,
            infer_ms=1e3 * infer_s,
            train_tflops=spec["flops"]["train"] / train_s / 1e12,
            infer_tflops=spec["flops"]["forward"] / infer_s / 1e12,
            loss=runner["loss"](),
        )
        if peak:
            row["train_mfu"] = row["train_tflops"] * 1e12 / peak
            row["infer_mfu"] = row["infer_tflops"] * 1e12 / peak
        if "free" in runner:
            free = runner["free"]
            del runner
            gc.collect()
            free()
    except Exception as exc:  # one failing row (out of memory, no compiler) must not end the run
        traceback.print_exc()
        row.update(status=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    gc.collect()
    return row


def device_info(args) -> tuple[str, float | None]:
    import jax

    device = jax.devices()[0]
    kind = getattr(device, "device_kind", str(device))
    if args.peak_tflops:
        return kind, args.peak_tflops * 1e12
    if device.platform != "gpu":
        return kind, None
    for name, peak in BF16_PEAKS.items():  # longest names first where they overlap
        if name in kind:
            return kind, peak
    return kind, None


def fmt(row: dict, key: str, spec: str) -> str:
    value = row.get(key)
    return format(value, spec) if isinstance(value, float) else "-"


def print_table(rows: list[dict], specs: dict) -> None:
    header = (
        f"{'part':<4} {'variant':<18} {'train img/s':>11} {'train ms':>9} {'train TF/s':>10} "
        f"{'MFU':>6} {'infer img/s':>11} {'infer ms':>9} {'infer MFU':>9} {'compile s':>9} "
        f"{'loss':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        if row["status"] != "ok":
            print(f"{row['part']:<4} {row['variant']:<18} {row['status']}")
            continue
        mfu = lambda k, row=row: f"{100 * row[k]:.1f}%" if k in row else "-"  # noqa: E731
        print(
            f"{row['part']:<4} {row['variant']:<18} {fmt(row, 'train_img_s', '11.1f')} "
            f"{fmt(row, 'train_ms', '9.1f')} {fmt(row, 'train_tflops', '10.1f')} "
            f"{mfu('train_mfu'):>6} {fmt(row, 'infer_img_s', '11.1f')} "
            f"{fmt(row, 'infer_ms', '9.1f')} {mfu('infer_mfu'):>9} "
            f"{fmt(row, 'compile_s', '9.1f')} {fmt(row, 'loss', '7.4f')}"
        )
    for part, spec in specs.items():
        print(
            f"{part}: {spec['name']}; analytic conv FLOPs: train step "
            f"{spec['flops']['train'] / 1e9:.0f} G, inference batch "
            f"{spec['flops']['forward'] / 1e9:.0f} G"
        )


def summary(rows: list[dict], parts) -> str:
    ok = {(r["part"], r["variant"]): r for r in rows if r["status"] == "ok"}
    out = []
    for kind in ("train", "infer"):
        for part in parts:
            jx = ok.get((part, "jax-bf16"))
            torch_rows = [ok[k] for k in ok if k[0] == part and k[1].startswith("torch")]
            if jx and torch_rows:
                best = max(r[f"{kind}_img_s"] for r in torch_rows)
                out.append(f"ratio_{kind}{part}={jx[f'{kind}_img_s'] / best:.2f}")
    jx2 = ok.get(("2d", "jax-bf16"))
    if jx2 and "train_mfu" in jx2:
        out.append(f"mfu2d_bf16={jx2['train_mfu']:.3f}")
    return " ".join(out) or "no ratio: a lesionjax bf16 row and a torch row are both needed"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.cpu_smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"
    # Both frameworks share the device: JAX must not take 75 % of its memory up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    sys.path.insert(0, ROOT)
    start = time.perf_counter()
    parts = [p for p in args.parts.split(",") if p]
    for p in parts:
        if p not in ("2d", "3d"):
            raise SystemExit(f"error: --parts: unknown part {p!r} (2d, 3d)")
    kind, peak = device_info(args)
    import jax

    try:
        import torch

        torch_text = f"torch {torch.__version__}, cuda for torch: {torch.cuda.is_available()}"
    except ImportError:
        torch_text = "no torch (its rows fail)"
    print(
        f"device: {kind} ({jax.default_backend()}); jax {jax.__version__}, {torch_text}; bf16 peak "
        f"{'%.0f TFLOP/s' % (peak / 1e12) if peak else 'unknown (no MFU)'}; "
        f"{args.warmup} warm-up + {args.steps} timed steps per row"
        f"{' (CPU SMOKE: toy sizes, numbers meaningless)' if args.cpu_smoke else ''}",
        flush=True,
    )
    specs = {p: part_spec(p, args) for p in parts}
    rows = []
    for part in parts:
        for variant in [v for v in args.variants.split(",") if v]:
            elapsed = time.perf_counter() - start
            if elapsed > args.budget_s:
                rows.append(
                    {"part": part, "variant": variant, "status": f"skipped: {elapsed:.0f} s used"}
                )
                continue
            print(f"[{elapsed:6.1f} s] {part} {variant} ...", flush=True)
            rows.append(run_row(variant, part, specs[part], args, peak))
            print(f"         {json.dumps(rows[-1])}", flush=True)
    print()
    print_table(rows, specs)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": kind, "peak": peak, "rows": rows}, f, indent=1)
    print(summary(rows, parts))
    failed = [r for r in rows if r["status"].startswith("failed")]
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
