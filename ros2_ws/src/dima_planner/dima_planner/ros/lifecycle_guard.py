"""Lifecycle ChangeState requests that answer instead of ending the process.

rclpy 7.1 (the Jazzy wheels) triggers a requested transition without checking that the
current state has it: a second `activate`, `configure` while active, an unknown id or a
request to a finalized node raises RCLError ("Transition is not registered") out of the
service callback, through the executor, and the node process exits (ros2/rclpy#1209; fixed
upstream by ros2/rclpy#1319, which later wheels carry). `guard_change_state` wraps one
node's own ChangeState service callback (an instance attribute, nothing global is patched):
a request is checked against the current state's available transitions first and answered
`success: false` with a warning when it is not one of them; the transitions it allows run
unchanged. Once rclpy validates requests itself the check is redundant, not wrong.
"""
from __future__ import annotations

from collections.abc import Callable

from lifecycle_msgs.srv import ChangeState
from rclpy.lifecycle import LifecycleNode

Callback = Callable[[ChangeState.Request, ChangeState.Response], ChangeState.Response]


def available_transitions(node: LifecycleNode) -> dict[int, str]:
    """{transition id: label} the node's current state allows."""
    return {t[0]: t[1] for t in node._state_machine.available_transitions}


def resolve_request(request: ChangeState.Request, available: dict[int, str]) -> int | None:
    """The transition id a request asks for if the current state allows it, else None.

    Like rclpy, a non-empty label takes precedence over the id (`ros2 lifecycle set node
    shutdown` sends only a label, and 'shutdown' has a different id in every state)."""
    label = request.transition.label
    if label:
        return next((tid for tid, lab in available.items() if lab == label), None)
    return request.transition.id if request.transition.id in available else None


def guard_change_state(node: LifecycleNode) -> None:
    """Make `node`'s ChangeState service answer every request; call after LifecycleNode.__init__."""
    service = getattr(node, "_service_change_state", None)
    if service is None:  # enable_communication_interface=False: no service to guard
        return
    transition: Callback = service.callback
    log = node.get_logger()

    def on_change_state(request: ChangeState.Request, response: ChangeState.Response) -> ChangeState.Response:
        state = node._state_machine.current_state[1]
        available = available_transitions(node)
        if resolve_request(request, available) is None:
            asked = request.transition.label or f"id {request.transition.id}"
            reason = (f"transition {asked!r} is not available in state {state!r} "
                      f"(available: {', '.join(sorted(set(available.values()))) or 'none'})")
            log.warning(f"ChangeState refused: {reason}")
            response.success = False
            return response
        try:
            return transition(request, response)
        except RuntimeError as e:  # RCLError: the state machine refused after all (a race we did not foresee)
            log.error(f"ChangeState {request.transition.label or request.transition.id} in state {state!r} "
                      f"failed: {e}")
            response.success = False
            return response

    service.callback = on_change_state
