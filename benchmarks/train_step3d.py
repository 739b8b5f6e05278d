"""The paper's 3D U-Net (32..320, 3 input windows): training step and sliding-window inference,
lesionjax vs PyTorch (the same architecture, hand-written: ``torch_unet3d.py``), same run.

    python benchmarks/train_step3d.py [--steps 3] [--warmup 1] [--shapes 64x64x64,128x128x32]

For each patch shape, batches of ``--batch`` (2) patches: lesionjax's real ``make_train_step``
(forward + backward + Adam with coupled L2, Dice + BCE) jitted with donation, and the sliding
window's inner call (``SlidingWindowPredictor``: eval forward of one batch of windows, sigmoid,
Gaussian weighting on the host not included); PyTorch eager, float32, the same threads. Pools
per axis from the 3D plan's rule at isotropic spacing (``data_prep.plan3d.pools_for``). The
frameworks alternate in blocks (``train_step.time_interleaved``).

Prints per shape: ms per train step and per inference batch for both, the analytic conv FLOPs,
achieved GFLOP/s and the fraction of the CPU's float32 matmul peak (measured here with a
2048^3 GEMM in both frameworks, the faster taken); last line
``ratio_train3d=<torch/lesionjax time> ratio_infer3d=<...>`` (> 1: lesionjax faster), the
geometric mean over the shapes.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--shapes", default="64x64x64,128x128x32")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--base", type=int, default=32, help="base features (32 in the paper)")
    parser.add_argument("--in-channels", type=int, default=3)
    return parser.parse_args(argv)


def architecture(shape, base: int):
    from data_prep import plan3d

    pools, patch = plan3d.pools_for((1.0, 1.0, 1.0), shape)
    assert list(patch) == list(shape), (patch, shape)
    features = [min(base * 2**i, 320) for i in range(len(pools) + 1)]
    return features, pools


def conv_flops(batch, shape, in_channels, features, pools) -> dict:
    """Analytic FLOPs (2 per multiply-add) of the convolutions; backward = 2x forward except
    the first conv's input gradient. Norms, activations, pooling are memory-bound, left out."""
    voxels = [math.prod(shape)]
    for p in pools:
        voxels.append(voxels[-1] // math.prod(p))
    widths = [in_channels, *features]
    fwd = 0
    for level, f in enumerate(features):
        fwd += 2 * batch * voxels[level] * 27 * (widths[level] * f + f * f)
    first = 2 * batch * voxels[0] * 27 * in_channels * features[0]
    for level in range(len(features) - 1, 0, -1):
        deep, shallow = features[level], features[level - 1]
        fwd += 2 * batch * voxels[level] * math.prod(pools[level - 1]) * deep * shallow
        fwd += 2 * batch * voxels[level - 1] * 27 * (2 * shallow * shallow + shallow * shallow)
    fwd += 2 * batch * voxels[0] * features[0]
    return {"forward": fwd, "train": 3 * fwd - first}


def gemm_gflops(threads: int, frameworks=("jax", "torch")) -> dict[str, float]:
    """float32 GFLOP/s of a 2048^3 GEMM per framework (mean of 5 calls after one warm-up)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    n = 2048
    seconds = {}
    if "jax" in frameworks:
        a = jnp.asarray(np.random.default_rng(0).random((n, n)), jnp.float32)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        t0 = time.perf_counter()
        for _ in range(5):
            f(a).block_until_ready()
        seconds["jax"] = (time.perf_counter() - t0) / 5
    if "torch" in frameworks:
        import torch

        torch.set_num_threads(threads)
        b = torch.rand(n, n)
        b @ b
        t0 = time.perf_counter()
        for _ in range(5):
            b @ b
        seconds["torch"] = (time.perf_counter() - t0) / 5
    return {name: 2 * n**3 / s / 1e9 for name, s in seconds.items()}


def matmul_peak(threads: int) -> float:
    """float32 GFLOP/s of a 2048^3 GEMM, the better of jax and torch."""
    return max(gemm_gflops(threads).values())


def setup_jax(args, shape, features, pools):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lesionjax.eval.sliding_window import SlidingWindowPredictor
    from lesionjax.losses import dice_bce_loss
    from lesionjax.models.unet3d import UNet3D
    from lesionjax.train.state import make_mesh
    from lesionjax.train.step import (
        make_init_fn,
        make_optimizer,
        make_predict_fn,
        make_train_step,
        train_compiler_options,
    )

    tx, _ = make_optimizer(1e-2, 250)
    graphdef, init = make_init_fn(
        lambda rngs: UNet3D(args.in_channels, 1, features, rngs=rngs, pools=pools), tx
    )
    rng = np.random.default_rng(0)
    full = (args.batch, *shape, args.in_channels)
    batch = {
        "image": jnp.asarray(rng.random(full), jnp.float32),
        "mask": jnp.asarray(rng.random((*full[:-1], 1)) > 0.9, jnp.float32),
        "weight": jnp.ones((args.batch,), jnp.float32),
    }
    box = {"state": jax.jit(init)(jax.random.key(0)), "step": 0}
    t0 = time.perf_counter()
    step = jax.jit(
        make_train_step(graphdef, tx, dice_bce_loss),
        donate_argnums=0,
        compiler_options=train_compiler_options(),
    )
    compiled = step.lower(box["state"], batch, jax.random.key(1)).compile()
    compile_s = time.perf_counter() - t0
    mesh = make_mesh()
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    predictor = SlidingWindowPredictor(
        make_predict_fn(graphdef),
        mesh,
        NamedSharding(mesh, P()),
        shape,
        batch_size=args.batch,
        compiler_options=train_compiler_options(),
    )
    windows = np.asarray(rng.integers(0, 256, full), np.uint8)

    def train():
        box["state"], box["metrics"] = compiled(
            box["state"], batch, jax.random.fold_in(jax.random.key(1), box["step"])
        )
        box["step"] += 1
        jax.block_until_ready(box["state"])

    def infer():
        s = box["state"]
        jax.block_until_ready(predictor._predict((s.params, s.model_state), windows))

    return {
        "train": train,
        "infer": infer,
        "compile_s": compile_s,
        "loss": lambda: float(box["metrics"]["loss"]),
    }


def setup_torch(args, shape, features, pools):
    import torch

    from benchmarks.torch_unet3d import TorchUNet3D, dice_bce_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = TorchUNet3D(args.in_channels, 1, features, pools)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=3e-5)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand((args.batch, args.in_channels, *shape), generator=gen)
    mask = (torch.rand((args.batch, 1, *shape), generator=gen) > 0.9).float()
    box = {}

    def train():
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = dice_bce_loss(model(image), mask)
        loss.backward()
        opt.step()
        box["loss"] = loss.detach()

    def infer():
        model.eval()
        with torch.inference_mode():
            torch.sigmoid(model(image))

    return {"train": train, "infer": infer, "loss": lambda: float(box["loss"])}


def main(argv=None) -> None:
    args = parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    args.threads = args.threads or len(cores)
    os.sched_setaffinity(0, cores[: args.threads])
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.train_step import time_interleaved

    peak = matmul_peak(args.threads)
    print(
        f"3D U-Net (base {args.base}, cap 320, {args.in_channels} input channels), batch "
        f"{args.batch}, float32, {args.threads} threads, {args.warmup} warm-up + {args.steps} "
        f"timed (median, frameworks alternate), load average {os.getloadavg()[0]:.1f}; "
        f"matmul peak {peak:.0f} GFLOP/s"
    )
    header = (
        f"{'shape':<12} {'framework':<10} {'train ms':>9} {'infer ms':>9} {'train GF/s':>10} "
        f"{'infer GF/s':>10} {'train %pk':>9} {'infer %pk':>9} {'loss':>7}"
    )
    print(header)
    print("-" * len(header))
    ratios_train, ratios_infer = [], []
    for text in args.shapes.split(","):
        shape = tuple(int(n) for n in text.split("x"))
        features, pools = architecture(shape, args.base)
        flops = conv_flops(args.batch, shape, args.in_channels, features, pools)
        runners = {
            "lesionjax": setup_jax(args, shape, features, pools),
            "torch": setup_torch(args, shape, features, pools),
        }
        train_t = time_interleaved(runners, "train", args.warmup, args.steps)
        infer_t = time_interleaved(runners, "infer", args.warmup, args.steps)
        med = {n: (statistics.median(train_t[n]), statistics.median(infer_t[n])) for n in runners}
        for name, (tr, inf) in med.items():
            gf_t, gf_i = flops["train"] / tr / 1e9, flops["forward"] / inf / 1e9
            print(
                f"{text:<12} {name:<10} {1e3 * tr:>9.0f} {1e3 * inf:>9.0f} {gf_t:>10.1f} "
                f"{gf_i:>10.1f} {100 * gf_t / peak:>8.0f}% {100 * gf_i / peak:>8.0f}% "
                f"{runners[name]['loss']():>7.4f}"
            )
        print(
            f"{text:<12} features {features}, pools {pools}: train step "
            f"{flops['train'] / 1e9:.0f} GFLOP, inference batch {flops['forward'] / 1e9:.0f} "
            f"GFLOP; lesionjax compile {runners['lesionjax']['compile_s']:.0f} s"
        )
        ratios_train.append(med["torch"][0] / med["lesionjax"][0])
        ratios_infer.append(med["torch"][1] / med["lesionjax"][1])
    geo = lambda xs: math.exp(sum(math.log(x) for x in xs) / len(xs))  # noqa: E731
    print(f"ratio_train3d={geo(ratios_train):.2f} ratio_infer3d={geo(ratios_infer):.2f}")


if __name__ == "__main__":
    main()
