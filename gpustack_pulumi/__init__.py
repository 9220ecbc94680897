"""gpustack-pulumi: GPU model serving as infrastructure as code.

The pure core (``catalog``, ``analysis``, ``placement``, ``engines``) has no network and no Pulumi; providers,
components and the CLI do the I/O.
"""

__version__ = "0.1.0"
