"""Several collectors on one shared store: leader election for the singleton work
(leader.py, pg_leader.py) and what the collector shows about it (status.py). SCALING.md at the
repository root says how to run them."""

from __future__ import annotations

from edgemon.collector.cluster.leader import AlwaysLeader, Leadership

__all__ = ["AlwaysLeader", "Leadership"]
