"""One 3x3x3 convolution layer on CPU, in the forms XLA can run it, against PyTorch's.

    python benchmarks/conv3d_forms.py [--shapes 2x64x64x64x32x32,2x16x16x16x128x128] [--no-torch]

Per shape (batch x X x Y x Z x C_in x C_out), forward and forward + backward (``jax.grad`` of
a sum, both the input and the kernel gradient) of:

- ``native``: ``lax.conv_general_dilated`` in 3D;
- ``stacked``: lesionjax's ``Conv3x3x3`` CPU form (three x-shifted copies on channels, one 2D conv);
- ``out_stacked``: one 2D conv over (y, z) from C_in to 3 x C_out (one output block per x tap,
  K = 9 C_in instead of 27 C_in), then three x-shifted sums;
- ``im2col_xy``: im2col over (x, y) (K = 9 C_in), one dot to 3 x C_out, three z-shifted sums;
- ``im2col``: full im2col (K = 27 C_in), one dot;

each jitted with ``train_compiler_options()`` (convolutions on Eigen) and with XLA's defaults
(YNNPACK), plus a 2048^3 float32 GEMM in both frameworks (``train_step3d.gemm_gflops``) and torch's
``nn.Conv3d`` (``bench`` extra). Median of ``--repeats`` calls after one warm-up, in ms and
GFLOP/s (2 per multiply-add; forward + backward counted as 3 x forward). Every form's forward is
checked against ``native`` (max abs error printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import types


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="2x64x64x64x32x32,2x32x32x32x64x64,2x16x16x16x128x128")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-torch", action="store_true")
    return p.parse_args(argv)


def timed(fn, repeats: int, *args) -> float:
    """Median seconds of ``fn(*args)`` (its result waited for) after one warm-up call."""
    import jax

    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def torch_forward(conv, x):
    import torch

    with torch.no_grad():
        return conv(x)


def torch_grad(conv, x):
    (conv(x) ** 2).sum().backward()


def jax_forms():
    import jax.numpy as jnp
    from jax import lax

    from lesionjax.models.layers import Conv3x3x3

    def native(x, w):
        dn = ("NXYZC", "XYZIO", "NXYZC")
        return lax.conv_general_dilated(x, w, (1, 1, 1), "SAME", dimension_numbers=dn)

    def stacked(x, w):
        # The layer's own code, with w as its kernel (it reads only these three attributes).
        layer = types.SimpleNamespace(kernel=w, bias=None, dtype=jnp.float32)
        return Conv3x3x3.__call__(layer, x, impl="stacked")

    def out_stacked(x, w):
        b, nx, ny, nz, c = x.shape
        o = w.shape[-1]
        # (kx, ky, kz, C, O) -> (ky, kz, C, kx * O): output block k holds tap kx = k.
        k2 = jnp.transpose(w, (1, 2, 3, 0, 4)).reshape(3, 3, c, 3 * o)
        y = lax.conv_general_dilated(
            x.reshape(b * nx, ny, nz, c),
            k2,
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ).reshape(b, nx, ny, nz, 3, o)
        y = jnp.pad(y, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0), (0, 0)))
        return y[:, 0:nx, ..., 0, :] + y[:, 1 : nx + 1, ..., 1, :] + y[:, 2 : nx + 2, ..., 2, :]

    def im2col_xy(x, w):
        b, nx, ny, nz, c = x.shape
        o = w.shape[-1]
        p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))
        cols = jnp.concatenate(
            [p[:, i : i + nx, j : j + ny] for i in range(3) for j in range(3)], -1
        )
        wk = jnp.transpose(w, (0, 1, 3, 2, 4)).reshape(9 * c, 3 * o)
        y = (cols.reshape(-1, 9 * c) @ wk).reshape(b, nx, ny, nz, 3, o)
        y = jnp.pad(y, ((0, 0), (0, 0), (0, 0), (1, 1), (0, 0), (0, 0)))
        return y[:, :, :, 0:nz, 0] + y[:, :, :, 1 : nz + 1, 1] + y[:, :, :, 2 : nz + 2, 2]

    def im2col(x, w):
        b, nx, ny, nz, c = x.shape
        p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
        taps = [
            p[:, i : i + nx, j : j + ny, k : k + nz]
            for i in range(3)
            for j in range(3)
            for k in range(3)
        ]
        cols = jnp.concatenate(taps, -1)
        return (cols.reshape(-1, 27 * c) @ w.reshape(27 * c, -1)).reshape(b, nx, ny, nz, -1)

    return {
        "native": native,
        "stacked": stacked,
        "out_stacked": out_stacked,
        "im2col_xy": im2col_xy,
        "im2col": im2col,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from train_step3d import gemm_gflops  # this folder, on sys.path when run as a script

    from lesionjax.train.step import train_compiler_options

    options = {"eigen": train_compiler_options(), "default": {}}
    gemm = gemm_gflops(os.cpu_count(), ("jax",) if args.no_torch else ("jax", "torch"))
    print("GEMM 2048^3: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in gemm.items()))
    forms = jax_forms()
    for spec in args.shapes.split(","):
        b, nx, ny, nz, ci, co = (int(v) for v in spec.split("x"))
        x = jax.random.normal(jax.random.key(0), (b, nx, ny, nz, ci))
        w = jax.random.normal(jax.random.key(1), (3, 3, 3, ci, co)) * 0.05
        flops = 2 * b * nx * ny * nz * 27 * ci * co
        ref = np.asarray(jax.jit(forms["native"])(x, w))
        for name, form in forms.items():
            for oname, opts in options.items():
                fwd = jax.jit(form, compiler_options=opts)
                grad = jax.jit(
                    jax.grad(lambda x, w, f=form: jnp.sum(f(x, w) ** 2), argnums=(0, 1)),
                    compiler_options=opts,
                )
                err = float(np.max(np.abs(np.asarray(fwd(x, w)) - ref)))
                tf, tg = timed(fwd, args.repeats, x, w), timed(grad, args.repeats, x, w)
                print(
                    f"{spec:22s} {name:9s} {oname:7s} fwd {tf * 1e3:7.1f} ms "
                    f"{flops / tf / 1e9:4.0f} GFLOP/s  fwd+bwd {tg * 1e3:7.1f} ms "
                    f"{3 * flops / tg / 1e9:4.0f} GFLOP/s  "
                    f"err {err:.1e}",
                    flush=True,
                )
        if not args.no_torch:
            import torch

            tx = torch.from_numpy(np.asarray(x)).permute(0, 4, 1, 2, 3).contiguous()
            tx.requires_grad_(True)
            conv = torch.nn.Conv3d(ci, co, 3, padding=1, bias=False)

            tf = timed(torch_forward, args.repeats, conv, tx)
            tg = timed(torch_grad, args.repeats, conv, tx)
            print(
                f"{spec:22s} {'torch':9s} {'oneDNN':7s} fwd {tf * 1e3:7.1f} ms "
                f"{flops / tf / 1e9:4.0f} GFLOP/s  fwd+bwd {tg * 1e3:7.1f} ms "
                f"{3 * flops / tg / 1e9:4.0f} GFLOP/s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
