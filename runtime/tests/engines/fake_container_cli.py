"""A stand-in for the docker/podman CLI: records every call, and for ``run`` executes the container's command
as a plain process the way the real CLI in the foreground would behave for the supervisor (same pid lifetime,
output on stdout, environment only from ``-e NAME``).

Usage: FAKE_CONTAINER_CLI_RECORD=/path/calls.jsonl fake_container_cli.py run|rm ...
"""

from __future__ import annotations

import json
import os
import sys

OPTIONS_WITH_VALUE = {"--name", "--ipc", "--gpus", "--device", "-p", "--network", "-e", "--entrypoint"}
FLAGS = {"-d"}


def main(argv: list[str]) -> int:
    with open(os.environ["FAKE_CONTAINER_CLI_RECORD"], "a") as record:
        record.write(json.dumps(argv) + "\n")
    if not argv or argv[0] not in ("run", "rm"):
        print(f"fake container cli: unsupported command {argv[:1]}", file=sys.stderr)
        return 2
    if argv[0] == "rm":
        return 0
    position = 1
    env_names: list[str] = []
    name = ""
    entrypoint: list[str] = []
    while argv[position] in OPTIONS_WITH_VALUE or argv[position] in FLAGS:
        option = argv[position]
        if option in FLAGS:
            position += 1
            continue
        value = argv[position + 1]
        if option == "-e":
            env_names.append(value)
        if option == "--name":
            name = value
        if option == "--entrypoint":
            entrypoint = [value]
        position += 2
    image, command = argv[position], entrypoint + argv[position + 1 :]
    environment = {env_name: os.environ[env_name] for env_name in env_names}
    environment |= {"PATH": os.environ.get("PATH", ""), "FAKE_CONTAINER_IMAGE": image, "FAKE_CONTAINER_NAME": name}
    os.execvpe(command[0], command, environment)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
