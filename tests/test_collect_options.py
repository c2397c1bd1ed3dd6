"""``dt collect``'s option rules (unicomp.rl.collect_options): every combination that does not
go together is a one-line UnicompError naming the flags, raised before anything is rolled
out, trained or written; the command line's flags are exactly the options' fields."""

from __future__ import annotations

import dataclasses
import re

import pytest

from unicomp.cli import build_parser
from unicomp.errors import UnicompError
from unicomp.rl.collect_options import CollectOptions, run_collect

ENV = "Pendulum-v1"


@pytest.mark.parametrize(
    "given, message",
    [
        ({"policy": "random", "steps": 10}, "--steps goes with --suite dqn-replay --from-training"),
        ({"suite": "dqn-replay"}, "--suite dqn-replay goes with --from-training"),
        ({"policy": "random", "eval_every": 5}, "go with --suite medium-replay --from-training"),
        ({"policy": "random", "episodes": 2, "buffers": "0-1"}, "go with --dqn-replay"),
        ({"policy": "random"}, "--episodes is required (except with --dqn-replay)"),
        ({"dqn_replay": "replay", "episodes": 2}, "reads episodes as logged"),
        ({"suite": "random", "episodes": 2, "noise": 0.1}, "--noise goes with --agent or --policy"),
        ({"policy": "random", "episodes": 2, "from_training": "run"}, "goes with --suite"),
        ({"suite": "expert", "episodes": 2, "from_training": "run"}, "medium or medium-expert"),
        ({"suite": "medium", "episodes": 2, "from_training": "run"}, "no sac-agent.zip in run"),
        ({"suite": "expert", "from_training": True}, "trains SAC for --suite medium-replay"),
        ({"suite": "medium-replay", "from_training": True, "episodes": 2}, "whole replay buffer"),
        ({"suite": "dqn-replay", "from_training": True, "noise": 0.1}, "whole stream"),
        (
            {"suite": "dqn-replay", "from_training": True, "medium_return": 1.0},
            "trains for --steps",
        ),
    ],
)
def test_options_that_do_not_go_together_are_refused_before_anything_runs(given, message, tmp_path):
    out = tmp_path / "data"
    with pytest.raises(UnicompError, match=re.escape(message)):
        run_collect(CollectOptions(env=ENV, out=str(out), **given))
    assert not out.exists()


def test_the_command_line_flags_are_the_options_fields():
    args = build_parser().parse_args(
        ["dt", "collect", "--env", ENV, "--policy", "random"] + ["--out", "data"]
    )
    flags = set(vars(args)) - {"command", "sub", "func"}
    fields = {f.name for f in dataclasses.fields(CollectOptions)}
    assert flags == fields
    defaults = CollectOptions(env=ENV, out="data", policy="random")
    assert all(getattr(args, name) == getattr(defaults, name) for name in fields)
