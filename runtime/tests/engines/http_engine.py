"""A tiny stand-in inference engine for supervisor tests: a real process with a real HTTP port.

It answers 200 on /v1/models (the default health path), /env with its environment and /argv with its command
line, so tests can check what the supervisor gave it. Options make it slow to become ready, crash with a code,
fork a child (to test process-group stops) or ignore SIGTERM (to test the SIGKILL after the grace period).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHILD_CODE = """
import signal, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("child ready", flush=True)
while True:
    time.sleep(1)
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ready-after", type=float, default=0.0, help="seconds before it starts listening")
    parser.add_argument("--exit-code", type=int, default=None, help="exit with this code instead of serving")
    parser.add_argument("--spawn-child", metavar="PID_FILE", help="fork a sleeping child; write its pid here")
    parser.add_argument("--child-ignores-sigterm", action="store_true")
    parser.add_argument(
        "--spawn-setsid-grandchild",
        metavar="PID_FILE",
        help="like a Ray helper: a grandchild that calls setsid (own session and group), ignores SIGTERM and whose "
        "parent exits, so it is in neither the engine's process group nor its process tree; its pid goes here",
    )
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--say", action="append", default=[], help="print this line at start")
    return parser.parse_args(argv)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        routes = {
            "/v1/models": {"object": "list", "data": [{"id": "fake", "object": "model"}], "pid": os.getpid()},
            "/env": dict(os.environ),
            "/argv": sys.argv,
        }
        if self.path not in routes:
            self.send_error(404)
            return
        payload = json.dumps(routes[self.path]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        print(f"request {format % args}", flush=True)


def spawn_setsid_grandchild(pid_file: str) -> None:
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        if os.fork() == 0:
            os.setsid()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.write(write_end, str(os.getpid()).encode())
            os.close(write_end)
            while True:
                time.sleep(1)
        os._exit(0)  # the grandchild is reparented: out of the engine's tree
    os.close(write_end)
    os.waitpid(child, 0)
    grandchild = os.read(read_end, 32).decode()
    os.close(read_end)
    with open(pid_file, "w") as file:
        file.write(grandchild)


def main(argv: list[str]) -> int:
    options = parse_args(argv)
    for line in options.say:
        print(line, flush=True)
    if options.spawn_child:
        mode = "ignore" if options.child_ignores_sigterm else "default"
        child = subprocess.Popen([sys.executable, "-c", CHILD_CODE, mode], stdout=subprocess.PIPE)
        assert child.stdout is not None
        child.stdout.readline()  # its signal disposition is set: tests may rely on it once we are ready
        with open(options.spawn_child, "w") as pid_file:
            pid_file.write(str(child.pid))
    if options.spawn_setsid_grandchild:
        spawn_setsid_grandchild(options.spawn_setsid_grandchild)
    if options.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        # Exit 0 on SIGTERM like a well-behaved server (uvicorn's graceful shutdown).
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    time.sleep(options.ready_after)
    if options.exit_code is not None:
        print(f"exiting with code {options.exit_code}", flush=True)
        return options.exit_code
    server = ThreadingHTTPServer((options.host, options.port), Handler)
    print(f"listening on {options.host}:{options.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
