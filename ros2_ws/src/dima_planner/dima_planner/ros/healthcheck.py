"""`dima_healthcheck`: is a dima node up and ready, judged from its own /diagnostics?

    dima_healthcheck                                  # /dima_planner, 10 s
    dima_healthcheck --node /car1/dima_planner --timeout 300   # wait for a namespaced planner
    dima_healthcheck --node /dima_mllm

Exit 0 as soon as the node's "<fully qualified name>: model" status says it is ready (level
OK and state `active` for the planner, `ready` for the MLLM node); exit 1 with the last
status seen (or "no diagnostics") when that does not happen within --timeout. One check
serves the Docker HEALTHCHECK and the replay launch, which starts the player only once the
planner can plan (instead of after a fixed delay).
"""
from __future__ import annotations

import argparse
import sys
import time

READY_STATES = frozenset({"active", "ready"})  # the planner's lifecycle state; the MLLM node's load state


def model_status_name(node: str) -> str:
    """The diagnostic status name a node publishes for its model ('/ns/name: model')."""
    return f"/{node.strip('/')}: model"


def verdict(level: int, message: str, values: dict[str, str]) -> tuple[bool, str]:
    """(ready, why) for one model status."""
    state = values.get("state", "")
    ready = level == 0 and state in READY_STATES
    return ready, f"state {state or '?'}: {message}"


def wait_ready(node_name: str, timeout: float) -> tuple[bool, str]:
    """Listen to /diagnostics until `node_name` reports ready or `timeout` s pass."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context

    from .env import apply_ros_env_defaults

    apply_ros_env_defaults()
    want = model_status_name(node_name)
    seen: list[tuple[bool, str]] = []

    def on_diag(msg: DiagnosticArray) -> None:
        for st in msg.status:
            if st.name == want:
                level = st.level if isinstance(st.level, int) else int.from_bytes(st.level, "little")
                seen.append(verdict(level, st.message, {kv.key: kv.value for kv in st.values}))

    ctx = Context()
    rclpy.init(args=[], context=ctx)
    try:
        probe = rclpy.create_node("dima_healthcheck", context=ctx, start_parameter_services=False,
                                  enable_rosout=False)
        probe.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        from rclpy.executors import SingleThreadedExecutor

        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(probe)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
            if seen and seen[-1][0]:
                return seen[-1]
        return seen[-1] if seen else (False, f"no diagnostics from {node_name} within {timeout:g} s")
    finally:
        rclpy.try_shutdown(context=ctx)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dima_healthcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", default="/dima_planner", help="fully qualified node name (default /dima_planner)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a ready status")
    parser.add_argument("--quiet", action="store_true", help="print nothing when ready")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")
    node = "/" + args.node.strip("/")  # the status names carry the fully qualified name
    ready, why = wait_ready(node, args.timeout)
    if not (ready and args.quiet):
        print(f"{node}: {'ready' if ready else 'not ready'} ({why})", file=sys.stdout if ready else sys.stderr)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
