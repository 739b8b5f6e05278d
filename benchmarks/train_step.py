"""Throughput of a U-Net 2D training step and of inference: lesionjax vs PyTorch, same run.

    python benchmarks/train_step.py --batch 8 --size 256 --steps 10 --warmup 3

lesionjax: the real ``make_train_step`` (forward + backward + Adam with coupled L2, soft Dice
loss, no augmentation) under ``jax.jit(..., donate_argnums=0)``, and ``make_predict_fn`` jitted.
PyTorch: ``benchmarks/torch_unet.py``, the same architecture, loss and optimizer, eager mode.
Both run float32 on the same cores (``--threads`` pins the process to the first N cores), and
the timed calls alternate between the frameworks so that background load hits both alike.

Prints a table (framework, train img/s, infer img/s, ms/step), the FLOPs of a step (analytic
conv count and XLA's cost analysis) with achieved GFLOP/s, and as the last line
``ratio_train=<lesionjax/torch> ratio_infer=<lesionjax/torch>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="cores to use (default: all)")
    parser.add_argument(
        "--features", type=str, default="32,64,128,256,512", help="U-Net widths per level"
    )
    parser.add_argument("--channels-last", action="store_true", help="torch channels_last")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--skip-jax", action="store_true")
    parser.add_argument(
        "--xla-flags", type=str, default="", help="extra XLA_FLAGS (set before JAX starts)"
    )
    parser.add_argument(
        "--default-xla",
        action="store_true",
        help="jit the train step and inference without train_compiler_options()",
    )
    return parser.parse_args(argv)


def conv_flops(batch: int, size: int, in_channels: int, features: tuple[int, ...]) -> dict:
    """Analytic multiply-add FLOPs (2 per MAC) of the U-Net's convolutions.

    Forward: every conv is 2 * B * H_out * W_out * k_h * k_w * C_in * C_out. The transposed
    2x2 stride-2 conv counts its 4 non-overlapping taps per input pixel. Backward of a conv is
    two convs of the same cost (input gradient and weight gradient), except the first conv,
    whose input needs no gradient. BN, ReLU, pooling and the optimizer are O(activations) and
    left out (they are memory-bound; see bytes).
    """
    fwd = 0
    first = 0
    h = size
    widths = (in_channels, *features)
    for level, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        if level > 0:
            h //= 2
        layer = 2 * batch * h * h * 9 * (a * b + b * b)
        if level == 0:
            first = 2 * batch * h * h * 9 * a * b
        fwd += layer
    for deep, shallow in zip(features[:0:-1], features[-2::-1], strict=True):
        fwd += 2 * batch * h * h * 4 * deep * shallow  # transposed conv, input res h
        h *= 2
        fwd += 2 * batch * h * h * 9 * (2 * shallow * shallow + shallow * shallow)
    fwd += 2 * batch * h * h * features[0] * 1
    return {"forward": fwd, "train": 3 * fwd - first}


def setup_jax(args, features) -> dict:
    """Compiled lesionjax train step and predict, as zero-argument callables that block."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lesionjax.losses import soft_dice_loss
    from lesionjax.models.unet2d import UNet2D
    from lesionjax.train.step import (
        make_init_fn,
        make_optimizer,
        make_predict_fn,
        make_train_step,
        train_compiler_options,
    )

    tx, _ = make_optimizer(1e-3, steps_per_epoch=1000)
    graphdef, init = make_init_fn(lambda rngs: UNet2D(1, 1, features, rngs=rngs), tx)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size, 1)
    batch = {
        "image": jnp.asarray(rng.random(shape), jnp.float32),
        "mask": jnp.asarray(rng.random(shape) > 0.9, jnp.float32),
        "weight": jnp.ones((args.batch,), jnp.float32),
    }
    key = jax.random.key(1)
    box = {"state": jax.jit(init)(jax.random.key(0)), "step": 0}

    options = None if args.default_xla else train_compiler_options()
    t0 = time.perf_counter()
    train_step = jax.jit(
        make_train_step(graphdef, tx, soft_dice_loss), donate_argnums=0, compiler_options=options
    )
    compiled = train_step.lower(box["state"], batch, key).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    predict = jax.jit(make_predict_fn(graphdef), compiler_options=options)

    def train():
        box["state"], box["metrics"] = compiled(
            box["state"], batch, jax.random.fold_in(key, box["step"])
        )
        box["step"] += 1
        jax.block_until_ready(box["state"])

    def infer():
        state = box["state"]
        jax.block_until_ready(predict((state.params, state.model_state), batch["image"]))

    return {
        "train": train,
        "infer": infer,
        "xla_flops": xla_flops,
        "compile_s": compile_s,
        "loss": lambda: float(box["metrics"]["loss"]),
    }


