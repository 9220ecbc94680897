"""``gpustack-pulumi``: the command line for people and for CI.

Exit codes: 0 success, 1 the answer is "no" (e.g. a model that does not fit), 2 bad input (the message names the
problem and the valid choices).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rich.console import Console

from gpustack_pulumi import __version__

EXIT_OK = 0
EXIT_DOES_NOT_FIT = 1
EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    from gpustack_pulumi.estimate import add_estimate_parser

    parser = argparse.ArgumentParser(
        prog="gpustack-pulumi",
        description="GPU model serving as infrastructure as code: analyse models, plan placements, deploy.",
        epilog="exit codes: 0 success; 1 the answer is no (a model does not fit, a replica is unplaced); "
        "2 bad input (the message names the option or field and the valid choices).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_estimate_parser(subparsers)
    try:
        from gpustack_pulumi.placement.cli_plan import add_plan_parser
    except ImportError:  # placement CLI not present in this build
        pass
    else:
        add_plan_parser(subparsers)
    from gpustack_pulumi.preview import add_preview_parser

    add_preview_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "json", False) and getattr(args, "markdown", False):
        # argparse's own wording and exit status for conflicting options (the preview parser is not ours).
        print(
            f"gpustack-pulumi {args.command}: error: argument --markdown: not allowed with argument --json "
            "(choose one output format)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if args.command == "estimate":
        return run_estimate(args)
    if args.command == "preview":
        from gpustack_pulumi.preview import run_preview

        return run_preview(args)
    if args.command == "plan":
        from gpustack_pulumi.placement.cli_plan import run_plan

        return run_plan(args)
    parser.error(f"unknown command {args.command}")  # pragma: no cover - argparse rejects it first
    return EXIT_BAD_INPUT


def run_estimate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from gpustack_pulumi.analysis.errors import AnalysisError
    from gpustack_pulumi.analysis.tensors import ModelFileError
    from gpustack_pulumi.engines.base import EngineRefusal
    from gpustack_pulumi.estimate import EstimateError, estimate_model, render

    try:
        result = estimate_model(
            args.model,
            gpu=args.gpu,
            tp=args.tp,
            pp=args.pp,
            engine=args.engine,
            max_model_len=args.max_model_len,
            concurrency=args.concurrency,
            memory_fraction=args.gpu_memory_utilization,
            kv_cache_dtype=args.kv_cache_dtype,
            quantization=args.quantization,
            show_launch=args.show_launch,
        )
    except ValidationError as exc:  # a value a model of ours rejected: name the field, never a traceback
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "input"
        print(f"gpustack-pulumi estimate: error: {field}: {first['msg']}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (EstimateError, AnalysisError, ModelFileError, LookupError, EngineRefusal, ValueError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, LookupError) and exc.args else str(exc)
        print(f"gpustack-pulumi estimate: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        render(result, Console())
    return EXIT_OK if result.get("fits", True) else EXIT_DOES_NOT_FIT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
