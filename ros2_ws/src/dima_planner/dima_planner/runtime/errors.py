"""The one exception type for unusable input messages (ROS-free: sync, the core and the
converters all raise it; the node turns it into a skip with a reason in /diagnostics)."""
from __future__ import annotations


class InputError(ValueError):
    """An input message that cannot be used. `category` names the drop counter."""

    def __init__(self, category: str, reason: str):
        super().__init__(reason)
        self.category = category
        self.reason = reason
