"""Offline-RL methods behind one small interface, :class:`OfflineRLMethod`: what a method
trains on a trajectory data set and how its runs are named and labelled. Everything else of
a run is shared: the data set as the loop's task, the loop, the run folder and acting
(unicomp.experiments.dt for the methods the loop trains: ``unicomp dt train``).

The methods are registered by name in ``unicomp.registry.OFFLINE_RL_METHODS`` (one line each
in unicomp.experiments.catalog): DT, BC and %BC here; d3rlpy's CQL and IQL, trained by another
program (``unicomp dt external``, registered with ``external=True``), as adapters in
unicomp.experiments.external. A new method is one file (a subclass, and an object of it) plus
one ``OFFLINE_RL_METHODS.register(name, "module:OBJECT", help)`` line; ``--algo NAME`` and
config.yaml's ``algo`` then accept it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from unicomp.config import DTConfig
from unicomp.errors import UnicompError

if TYPE_CHECKING:
    from torch import nn


def data_label(data: str) -> str:
    """A data set's folder name, or several joined by "+" (``data/a,data/b`` -> ``a+b``): what
    run folder names and comparison rows call the data."""
    return "+".join(Path(name.strip()).name for name in str(data).split(","))


class OfflineRLMethod:
    """One offline-RL method. ``name`` is its ``--algo``; ``reads_returns``: the policy is
    conditioned on returns-to-go (trained with the data's, acting towards target returns),
    else it acts once, reading none."""

    name: str = ""
    reads_returns: bool = False

    def check(self, cfg: DTConfig) -> None:
        """Refuse settings the method cannot train with (a one-line UnicompError)."""

    def folder_name(self, cfg: DTConfig) -> str:
        """The method's part of the default run folder runs/<this>-<data>-s<seed>."""
        return self.name

    def policy_name(self, cfg: DTConfig) -> str:
        """What metrics.json's ``policy`` (and ``model``) calls the network."""
        return cfg.policy

    def build_policy(self, cfg: DTConfig, task: Any) -> nn.Module:
        """The network the run trains on ``task`` (a unicomp.rl.dt_task.DTTask): ``forward(x,
        mask)`` on the task's batches, and the acting interface of
        unicomp.rl.evaluate.DTAgent (``start``, ``step``, ``record_action``)."""
        raise NotImplementedError(f"offline-RL method {self.name!r} builds no policy")

    def policy_spec(self, model: nn.Module) -> dict:
        """What :meth:`rebuild_policy` needs (JSON-ready; metrics.json's ``model_config``)."""
        from unicomp.models.policies import policy_spec

        return policy_spec(model)

    def rebuild_policy(self, spec: dict) -> nn.Module:
        """The network of a finished run, from its recorded ``model_config``."""
        from unicomp.models.policies import build_policy

        return build_policy(spec)

    def label(self, metrics: dict) -> str:
        """The run's row in ``unicomp dt compare``, from its metrics (DT K=1, %BC 10% (mlp))."""
        return self.name.upper()


def transformer_policy(cfg: DTConfig, task: Any, use_returns: bool) -> nn.Module:
    """The Decision Transformer network of ``cfg`` (``use_returns``: with return-to-go
    tokens; without, the behaviour-cloning DT), on its --backbone where one is named."""
    from unicomp.models.decision_transformer import build_decision_transformer

    obs_shape = task.dataset.obs_shape
    return build_decision_transformer(
        int(obs_shape[0]) if len(obs_shape) == 1 else 0,
        task.act_dim,
        discrete=task.discrete,
        max_length=cfg.context,
        max_ep_len=cfg.max_ep_len,
        hidden_size=cfg.hidden_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        dropout=cfg.dropout,
        attn_implementation=cfg.attn_implementation,
        image_shape=tuple(obs_shape) if len(obs_shape) == 3 else None,
        use_returns=use_returns,
        **_backbone_fields(cfg),
    )


def _backbone_fields(cfg: DTConfig) -> dict:
    """The DT's backbone settings (none for the paper's GPT-2: its defaults)."""
    if not cfg.backbone:
        return {}
    return {"backbone": cfg.backbone, "freeze": cfg.freeze, "backbone_seed": cfg.train.seed}


def mlp_policy(cfg: DTConfig, task: Any) -> nn.Module:
    """The MLP from each state to its action (unicomp.models.policies), of ``cfg``'s sizes."""
    from unicomp.models.policies import MLPPolicy, MLPPolicyConfig

    obs_shape = task.dataset.obs_shape
    if cfg.backbone:
        raise UnicompError("--backbone goes with a transformer policy, not --policy mlp")
    if len(obs_shape) != 1:
        raise UnicompError(f"--policy mlp needs vector states; {cfg.data} has {obs_shape}")
    return MLPPolicy(
        MLPPolicyConfig(
            state_dim=int(obs_shape[0]),
            act_dim=task.act_dim,
            discrete=task.discrete,
            hidden_size=cfg.hidden_size,
            n_layer=cfg.n_layer,
            dropout=cfg.dropout,
            max_ep_len=cfg.max_ep_len,
        )
    )


class DecisionTransformer(OfflineRLMethod):
    """The Decision Transformer: actions from states, past actions and returns-to-go."""

    name = "dt"
    reads_returns = True

    def policy_name(self, cfg: DTConfig) -> str:
        return "decision-transformer"

    def build_policy(self, cfg: DTConfig, task: Any) -> nn.Module:
        return transformer_policy(cfg, task, use_returns=True)

    def label(self, metrics: dict) -> str:
        label = "DT"
        if metrics.get("context", 20) != 20:
            label += f" K={metrics['context']}"
        top = float(metrics.get("top_percent", 100.0))
        return label + (f" top {top:g}%" if top < 100 else "")


class BehaviourCloning(OfflineRLMethod):
    """Behaviour cloning (paper sec. 5): the data's actions regressed from states, on all the
    data, by the DT without return tokens (``--policy dt-noreturn``) or an MLP (``mlp``)."""

    name = "bc"

    def check(self, cfg: DTConfig) -> None:
        if cfg.top_percent < 100:
            raise UnicompError(
                "--algo bc trains on all the data; use --algo pbc with --top-percent"
            )

    def folder_name(self, cfg: DTConfig) -> str:
        network = f"-{cfg.policy}" if cfg.policy != "dt-noreturn" else ""
        return self._prefix(cfg) + network

    def _prefix(self, cfg: DTConfig) -> str:
        return self.name

    def build_policy(self, cfg: DTConfig, task: Any) -> nn.Module:
        if cfg.policy == "mlp":
            return mlp_policy(cfg, task)
        return transformer_policy(cfg, task, use_returns=False)

    def label(self, metrics: dict) -> str:
        return f"{self._title(metrics)} ({metrics.get('policy', 'dt-noreturn')})"

    def _title(self, metrics: dict) -> str:
        return "BC"


class PercentBC(BehaviourCloning):
    """%BC: behaviour cloning on the best ``--top-percent`` of the data's steps by return."""

    name = "pbc"

    def check(self, cfg: DTConfig) -> None:
        pass

    def _prefix(self, cfg: DTConfig) -> str:
        return f"{self.name}{cfg.top_percent:g}"

    def _title(self, metrics: dict) -> str:
        return f"%BC {float(metrics.get('top_percent', 100.0)):g}%"


DT = DecisionTransformer()
BC = BehaviourCloning()
PBC = PercentBC()


def offline_rl_method(name: str) -> OfflineRLMethod:
    """The registered method ``name`` (unicomp.registry.OFFLINE_RL_METHODS)."""
    from unicomp.registry import OFFLINE_RL_METHODS

    return OFFLINE_RL_METHODS.entry(name).load()


def run_label(metrics: dict, algo: str | None = None) -> str:
    """DT, DT K=1, DT delayed, BC (mlp), %BC 10% (dt-noreturn), CQL, ... from a run's metrics
    (its method's :meth:`OfflineRLMethod.label`; a method not registered here: its name in
    capitals)."""
    from unicomp.registry import OFFLINE_RL_METHODS

    algo = algo or metrics.get("algo", "dt")
    method = offline_rl_method(algo) if algo in OFFLINE_RL_METHODS else None
    label = method.label(metrics) if method else algo.upper()
    return label + (" delayed" if metrics.get("delayed_reward") else "")
