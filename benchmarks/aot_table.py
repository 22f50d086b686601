"""The README's TPU table: compiles cells with ``python -m megraph_jax.launch.aot`` and renders what was measured.

  python benchmarks/aot_table.py run r50:bf16:v4-8:64 swin:fp32:v5e-8:64:fsdp   # one aot command per cell
  python benchmarks/aot_table.py queue benchmarks/aot/queue.txt                   # cells of a file, one a line
  python benchmarks/aot_table.py table                                            # Markdown from benchmarks/aot/

A cell is MODEL:DTYPE:SLICE:GLOBAL_BATCH[:fsdp][:remat] with MODEL r50 (configs/bp4d_resnet50.py) or
swin (configs/bp4d_swin.py), DTYPE bf16 or fp32; every cell compiles the stage-2 train step only
(``--steps=train``: it holds the most memory; the eval step is forward-only). Each writes
``benchmarks/aot/<cell>.json`` holding the report and the exact command; cells already there are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megraph_jax.launch import aot, tpu_topology  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, "aot")
CONFIGS = {"r50": "configs/bp4d_resnet50.py", "swin": "configs/bp4d_swin.py"}
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def command(cell: str) -> list[str]:
  """The ``python -m megraph_jax.launch.aot`` command of a cell."""
  model, dtype, topology, batch, *flags = cell.split(":")
  args = [
    "python",
    "-m",
    "megraph_jax.launch.aot",
    f"--config={CONFIGS[model]}",
    f"--topology={topology}",
    "--steps=train",
    f"--config.model.dtype={DTYPES[dtype]}",
    f"--config.batch_size={int(batch)}",
  ]
  for flag in flags:
    args.append({"fsdp": "--config.sharding.params=fsdp", "remat": "--config.model.remat=True"}[flag])
  return args + [f"--json={os.path.join('benchmarks', 'aot', cell.replace(':', '_') + '.json')}"]


def run(cells: list[str]) -> None:
  os.makedirs(OUT, exist_ok=True)
  for cell in cells:
    path = os.path.join(OUT, cell.replace(":", "_") + ".json")
    if os.path.isfile(path):
      continue
    cmd = command(cell)
    print(" ".join(cmd), flush=True)
    proc = subprocess.run(
      ["nice", "-n", "5", sys.executable] + cmd[1:], cwd=REPO, capture_output=True, text=True, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("|")]
    print("\n".join(lines) or proc.stderr[-2000:], f"\nexit status {proc.returncode}", flush=True)
    if proc.returncode == 2:
      with open(path, "w") as f:
        json.dump({"cell": cell, "error": proc.stderr.strip().splitlines()[-1], "command": " ".join(cmd)}, f)


def _gib(b: float) -> str:
  return f"{b / 2**30:.1f}"


def _coll(t: dict) -> str:
  short = {
    "all-reduce": "AR",
    "all-gather": "AG",
    "reduce-scatter": "RS",
    "collective-permute": "CP",
    "all-to-all": "A2A",
  }
  c = t["collectives"]
  mib = sum(v["bytes"] for v in c.values()) / 2**20
  return (" ".join(f"{short[k]}x{v['count']}" for k, v in sorted(c.items())) + f" ({mib:.0f} MiB)") if c else "none"


def table() -> str:
  rows = []
  for name in sorted(os.listdir(OUT)):
    if not name.endswith(".json"):
      continue
    with open(os.path.join(OUT, name)) as f:
      r = json.load(f)
    if "error" in r:
      rows.append((r["cell"], f"| {r['cell']} | refused: {r['error'].removeprefix('error: ')} |"))
      continue
    t, m = r["train"], r["train"].get("memory")
    if m is not None:  # the step model of the current aot.py, from the stored figures
      chip = tpu_topology.CHIPS[r["chip"]]
      t.update(aot.step_time(t, chip, r["chips"], r["global_batch"], r["hosts"], r["mfu"]))
    model = {"resnet50": "ResNet-50", "swin_transformer_base": "Swin-B"}.get(r["backbone"], r["backbone"])
    dtype = {"bfloat16": "bf16", "float32": "fp32"}[r["dtype"]]
    layout = r["params_mode"] + (" + remat" if r["remat"] else "")
    if m is None:  # XLA:TPU refused: the temporaries alone exceed the usable HBM
      need = f"temps {_gib(t['required'])} > {_gib(t['available'])} usable" if "required" in t else t["oom"]
      rows.append(
        (
          (model, dtype, r["chip"], r["chips"], r["global_batch"], layout),
          f"| {model} | {dtype} | {r['pod_type']} ({r['chips']} chips, {r['hosts']} hosts) | "
          f"{r['global_batch']} / {r['per_chip_batch']} | {layout} | {need} (XLA refuses) | **no** | | | | "
          f"| {t['compile_s']:.0f} |",
        )
      )
      continue
    rows.append(
      (
        (model, dtype, r["chip"], r["chips"], r["global_batch"], layout),
        f"| {model} | {dtype} | {r['pod_type']} ({r['chips']} chips, {r['hosts']} hosts) | "
        f"{r['global_batch']} / {r['per_chip_batch']} | {layout} | "
        f"{_gib(m['arguments'])} + {_gib(m['temporaries'])} = **{_gib(m['total'])}** of "
        f"{r['hbm_capacity'] / 2**30:.0f} | {'yes' if r['fits'] else '**no**'} | "
        f"{t['flops_per_chip'] / 1e12:.2f} | {_coll(t)} | "
        f"{1e3 * t['compute_s']:.1f} / {1e3 * t['collective_s']:.1f} | "
        f"{t['images_per_s']:,.0f} / {t['images_per_s_per_host']:,.0f} | {t['compile_s']:.0f} |",
      )
    )
  rows.sort(key=lambda r: r[0] if isinstance(r[0], tuple) else ("~", "", 0, "", 0, r[0]))
  head = (
    "| model | dtype | slice | batch global / per chip | parameters | train-step HBM per chip, GiB: args + temps "
    "= total of capacity | fits | TFLOP per chip per step | collectives (result MiB) | "
    "step ms: compute at 40% MFU / collectives over ICI | "
    "img/s slice / per host | compile s |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
  )
  return "\n".join([head] + [r[1] for r in rows])


def main(argv: list[str]) -> int:
  if not argv or argv[0] not in ("run", "queue", "table"):
    print(__doc__)
    return 2
  if argv[0] == "run":
    run(argv[1:])
  elif argv[0] == "queue":  # re-read after every cell: lines may be added while it runs
    done: set[str] = set()
    while True:
      with open(argv[1]) as f:
        todo = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#") and ln.strip() not in done]
      if not todo:
        break
      run([todo[0]])
      done.add(todo[0])
  else:
    print(table())
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
