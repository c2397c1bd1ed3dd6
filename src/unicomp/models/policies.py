"""The policies behaviour cloning trains besides the Decision Transformer, and a run's policy
rebuilt from what its metrics.json records (``policy_spec`` / ``build_policy``).

BC (paper sec. 5, "imitation learning"): regress the data's actions from states, no returns.
Two policies, both trained by the one loop through ``DTTask(use_returns=False)``:

* ``dt-noreturn``: the DT network itself without return-to-go tokens
  (``DecisionTransformerConfig(use_returns=False)``: tokens s_1, a_1, s_2, ... over K steps).
  The paper runs its Atari BC with the DT architecture.
* ``mlp``: an MLP from the current state to the action (``MLPPolicy``). Departure: the
  official gym code's BC (``MLPBCModel``) reads the last K states concatenated and is trained
  on the last action of each window; ours reads one state (the MuJoCo states are Markov) and
  is trained on every real step of a window, so a window of K steps gives K examples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from unicomp.errors import DataError


@dataclass
class MLPPolicyConfig:
    state_dim: int
    act_dim: int
    discrete: bool = False
    hidden_size: int = 128
    n_layer: int = 3  # hidden layers (the official MLPBCModel's n_layer)
    dropout: float = 0.1
    action_tanh: bool = True
    max_ep_len: int = 1000  # unused by the network; DTAgent reads it


class MLPPolicy(nn.Module):
    """Behaviour cloning by an MLP from each step's state to its action.

    ``forward(x, mask)`` takes the DT's batch (x["states"] (B, K, obs)) and returns (B, K, act):
    actions in [-1, 1] (tanh) or logits (discrete); the other inputs are ignored. It also has
    the DT's acting interface (``start``/``step``/``record_action``), so
    ``unicomp.rl.evaluate.DTAgent`` drives it unchanged.
    """

    def __init__(self, config: MLPPolicyConfig):
        super().__init__()
        self.config = c = config
        layers: list[nn.Module] = []
        width = c.state_dim
        for _ in range(c.n_layer):
            layers += [nn.Linear(width, c.hidden_size), nn.ReLU(), nn.Dropout(c.dropout)]
            width = c.hidden_size
        layers.append(nn.Linear(width, c.act_dim))
        if c.action_tanh and not c.discrete:
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, x: dict[str, torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        states = x["states"]
        if states.dim() != 3:
            raise DataError(
                f"the MLP policy takes vector states (B, K, obs); got shape {tuple(states.shape)} "
                f"(image states need --policy dt-noreturn)"
            )
        return self.net(states)

    # --- acting: the DT's interface, without memory ---------------------------------------
    def start(self, batch_size: int, window: str = "exact") -> None:
        return None

    @torch.no_grad()
    def step(self, rollout, returns_to_go, state: torch.Tensor, timestep) -> torch.Tensor:
        return self.net(state)

    def record_action(self, rollout, action: torch.Tensor) -> None:
        pass


def build_policy(spec: dict) -> nn.Module:
    """The network a run trained, from the ``model_config`` its metrics.json records:
    ``{"kind": "dt" | "mlp", **config fields}``."""
    from unicomp.models.decision_transformer import DecisionTransformerConfig, decision_transformer

    fields = dict(spec)
    kind = fields.pop("kind", "dt")
    if kind == "mlp":
        return MLPPolicy(MLPPolicyConfig(**fields))
    if kind != "dt":
        raise DataError(f"unknown model kind {kind!r} in model_config (expected dt or mlp)")
    if fields.get("image_shape") is not None:
        fields["image_shape"] = tuple(fields["image_shape"])
    return decision_transformer(DecisionTransformerConfig(**fields))


def policy_spec(model: nn.Module) -> dict:
    """What ``build_policy`` needs to rebuild ``model`` (JSON-ready)."""
    kind = "mlp" if isinstance(model, MLPPolicy) else "dt"
    fields = dataclasses.asdict(model.config)  # type: ignore[arg-type]
    if fields.get("image_shape") is not None:
        fields["image_shape"] = list(fields["image_shape"])
    return {"kind": kind, **fields}
