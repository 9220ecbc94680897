"""``python -m gpustack_pulumi.gateway usage URL``: tokens in/out, requests and failures per key and model.

The master key comes from ``$GPUSTACK_GATEWAY_MASTER_KEY`` (``pulumi stack output gateway_master_key
--show-secrets``), never from the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from gpustack_pulumi.gateway.client import GatewayError, read_usage

MASTER_KEY_ENV = "GPUSTACK_GATEWAY_MASTER_KEY"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpustack_pulumi.gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    usage = commands.add_parser("usage", help="tokens in/out, requests and failures per key and model")
    usage.add_argument("url", help="the gateway's endpoint (…/v1 or its root)")
    usage.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    master_key = os.environ.get(MASTER_KEY_ENV)
    if not master_key:
        print(f"set {MASTER_KEY_ENV} (pulumi stack output gateway_master_key --show-secrets)", file=sys.stderr)
        return 2
    base = args.url.rstrip("/").removesuffix("/v1")
    try:
        report = read_usage(base, master_key)
    except GatewayError as error:
        print(str(error), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    print(f"{'key':<24} {'model':<24} {'requests':>9} {'failures':>9} {'tokens in':>10} {'tokens out':>10}")
    for alias, models in sorted(report.get("keys", {}).items()):
        for model, row in sorted(models.items()):
            print(f"{alias:<24} {model:<24} {row['requests']:>9} {row['failures']:>9} "
                  f"{row['prompt_tokens']:>10} {row['completion_tokens']:>10}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
