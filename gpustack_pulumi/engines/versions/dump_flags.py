"""Dump the command-line flags an installed engine accepts, as the JSON flag table this package keeps.

Not imported by the package: a maintenance tool. Run it with the Python of an environment where the engine
is installed (no GPU needed; vLLM is told it runs on the CPU platform so its device check passes)::

    python dump_flags.py vllm > vllm-0.33.0.json
    python dump_flags.py sglang > sglang-0.5.23.json
    python dump_flags.py llama-cpp-python > llama-cpp-python-0.3.36.json

The tables are the engines' own argparse parsers, so a flag we generate that is not in the table is a flag
the engine would reject.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys


def _actions_table(parser: argparse.ArgumentParser) -> dict[str, dict[str, object]]:
    table: dict[str, dict[str, object]] = {}
    for option, action in sorted(parser._option_string_actions.items()):
        if option in ("-h", "--help"):
            continue
        try:
            choices = sorted(str(choice) for choice in action.choices) if action.choices else None
        except TypeError:  # a choices object that cannot be listed
            choices = None
        table[option] = {"takes_value": action.nargs != 0, "choices": choices}
    return table


def vllm_parser() -> tuple[str, str, argparse.ArgumentParser]:
    import vllm
    import vllm.platforms as platforms
    from vllm.platforms.cpu import CpuPlatform

    platforms._current_platform = CpuPlatform()  # no GPU on the machine that dumps the table
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:
        from vllm.entrypoints.common.cli_args import make_arg_parser
    except ImportError:  # before 0.2x the serve parser lived in the openai package
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    return (
        vllm.__version__,
        "vllm.entrypoints.*.cli_args.make_arg_parser (vllm serve)",
        make_arg_parser(FlexibleArgumentParser()),
    )


def sglang_parser() -> tuple[str, str, argparse.ArgumentParser]:
    import sglang
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return sglang.__version__, "sglang.srt.server_args.ServerArgs.add_cli_args (sglang.launch_server)", parser


def llama_cpp_python_parser() -> tuple[str, str, argparse.ArgumentParser]:
    import llama_cpp
    from llama_cpp.server.cli import add_args_from_model
    from llama_cpp.server.settings import Settings

    parser = argparse.ArgumentParser()
    add_args_from_model(parser, Settings)
    parser.add_argument("--config_file")  # added by llama_cpp/server/__main__.py
    return llama_cpp.__version__, "llama_cpp.server.__main__ (Settings fields + --config_file)", parser


DUMPERS = {"vllm": vllm_parser, "sglang": sglang_parser, "llama-cpp-python": llama_cpp_python_parser}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in DUMPERS:
        print(f"usage: dump_flags.py {{{','.join(DUMPERS)}}}", file=sys.stderr)
        return 2
    version, where, parser = DUMPERS[argv[0]]()
    document = {
        "engine": argv[0],
        "version": version,
        "source": f"argparse parser of the {argv[0]} {version} package from PyPI: {where}",
        "dumped_on": datetime.date.today().isoformat(),
        "flags": _actions_table(parser),
    }
    json.dump(document, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
