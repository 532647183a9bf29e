"""Which peers of a node are there: the publishers of its inputs, the subscribers of its outputs.

A node cannot tell a killed bag player, simulator or MLLM node from one that is merely
quiet by its messages alone; the ROS graph can. `PeerWatch.update` reads the graph counts
(cheap local queries) on every diagnostics tick and remembers when a topic lost peers;
`status()` says which topics have fewer than before ("gone", for FORGET_S) for one
/diagnostics entry. Nothing is restarted: a peer that comes back is simply counted again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue


# A topic reported with fewer peers than before stays reported this long; after it the lower
# count is taken as the new normal (a viewer closed for good) and only the loss count remains.
FORGET_S = 60.0


@dataclass
class _Topic:
    role: str  # "publisher" (of an input) or "subscriber" (of an output)
    count: int = 0
    peak: int = 0  # peers it had before the current loss
    lost_at: float | None = None  # monotonic time it fell below peak (None: not below)
    losses: int = 0


@dataclass
class PeerWatch:
    inputs: list[str] = field(default_factory=list)   # topics whose publishers matter
    outputs: list[str] = field(default_factory=list)  # topics whose subscribers matter

    def __post_init__(self) -> None:
        self._topics = {t: _Topic("publisher") for t in self.inputs}
        self._topics.update({t: _Topic("subscriber") for t in self.outputs})

    def update(self, node, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for name, t in self._topics.items():
            n = node.count_publishers(name) if t.role == "publisher" else node.count_subscribers(name)
            if n >= t.peak:
                t.peak, t.lost_at = n, None
            elif t.lost_at is None:
                t.lost_at, t.losses = now, t.losses + 1
            elif now - t.lost_at > FORGET_S:
                t.peak, t.lost_at = n, None
            t.count = n

    def gone(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        return [f"{t.peak - t.count} of {t.peak} {t.role}(s) of {name} ({now - t.lost_at:.1f} s ago)"
                for name, t in self._topics.items() if t.lost_at is not None]

    def status(self, node_name: str, now: float | None = None) -> DiagnosticStatus:
        gone = self.gone(now)
        s = DiagnosticStatus(name=f"{node_name}: peers", hardware_id=node_name,
                             level=DiagnosticStatus.WARN if gone else DiagnosticStatus.OK,
                             message=("gone: " + ", ".join(gone)) if gone else "every peer seen is there")
        s.values = [KeyValue(key=f"{t.role}s.{name}", value=str(t.count)) for name, t in self._topics.items()]
        s.values += [KeyValue(key=f"lost.{name}", value=str(t.losses)) for name, t in self._topics.items() if t.losses]
        return s
