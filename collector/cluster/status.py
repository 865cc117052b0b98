"""What a collector shows about its place in the cluster: ``GET /edgemon/api/v1/cluster`` (a
read token), the ``edgemon_cluster_*`` metrics and their OpenAPI description."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiohttp import web

from edgemon.collector.cluster.leader import Leadership
from edgemon.collector.http.responses import json_response

__all__ = ["OPENAPI_PATHS", "PATH", "ClusterStatus", "merge_openapi"]

PATH = "/edgemon/api/v1/cluster"


class ClusterStatus:
    """This collector's id, shared group and leadership, for the API and /metrics."""

    def __init__(self, leadership: Leadership, *, collector_id: str, shared_group: str | None,
                 store: str) -> None:
        self.leadership = leadership
        self.collector_id = collector_id
        self.shared_group = shared_group or None
        self.store = store  # "sqlite" or "postgresql"

    def document(self) -> dict[str, Any]:
        return {"collector": self.collector_id, "role": self.leadership.role,
                "shared_group": self.shared_group is not None, "store": self.store,
                "election": self.leadership.status()}

    async def handler(self, _request: web.Request) -> web.Response:
        return json_response(self.document())

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self.handler)]

    def samples(self) -> list[tuple[str, str, str, float]]:
        """(name, type, help, value) of the ``edgemon_cluster_*`` metrics (the group name is a
        secret: never shown)."""
        leadership = self.leadership
        out = [(name, kind, text, value) for name, kind, text, value in (
            ("edgemon_cluster_leader", "gauge", HELP_LEADER, int(leadership.is_leader())),
            ("edgemon_cluster_leader_changes_total", "counter", HELP_CHANGES,
             leadership.changes))]
        expiries = getattr(leadership, "lease_expiries", None)
        if expiries is not None:
            out.append(("edgemon_cluster_lease_expiries_total", "counter", HELP_EXPIRIES,
                        expiries))
        return out

    def collect(self) -> Iterator[Any]:
        """The same metrics as a prometheus-client collector (``CollectorMetrics.register``)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, kind, text, value in self.samples():
            if kind == "counter":
                yield CounterMetricFamily(name.removesuffix("_total"), text, value=value)
            else:
                yield GaugeMetricFamily(name, text, value=value)


HELP_LEADER = ("1 while this collector runs the singleton work (retention, compaction, alert "
               "evaluation and notification, forwarding), else 0.")
HELP_CHANGES = "Times this collector gained or lost leadership."
HELP_EXPIRIES = ("Times leadership (or a take-over) ended because no check of the leader lock "
                 "succeeded within the lease.")


_ELECTION = {"type": "object", "description": "The leader election: kind (single: alone on its "
             "store, always the leader; postgresql: an advisory lock), role, since_ms, changes; "
             "for postgresql also state (follower, pending, leader), lock, lease_seconds, "
             "check_seconds, lease_left_seconds, acquisitions, lease_expiries, check_failures",
             "required": ["kind", "role", "since_ms", "changes"]}

OPENAPI_PATHS: dict[str, Any] = {
    PATH: {"get": {
        "summary": "This collector's role among the collectors sharing its store",
        "description": "role is leader (runs retention, compaction, alert evaluation and "
                       "notification) or follower. See SCALING.md.",
        "responses": {"200": {"description": "the collector's cluster status", "content": {
            "application/json": {"schema": {
                "type": "object", "required": ["collector", "role", "shared_group", "store",
                                               "election"],
                "properties": {
                    "collector": {"type": "string"},
                    "role": {"type": "string", "enum": ["leader", "follower"]},
                    "shared_group": {"type": "boolean",
                                     "description": "subscribed through a shared group"},
                    "store": {"type": "string", "enum": ["sqlite", "postgresql"]},
                    "election": _ELECTION}}}}}}}},
}


def merge_openapi(document: dict[str, Any]) -> dict[str, Any]:
    document.setdefault("paths", {}).update(OPENAPI_PATHS)
    return document
