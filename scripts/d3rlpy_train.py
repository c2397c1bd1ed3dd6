"""The training stage of ``unicomp dt external`` (unicomp.experiments.external), run by the
python of the d3rlpy venv (d3rlpy pins an older gymnasium than ours), so it imports nothing
of unicomp: d3rlpy's CQL (DiscreteCQL with --discrete) or IQL, trained for --steps gradient
steps on OUT/data.npz; writes the greedy policy as TorchScript (OUT/policy.pt, d3rlpy's
scalers inside) and d3rlpy's loss log (OUT/d3rlpy_log.json).

Settings: d3rlpy's defaults for vector observations. For frames (observations of shape
(C, H, W), uint8), DiscreteCQL takes the settings of d3rlpy's own reproduction of the CQL
paper on 1% of DQN Replay (reproductions/offline/discrete_cql.py): QR-DQN heads of 200
quantiles, alpha 4.0, lr 5e-5 with Adam eps 1e-2/32, batch 32, target update every 2,000
steps, rewards clipped to [-1, 1], pixels scaled by 1/255; the convolutional encoder is
d3rlpy's Nature network, or, for frames under 36 pixels a side (MinAtar's 10 x 10), MinAtar's
own network (one 3x3 convolution of 16 channels, stride 1, then 128 units), as unicomp's DT
and DQN use there.
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

NATURE_MIN_SIDE = 36  # the Nature convolutions (8/4, 4/2, 3/1) need frames at least this wide


def frame_settings(observations: np.ndarray) -> dict:
    """DiscreteCQL's settings for frames (module docstring), d3rlpy objects by keyword."""
    settings = {
        "learning_rate": 5e-5,
        "optim_factory": d3rlpy.optimizers.AdamFactory(eps=1e-2 / 32),
        "batch_size": 32,
        "alpha": 4.0,
        "q_func_factory": d3rlpy.models.QRQFunctionFactory(n_quantiles=200),
        "target_update_interval": 2000,
        "observation_scaler": d3rlpy.preprocessing.PixelObservationScaler(),
        "reward_scaler": d3rlpy.preprocessing.ClipRewardScaler(-1.0, 1.0),
    }
    if min(observations.shape[2:]) < NATURE_MIN_SIDE:
        settings["encoder_factory"] = d3rlpy.models.PixelEncoderFactory(
            filters=[[16, 3, 1]], feature_size=128
        )
    return settings


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
    frames = arrays["observations"].ndim == 4
    if frames and not (args.algo == "cql" and args.discrete):
        raise SystemExit("frames (C, H, W) are supported with discrete actions and CQL only")
    settings = frame_settings(arrays["observations"]) if frames else {}
    config = CONFIGS[args.algo, args.discrete](**settings)
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
        "settings": "d3rlpy's 1%-DQN-Replay reproduction (frames)" if frames else "d3rlpy defaults",
        "batch_size": config.batch_size,
        "learning_rate": getattr(config, "learning_rate", None),  # IQL: actor and critic rates
        "config": json.loads(config.serialize()) if hasattr(config, "serialize") else str(config),
        "epochs": [{"epoch": e, **{k: float(v) for k, v in m.items()}} for e, m in log],
    }
    (out / "d3rlpy_log.json").write_text(json.dumps(record, indent=2, default=str))


if __name__ == "__main__":
    main()
