"""Layer layouts on this backend: 1x1 convolution vs the same product as a 2-D matmul, and a Linear on
``[B, L, C]`` vs on the flattened ``[B*L, C]`` (forward, input gradient, weight gradient, in ms).

Usage: python benchmarks/layouts.py [--batch 8] [--steps 5]

This is the measurement behind ``PointwiseConv`` and ``FlatLinear`` (``megraph_jax/models/layers.py``):
the same functions, in the layouts XLA's backend runs fastest. Shapes are ResNet-50's bottleneck 1x1
convolutions and Swin-B's Linears at 224 px.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp


def _ms(fn, *args, steps: int) -> float:
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t0) / steps * 1e3


def _row(name: str, op, x: jax.Array, w: jax.Array, steps: int) -> tuple[float, float, float]:
  loss = lambda x, w: jnp.sum(op(x, w) ** 2)
  f = _ms(jax.jit(op), x, w, steps=steps)
  dx = _ms(jax.jit(jax.grad(loss, argnums=0)), x, w, steps=steps)
  dw = _ms(jax.jit(jax.grad(loss, argnums=1)), x, w, steps=steps)
  print(f"  {name:28s} forward {f:7.1f} ms   d/dx {dx:7.1f} ms   d/dw {dw:7.1f} ms", flush=True)
  return f, dx, dw


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args(argv)
  b = args.batch
  print(f"devices: {jax.devices()}; gradients include their forward pass")
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  matmul = lambda x, w: (x.reshape(-1, x.shape[-1]) @ w[0, 0]).reshape(*x.shape[:-1], w.shape[-1])
  for h, c, d in ((56, 256, 64), (56, 64, 256), (14, 1024, 256), (7, 2048, 512)):
    print(f"1x1 conv [{b}, {h}, {h}, {c}] -> {d}")
    x, w = jnp.ones((b, h, h, c)), jnp.full((1, 1, c, d), 0.01)
    ref = _row("lax.conv_general_dilated", conv, x, w, args.steps)
    new = _row("reshape + matmul", matmul, x, w, args.steps)
    print(f"  speed-up: forward {ref[0] / new[0]:.2f}x, d/dx {ref[1] / new[1]:.2f}x, d/dw {ref[2] / new[2]:.2f}x")
  dense3 = lambda x, w: x @ w
  dense2 = lambda x, w: (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])
  for length, c, d in ((3136, 128, 512), (196, 512, 2048), (49, 1024, 4096)):
    print(f"Linear [{b}, {length}, {c}] -> {d}")
    x, w = jnp.ones((b, length, c)), jnp.full((c, d), 0.01)
    ref = _row("[B, L, C] x [C, D]", dense3, x, w, args.steps)
    new = _row("[B*L, C] x [C, D]", dense2, x, w, args.steps)
    print(f"  speed-up: forward {ref[0] / new[0]:.2f}x, d/dx {ref[1] / new[1]:.2f}x, d/dw {ref[2] / new[2]:.2f}x")


if __name__ == "__main__":
  main()
