"""gpustack-runtime: the node agent of gpustack-pulumi.

This distribution never imports ``gpustack_pulumi``; ``gpustack_pulumi`` imports its wire models
(:mod:`gpustack_runtime.wire`) and nothing else.
"""

__version__ = "0.1.0"
