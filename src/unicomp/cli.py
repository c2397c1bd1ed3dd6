"""Command line: ``unicomp list | demo | fpt train``.

Errors a user can act on (unknown names, missing weights, bad files) print as one line
``unicomp: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import unicomp.catalog  # noqa: F401  (registers everything; imports no torch)
from unicomp.config import FPTConfig, add_dataclass_args
from unicomp.errors import UnicompError
from unicomp.registry import BACKBONES, FREEZE_POLICIES, TASKS


def cmd_list(args: argparse.Namespace) -> None:
    for title, registry in (
        ("tasks", TASKS),
        ("backbones", BACKBONES),
        ("freeze policies", FREEZE_POLICIES),
    ):
        print(f"{title}:")
        for entry in registry:
            extra = ""
            if registry is FREEZE_POLICIES:
                extra = f" [trains: {', '.join(sorted(entry.load()))}]"
            print(f"  {entry.name:<14} {entry.help}{extra}")
    print("  (also: random:<name>, any hub id owner/name, or a local model folder)")


def cmd_fpt_train(args: argparse.Namespace) -> None:
    from unicomp.config import resolve
    from unicomp.experiments import run_fpt, task_defaults

    if args.resume:
        if not args.out:
            raise UnicompError("--resume needs --out DIR, the folder of the run to continue")
        args.config = args.config or str(Path(args.out) / "config.yaml")
    cfg = resolve(FPTConfig, args, task_defaults)
    metrics = run_fpt(cfg, resume=args.resume)
    keys = (
        "task",
        "backbone",
        "freeze",
        "test_accuracy",
        "steps",
        "steps_to_target",
        "trainable_params",
        "total_params",
        "train_seconds",
        "backbone_source",
    )
    print(json.dumps({k: metrics[k] for k in keys}, indent=2))
    print(f"run folder: {cfg.out}")


def cmd_demo(args: argparse.Namespace) -> None:
    from unicomp.demo import run_demo

    run_demo(out=Path(args.out), backbone=args.backbone, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unicomp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered tasks, backbones and freeze policies")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("demo", help="FPT on the bit tasks: pretrained vs random init, as a table")
    p.add_argument("--out", default="runs/demo", help="folder for the demo's run folders")
    p.add_argument("--backbone", default="minilm-l6", help="pretrained backbone to compare")
    p.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    p.set_defaults(func=cmd_demo)

    fpt = sub.add_parser("fpt", help="Frozen Pretrained Transformer").add_subparsers(
        dest="sub", required=True
    )
    p = fpt.add_parser(
        "train",
        help="train an FPT on a task; writes a run folder",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", help="YAML config (a preset in configs/ or a run's config.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_dataclass_args(p, FPTConfig)
    p.set_defaults(func=cmd_fpt_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UnicompError as err:
        print(f"unicomp: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unicomp: interrupted; resume with --resume --out <run folder>", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
