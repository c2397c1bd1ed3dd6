"""The training stage of ``unicomp dt external`` (unicomp.experiments.external), run by the
python of the d3rlpy venv (d3rlpy pins an older gymnasium than ours), so it imports nothing
of unicomp: d3rlpy's CQL (DiscreteCQL with --discrete) or IQL, its default settings, trained
for --steps gradient steps on OUT/data.npz; writes the greedy policy as TorchScript
(OUT/policy.pt, d3rlpy's scalers inside) and d3rlpy's loss log (OUT/d3rlpy_log.json).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import d3rlpy
import numpy as np
import torch

CONFIGS = {
    ("cql", False): d3rlpy.algos.CQLConfig,
    ("cql", True): d3rlpy.algos.DiscreteCQLConfig,
    ("iql", False): d3rlpy.algos.IQLConfig,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", choices=("cql", "iql"), required=True)
    p.add_argument("--out", required=True, help="run folder holding data.npz")
    p.add_argument("--steps", type=int, required=True, help="gradient steps")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--device", default="cpu:0", help="d3rlpy's training device [cpu:0]")
    p.add_argument("--discrete", action="store_true", help="discrete actions")
    args = p.parse_args()
    out = Path(args.out)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    d3rlpy.seed(args.seed)
    arrays = np.load(out / "data.npz")
    kwargs = {"action_space": d3rlpy.ActionSpace.DISCRETE} if args.discrete else {}
    dataset = d3rlpy.dataset.MDPDataset(
        arrays["observations"],
        arrays["actions"],
        arrays["rewards"],
        arrays["terminals"],
        timeouts=arrays["timeouts"],
        **kwargs,
    )
    config = CONFIGS[args.algo, args.discrete]()
    model = config.create(device=args.device)
    t0 = time.perf_counter()
    log = model.fit(
        dataset,
        n_steps=args.steps,
        n_steps_per_epoch=min(args.steps, 1000),
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        show_progress=False,
        save_interval=10**9,
    )
    seconds = time.perf_counter() - t0
    model.save_policy(str(out / "policy.pt"))
    record = {
        "train_seconds": round(seconds, 2),
        "d3rlpy": d3rlpy.__version__,
        "config": json.loads(config.serialize()) if hasattr(config, "serialize") else str(config),
        "epochs": [{"epoch": e, **{k: float(v) for k, v in m.items()}} for e, m in log],
    }
    (out / "d3rlpy_log.json").write_text(json.dumps(record, indent=2, default=str))


if __name__ == "__main__":
    main()