def setup_torch(args, features) -> dict:
    """The PyTorch peer's train step and inference, as zero-argument callables."""
    import torch

    from benchmarks.torch_unet import TorchUNet2D, soft_dice_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = TorchUNet2D(1, 1, features)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, 1, args.size, args.size)
    image = torch.rand(shape, generator=gen)
    mask = (torch.rand(shape, generator=gen) > 0.9).float()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
        mask = mask.contiguous(memory_format=torch.channels_last)
    box = {}

    def train():
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = soft_dice_loss(model(image), mask)
        loss.backward()
        opt.step()
        box["loss"] = loss.detach()

    def infer():
        model.eval()
        with torch.inference_mode():
            torch.sigmoid(model(image))

    return {"train": train, "infer": infer, "loss": lambda: float(box["loss"])}


def time_interleaved(runners: dict, phase: str, warmup: int, steps: int, rounds: int = 2):
    """Seconds per call of runners[name][phase]: the frameworks take turns in blocks.

    ``rounds`` blocks per framework, alternating, so that background load on the machine
    spreads over both and their ratio stays meaningful when absolute times drift. Each block
    starts with one untimed call: alternating call by call made torch 10-40x slower, its
    OpenMP threads contending with XLA's still-spinning thread pool.
    """
    times = {name: [] for name in runners}
    for runner in runners.values():
        for _ in range(warmup):
            runner[phase]()
    per_block = [steps // rounds + (i < steps % rounds) for i in range(rounds)]
    for block in per_block:
        for name, runner in runners.items():
            runner[phase]()
            for _ in range(block):
                t0 = time.perf_counter()
                runner[phase]()
                times[name].append(time.perf_counter() - t0)
    return times


def main(argv=None) -> None:
    args = parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    args.threads = args.threads or len(cores)
    # Pin before either framework starts its thread pools, so both use the same cores.
    os.sched_setaffinity(0, cores[: args.threads])
    # OpenMP threads that sleep at barriers instead of spinning: on a machine where another
    # process holds a core, torch's default spin-waiting made its step 10-20x slower (measured
    # 4.4 s vs 0.21 s at batch 2, 64x64). Set it yourself to compare with spinning.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    features = tuple(int(f) for f in args.features.split(","))

    flops = conv_flops(args.batch, args.size, 1, features)
    runners = {}
    if not args.skip_jax:
        runners["lesionjax"] = setup_jax(args, features)
    if not args.skip_torch:
        runners["torch"] = setup_torch(args, features)
    train_t = time_interleaved(runners, "train", args.warmup, args.steps)
    infer_t = time_interleaved(runners, "infer", args.warmup, args.steps)
    med = {n: (statistics.median(train_t[n]), statistics.median(infer_t[n])) for n in runners}

    print(
        f"U-Net 2D {features}, batch {args.batch}, {args.size}x{args.size}x1, float32, "
        f"{args.threads} threads, {args.warmup} warm-up + {args.steps} timed steps "
        f"(median; frameworks alternate in 2 blocks), load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} torch channels_last={args.channels_last}"
    )
    print(
        f"analytic conv FLOPs: forward {flops['forward'] / 1e9:.1f} G, "
        f"train step {flops['train'] / 1e9:.1f} G"
    )
    if "lesionjax" in runners:
        r = runners["lesionjax"]
        print(
            f"XLA cost_analysis FLOPs of the train step: {r['xla_flops'] / 1e9:.1f} G "
            f"(compile {r['compile_s']:.1f} s, "
            f"{'default XLA options' if args.default_xla else 'train_compiler_options()'})"
        )
    header = (
        f"{'framework':<10} {'train img/s':>11} {'infer img/s':>11} {'train ms/step':>13} "
        f"{'infer ms/step':>13} {'train GFLOP/s':>13} {'infer GFLOP/s':>13} {'loss':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, (train_s, infer_s) in med.items():
        print(
            f"{name:<10} {args.batch / train_s:>11.2f} {args.batch / infer_s:>11.2f} "
            f"{1e3 * train_s:>13.1f} {1e3 * infer_s:>13.1f} "
            f"{flops['train'] / train_s / 1e9:>13.1f} "
            f"{flops['forward'] / infer_s / 1e9:>13.1f} {runners[name]['loss']():>7.4f}"
        )
    if len(med) == 2:
        (jx_train, jx_infer), (tr_train, tr_infer) = med["lesionjax"], med["torch"]
        print(f"ratio_train={tr_train / jx_train:.2f} ratio_infer={tr_infer / jx_infer:.2f}")


if __name__ == "__main__":
    main()
