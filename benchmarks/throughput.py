"""Train-step and eval throughput (img/s) and step memory, ours vs the official PyTorch model.

Usage: python benchmarks/throughput.py [--backbones resnet50,swin_transformer_base] [--stage 2]
         [--batch 8] [--steps 3] [--official PATH_TO_ME-GraphAU] [--memory-batch 64] [--compare-layouts]

Both models run on this machine in the same process, fp32, 224 px, the same batch size; a train
step is forward + backward + AdamW update (ours: one jitted function over nnx.split state; the
official: its modules with torch.optim.AdamW). Memory: XLA's compiled memory analysis of our train
step at --memory-batch (temporaries + arguments), streaming MEFL vs the direct form.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from megraph_jax import numerics, task
from megraph_jax.model_factory import ModelSpec, build


def _train_step_fn(graphdef, tx, lam: float):
  def step(state, opt_state, images, labels):
    model = nnx.merge(graphdef, *state)

    def loss_fn(model):
      return task.loss_terms(model(images), {"label": labels}, None, lam)["total"]  # L_WA (+ lam L_E)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    params, rest = nnx.state(model, nnx.Param, ...)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), rest), opt_state, loss

  return step


def _ours(backbone, stage, batch, img=224, streaming=True):
  model = build(ModelSpec(backbone, 12, stage, img_size=img))
  if stage == 2:
    model.mefl.streaming = streaming
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(1e-4, weight_decay=5e-4)
  opt_state = tx.init(params)
  train = jax.jit(_train_step_fn(graphdef, tx, 0.05), donate_argnums=(0, 1))
  model.eval()
  egd, est = nnx.split(model)
  est = jax.tree.map(jnp.copy, est)  # the train state is donated; keep the eval copy separate
  evaluate = jax.jit(lambda s, x: nnx.merge(egd, s)(x)["au_probs"])
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(batch, img, img, 3)).astype("f4"))
  labels = jnp.asarray((rng.random((batch, 12)) > 0.6).astype("f4"))
  return train, (params, rest), opt_state, evaluate, est, images, labels


def _time(fn, steps):
  fn()  # compile / warm up
  t0 = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - t0) / steps


def bench_ours(backbone, stage, batch, steps):
  train, state, opt_state, evaluate, est, images, labels = _ours(backbone, stage, batch)
  box = {"s": state, "o": opt_state}

  def one_train():
    box["s"], box["o"], loss = train(box["s"], box["o"], images, labels)
    loss.block_until_ready()

  t_train = _time(one_train, steps)
  t_eval = _time(lambda: evaluate(est, images).block_until_ready(), steps)
  return batch / t_train, batch / t_eval


def memory_ours(backbone, stage, batch, streaming, remat=False):
  """Bytes of temporaries + arguments of the compiled train step (XLA memory analysis)."""
  model = nnx.eval_shape(lambda: build(ModelSpec(backbone, 12, stage)))
  model.set_remat(remat)
  if stage == 2:
    model.mefl.streaming = streaming
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(1e-4, weight_decay=5e-4)
  opt_state = jax.eval_shape(tx.init, params)
  images = jax.ShapeDtypeStruct((batch, 224, 224, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((batch, 12), jnp.float32)
  compiled = jax.jit(_train_step_fn(graphdef, tx, 0.05)).lower((params, rest), opt_state, images, labels).compile()
  m = compiled.memory_analysis()
  return m.temp_size_in_bytes + m.argument_size_in_bytes


def memory_head(backbone, batch, streaming):
  """Bytes of the compiled forward+backward of the stage-2 head alone (X after the backbone -> loss)."""
  model = nnx.eval_shape(lambda: build(ModelSpec(backbone, 12, 2)))
  model.mefl.streaming = streaming
  model.train()
  graphdef, state = nnx.split(model)
  feats = jax.ShapeDtypeStruct((batch, 49, model.backbone.num_features), jnp.float32)

  def loss(state, x):
    m = nnx.merge(graphdef, state)
    out = nnx.value_and_grad(lambda m: jnp.sum(m.head(m.global_linear(x))["edge_logits"]))(m)
    return out

  m = jax.jit(loss).lower(state, feats).compile().memory_analysis()
  return m.temp_size_in_bytes + m.argument_size_in_bytes


def bench_official(path, backbone, stage, batch, steps):
  import torch  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
  from check_official_parity import _official_model  # pylint: disable=import-outside-toplevel
  from make_golden import _CpuAsDevice0  # pylint: disable=import-outside-toplevel

  net = _official_model(path, stage, backbone, 12, 4)
  opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=5e-4)
  images = torch.randn(batch, 3, 224, 224)
  labels = (torch.rand(batch, 12) > 0.6).float()
  rel = (2 * labels[:, :, None] + labels[:, None, :]).long().view(batch, -1)

  def one_train():
    net.train()
    with _CpuAsDevice0(torch):
      out = net(images)
    probs = out if stage == 1 else out[0]
    loss = -(labels * torch.log(probs.clamp(min=1e-8))).mean()
    if stage == 2:
      loss = loss + 0.05 * torch.nn.functional.cross_entropy(out[1].reshape(-1, 4), rel.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()

  def one_eval():
    net.eval()
    with torch.no_grad(), _CpuAsDevice0(torch):
      net(images)

  return batch / _time(one_train, steps), batch / _time(one_eval, steps)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--backbones", default="resnet50,swin_transformer_base")
  p.add_argument("--stage", type=int, default=2)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--official", default=None)
  p.add_argument("--memory-batch", type=int, default=64)
  p.add_argument(
    "--compare-layouts",
    action="store_true",
    help="time ours with both layouts of PointwiseConv/FlatLinear: 2-D matmuls (XLA:CPU's) and plain nnx.Conv/Linear",
  )
  p.add_argument("--precision", choices=numerics.PRECISIONS, default="default", help="float32 matmul precision")
  args = p.parse_args(argv)
  print(f"devices: {jax.devices()}  batch {args.batch}, 224 px, fp32, stage {args.stage}")
  with numerics.compute_settings(precision=args.precision):
    for backbone in args.backbones.split(","):
      _bench_backbone(args, backbone)


def _bench_backbone(args, backbone: str) -> None:
  tr, ev = bench_ours(backbone, args.stage, args.batch, args.steps)
  row = f"{backbone:22s} ours: train {tr:6.2f} img/s, eval {ev:6.2f} img/s"
  if args.official:
    otr, oev = bench_official(args.official, backbone, args.stage, args.batch, args.steps)
    row += f" | official: train {otr:6.2f}, eval {oev:6.2f} | ratio train {tr / otr:.2f}x, eval {ev / oev:.2f}x"
  print(row, flush=True)
  if args.compare_layouts:
    speeds = {}
    for layout in ("cpu", "plain"):
      with numerics.compute_settings(precision=args.precision, layout=layout):
        speeds[layout] = bench_ours(backbone, args.stage, args.batch, args.steps)
    (ctr, cev), (ptr, pev) = speeds["cpu"], speeds["plain"]
    print(
      f"{'':22s} 2-D matmul layouts: train {ctr:6.2f}, eval {cev:6.2f} img/s | plain nnx.Conv/Linear: train "
      f"{ptr:6.2f}, eval {pev:6.2f} img/s | matmul layouts speed-up train {ctr / ptr:.2f}x, eval {cev / pev:.2f}x",
      flush=True,
    )
  if args.stage == 2 and args.memory_batch:
    hs, hd = memory_head(backbone, args.memory_batch, True), memory_head(backbone, args.memory_batch, False)
    print(
      f"{'':22s} head-only (global_linear..edge FC) fwd+bwd memory at batch {args.memory_batch}: streaming "
      f"{hs / 2**30:.2f} GiB, direct {hd / 2**30:.2f} GiB, ratio {hs / hd:.2f}",
      flush=True,
    )
    for remat in (False, True):
      ms = memory_ours(backbone, 2, args.memory_batch, True, remat)
      md = memory_ours(backbone, 2, args.memory_batch, False, remat)
      print(
        f"{'':22s} train-step memory at batch {args.memory_batch} (backbone remat {remat}): streaming "
        f"{ms / 2**30:.2f} GiB, direct {md / 2**30:.2f} GiB, ratio {ms / md:.2f}",
        flush=True,
      )


if __name__ == "__main__":
  main()
