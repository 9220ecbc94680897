"""``python -m gpustack_runtime``: the same as the ``gpustack-agent`` command."""

import sys

from gpustack_runtime.cli import main

sys.exit(main())
