"""Pulumi mocks that record every registered resource and echo its inputs, with the few outputs our providers
compute filled in (agent endpoints, replica endpoints), for resource-graph unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pulumi
from pulumi.runtime import mocks as pulumi_mocks


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi_mocks.MockResourceArgs] = []

    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        self.resources.append(args)
        outputs = dict(args.inputs)
        if args.typ.endswith("LocalAgent"):
            outputs["endpoint"] = "http://127.0.0.1:1"
        if args.typ.endswith("ModelReplica"):
            outputs["endpoint"] = f"http://127.0.0.1:4000{args.inputs['replica']:.0f}/v1"
        return (f"{args.name}-id" if args.custom else None), outputs

    def call(self, args: pulumi_mocks.MockCallArgs) -> dict:
        return {}


@contextmanager
def recording_mocks() -> Iterator[tuple[RecordingMocks, pulumi_mocks.MockMonitor]]:
    """Install the mocks (process-global in Pulumi) for one test, and reset them after."""
    recorder = RecordingMocks()
    monitor = pulumi_mocks.MockMonitor(recorder)
    pulumi.runtime.set_mocks(recorder, preview=False, monitor=monitor)
    try:
        yield recorder, monitor
    finally:
        pulumi.runtime.settings.reset_options()
