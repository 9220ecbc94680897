"""The inventory as planning data: flat device arrays, device classes, and the free-memory indices.

Built once per inventory (``Cluster``); a ``ClusterState`` is the mutable free memory during one plan.
Scale decisions (100,000 GPUs, 12,500 nodes):

- devices are integers (``gid``) into flat lists, nodes are integers sorted by name, so every tie breaks
  on a number that follows from the names;
- devices of one class (vendor, product, memory, capability) share every demand computation;
- best fit is a bisect in a sorted list of ``(free, gid)`` per class, and multi-GPU best fit a bisect in a
  sorted list of ``(k-th largest free on the node, node)`` per (class, k): O(log n) per decision instead of
  a scan of the fleet (Borg's equivalence classes, the k8s score-a-few idea).

Free memory of a device = total − claims of allocations we do not own − live foreign memory, where
foreign memory is ``memory_foreign`` when the agent reports it, else ``memory_used − memory_allocated``
(usage that no allocation explains).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from gpustack_runtime.wire import CapacityDocument, Inventory
from sortedcontainers import SortedList

from gpustack_pulumi.placement.demand import CLAIM_GRANULARITY_BYTES, DeviceClass

CPU_VENDOR = "cpu"


@dataclass
class NodeInfo:
    id: int
    name: str
    labels: dict[str, str]
    gids: list[int]
    gids_by_class: dict[int, list[int]]
    host_total: int | None
    host_base_free: int | None


@dataclass
class Cluster:
    """Immutable planning view of an inventory."""

    nodes: list[NodeInfo]
    node_id: dict[str, int]
    classes: list[DeviceClass]
    dev_node: list[int]
    dev_index: list[int]
    dev_class: list[int]
    dev_total: list[int]
    dev_uuid: list[str]
    dev_group: list[str | None]
    dev_base_free: list[int]
    gid_of: dict[tuple[int, int], int] = field(default_factory=dict)
    gid_by_uuid: dict[str, int] = field(default_factory=dict)
    class_nodes: dict[int, list[int]] = field(default_factory=dict)
    cpu_nodes: list[int] = field(default_factory=list)
    class_has_groups: list[bool] = field(default_factory=list)  # any device of the class has a topology group

    @property
    def device_count(self) -> int:
        return len(self.dev_node)

    def describe_device(self, gid: int) -> str:
        return f"{self.nodes[self.dev_node[gid]].name} GPU {self.dev_index[gid]}"


def is_own(owner: str, own_owner_prefix: str | None) -> bool:
    return own_owner_prefix is not None and owner.startswith(own_owner_prefix)


def build_cluster(inventory: Inventory, own_owner_prefix: str | None = None) -> Cluster:
    """Index an inventory. Allocations whose owner starts with ``own_owner_prefix`` are this planner's own
    (the previous plan accounts for them) and are not subtracted; all other allocations are respected."""
    documents: list[CapacityDocument] = sorted(inventory.nodes, key=lambda doc: doc.name)
    class_ids: dict[tuple, int] = {}
    classes: list[DeviceClass] = []
    cluster = Cluster(
        nodes=[],
        node_id={},
        classes=classes,
        dev_node=[],
        dev_index=[],
        dev_class=[],
        dev_total=[],
        dev_uuid=[],
        dev_group=[],
        dev_base_free=[],
    )
    for node_id, doc in enumerate(documents):
        if doc.name in cluster.node_id:
            raise ValueError(f"inventory: node name '{doc.name}' appears twice; node names must be unique")
        other_alloc: dict[int, int] = defaultdict(int)
        own_alloc: dict[int, int] = defaultdict(int)
        host_alloc = 0
        for allocation in doc.allocations:
            target = own_alloc if is_own(allocation.owner, own_owner_prefix) else other_alloc
            if not allocation.device_indices and target is other_alloc:
                host_alloc += allocation.memory_bytes_per_device
            for index in allocation.device_indices:
                target[index] += allocation.memory_bytes_per_device
        gids: list[int] = []
        by_class: dict[int, list[int]] = {}
        for device in sorted(doc.devices, key=lambda d: d.index):
            class_key = (device.vendor, device.product, device.memory_total, device.compute_capability)
            class_id = class_ids.get(class_key)
            if class_id is None:
                class_id = class_ids[class_key] = len(classes)
                classes.append(DeviceClass(*class_key))
                cluster.class_has_groups.append(False)
            if device.topology_group is not None:
                cluster.class_has_groups[class_id] = True
            gid = len(cluster.dev_node)
            if (node_id, device.index) in cluster.gid_of:
                raise ValueError(f"inventory: node '{doc.name}' lists device index {device.index} twice")
            allocated_others = max(
                other_alloc.get(device.index, 0), device.memory_allocated - own_alloc.get(device.index, 0)
            )
            foreign = (
                device.memory_foreign
                if device.memory_foreign is not None
                else max(0, device.memory_used - device.memory_allocated)
            )
            cluster.dev_node.append(node_id)
            cluster.dev_index.append(device.index)
            cluster.dev_class.append(class_id)
            cluster.dev_total.append(device.memory_total)
            cluster.dev_uuid.append(device.uuid)
            cluster.dev_group.append(device.topology_group)
            free = device.memory_total - allocated_others - foreign
            if device.memory_available is not None:
                # What the agent admits (after its safety margin), plus what this planner's own claims hold there:
                # placement never plans a claim the agent would refuse.
                free = min(free, device.memory_available + own_alloc.get(device.index, 0))
            cluster.dev_base_free.append(_whole_units(free))
            cluster.gid_of[(node_id, device.index)] = gid
            cluster.gid_by_uuid[device.uuid] = gid
            gids.append(gid)
            by_class.setdefault(class_id, []).append(gid)
        host_free = None if doc.memory_total is None else _whole_units(doc.memory_total - host_alloc)
        cluster.nodes.append(NodeInfo(node_id, doc.name, dict(doc.labels), gids, by_class, doc.memory_total, host_free))
        cluster.node_id[doc.name] = node_id
        for class_id in by_class:
            cluster.class_nodes.setdefault(class_id, []).append(node_id)
        if not gids:
            cluster.cpu_nodes.append(node_id)
    return cluster


def _whole_units(free: int) -> int:
    """Free memory rounded down to the claim granularity (claims are rounded up to it)."""
    return (free // CLAIM_GRANULARITY_BYTES) * CLAIM_GRANULARITY_BYTES


def kth_largest(values: list[int], k: int) -> int:
    return sorted(values, reverse=True)[k - 1]


ScopeKey = tuple  # () = every node; else the sorted node_selector items


class ClusterState:
    """Free memory during one plan, with lazily built best-fit indices.

    Indices exist per (device class, scope), a scope being the nodes a node_selector allows, so a
    deployment restricted to a tenth of the fleet still finds its best fit with one bisect.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.free: list[int] = list(cluster.dev_base_free)
        self.users: list[int] = [0] * cluster.device_count  # our replicas per device
        self.node_users: list[int] = [0] * len(cluster.nodes)
        self.host_free: dict[int, int | None] = {n: cluster.nodes[n].host_base_free for n in cluster.cpu_nodes}
        self.dep_nodes: dict[str, dict[int, int]] = defaultdict(dict)  # deployment -> node -> replicas
        self.dep_gpus: dict[str, dict[int, int]] = defaultdict(dict)  # deployment -> device -> replicas
        self.packed: set[str] = set()  # deployments whose replicas may share GPUs and nodes (binpack)
        self._dev_index: dict[tuple[int, ScopeKey], SortedList] = {}
        self._dev_by_class: dict[int, list[tuple[frozenset[int] | None, SortedList]]] = defaultdict(list)
        self._kth_index: dict[tuple[int, int, ScopeKey], tuple[SortedList, dict[int, int]]] = {}
        self._kth_by_class: dict[int, list[tuple[int, SortedList, dict[int, int]]]] = defaultdict(list)
        self._cpu_index: SortedList | None = None

    # --- indices ---------------------------------------------------------------------------------------
    def _scope_nodes(self, class_id: int, scope: frozenset[int] | None) -> list[int]:
        nodes = self.cluster.class_nodes.get(class_id, [])
        return nodes if scope is None else [n for n in nodes if n in scope]

    def device_index(self, class_id: int, scope_key: ScopeKey = (), scope: frozenset[int] | None = None) -> SortedList:
        """Sorted ``(free, gid)`` of the class's devices on the scope's nodes."""
        key = (class_id, scope_key)
        index = self._dev_index.get(key)
        if index is None:
            free = self.free
            nodes = self.cluster.nodes
            index = SortedList(
                (free[g], g) for n in self._scope_nodes(class_id, scope) for g in nodes[n].gids_by_class[class_id]
            )
            self._dev_index[key] = index
            self._dev_by_class[class_id].append((scope, index))
        return index

    def kth_index(
        self, class_id: int, k: int, scope_key: ScopeKey = (), scope: frozenset[int] | None = None
    ) -> SortedList:
        """Sorted ``(k-th largest free of the class on the node, node)`` for nodes with ≥ k such devices."""
        key = (class_id, k, scope_key)
        found = self._kth_index.get(key)
        if found is None:
            keys: dict[int, int] = {}
            for node_id in self._scope_nodes(class_id, scope):
                gids = self.cluster.nodes[node_id].gids_by_class[class_id]
                if len(gids) >= k:
                    keys[node_id] = kth_largest([self.free[g] for g in gids], k)
            found = (SortedList((value, node) for node, value in keys.items()), keys)
            self._kth_index[key] = found
            self._kth_by_class[class_id].append((k, found[0], keys))
        return found[0]

    def cpu_index(self) -> SortedList:
        if self._cpu_index is None:
            self._cpu_index = SortedList((free, node) for node, free in self.host_free.items() if free is not None)
        return self._cpu_index

    # --- updates -----------------------------------------------------------------------------------------
    def _change_free(self, changes: Iterable[tuple[int, int]]) -> None:
        """Apply (gid, delta) changes and keep every index in step."""
        touched: dict[tuple[int, int], None] = {}
        dev_node = self.cluster.dev_node
        for gid, delta in changes:
            old = self.free[gid]
            new = old + delta
            self.free[gid] = new
            class_id = self.cluster.dev_class[gid]
            node_id = dev_node[gid]
            for scope, index in self._dev_by_class.get(class_id, ()):
                if scope is None or node_id in scope:
                    index.remove((old, gid))
                    index.add((new, gid))
            touched[(node_id, class_id)] = None
        for node_id, class_id in touched:
            entries = self._kth_by_class.get(class_id)
            if not entries:
                continue
            ordered = sorted((self.free[g] for g in self.cluster.nodes[node_id].gids_by_class[class_id]), reverse=True)
            for k, index, keys in entries:
                old_key = keys.get(node_id)
                if old_key is None:
                    continue
                new_key = ordered[k - 1]
                if new_key != old_key:
                    index.remove((old_key, node_id))
                    index.add((new_key, node_id))
                    keys[node_id] = new_key

    def claim(self, deployment: str, node_gids: list[tuple[int, list[int]]], bytes_per_device: int) -> None:
        self._change_free([(g, -bytes_per_device) for _, gids in node_gids for g in gids])
        for node_id, gids in node_gids:
            for g in gids:
                self.users[g] += 1
                self._count_gpu(deployment, g, +1)
            self._count_node(deployment, node_id, +1)

    def release(self, deployment: str, node_gids: list[tuple[int, list[int]]], bytes_per_device: int) -> None:
        self._change_free([(g, bytes_per_device) for _, gids in node_gids for g in gids])
        for node_id, gids in node_gids:
            for g in gids:
                self.users[g] -= 1
                self._count_gpu(deployment, g, -1)
            self._count_node(deployment, node_id, -1)

    def claim_host(self, deployment: str, node_id: int, host_bytes: int, sign: int = +1) -> None:
        """Take (sign=+1) or give back (sign=-1) host memory of a CPU-only node."""
        old = self.host_free[node_id]
        assert old is not None
        new = old - sign * host_bytes
        self.host_free[node_id] = new
        if self._cpu_index is not None:
            self._cpu_index.remove((old, node_id))
            self._cpu_index.add((new, node_id))
        self._count_node(deployment, node_id, sign)

    def _count_gpu(self, deployment: str, gid: int, sign: int) -> None:
        counts = self.dep_gpus[deployment]
        value = counts.get(gid, 0) + sign
        if value:
            counts[gid] = value
        else:
            counts.pop(gid, None)

    def _count_node(self, deployment: str, node_id: int, sign: int) -> None:
        self.node_users[node_id] += sign
        counts = self.dep_nodes[deployment]
        value = counts.get(node_id, 0) + sign
        if value:
            counts[node_id] = value
        else:
            counts.pop(node_id, None)
