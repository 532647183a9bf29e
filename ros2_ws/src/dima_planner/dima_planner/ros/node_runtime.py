"""What every dima node shares: parameter descriptors from a ParamSpec table, and main()."""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.exceptions import InvalidHandle, InvalidParameterValueException, ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor

from ..runtime.params import unknown_parameters
from .env import apply_ros_env_defaults, discovery_note

_PTYPE = {"bool": ParameterType.PARAMETER_BOOL, "int": ParameterType.PARAMETER_INTEGER,
          "float": ParameterType.PARAMETER_DOUBLE, "str": ParameterType.PARAMETER_STRING}


def descriptor(spec, read_only: bool = False, notes: Sequence[str] = ()) -> ParameterDescriptor:
    """ROS descriptor of a runtime.params.ParamSpec: type, range, choices and pattern as constraints."""
    d = ParameterDescriptor(name=spec.name, type=_PTYPE[spec.kind], description=spec.description,
                            read_only=read_only)
    if spec.kind == "float" and spec.low is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high), step=0.0)]
    if spec.kind == "int" and spec.low is not None:
        d.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    constraints = []
    if spec.choices:
        constraints.append("one of: " + ", ".join(spec.choices))
    if spec.pattern:
        constraints.append(f"matches {spec.pattern}")
    d.additional_constraints = "; ".join([*constraints, *notes])
    return d


def declare_parameters(node, table: dict, validate: Callable[[str, object], str | None],
                       read_only_on_configure: bool, on_configure_note: str) -> dict:
    """Declare every ParamSpec of `table` on `node` and return the start-up values, validated.

    Each parameter gets its descriptor (type, range, constraints); the `on_configure` ones get
    `on_configure_note` and, with read_only_on_configure, are read-only (a node that reads them
    once at start-up). Invalid start-up values raise one ValueError naming every one (spin()
    prints it and exits 2); names given that the table does not declare are warned about,
    since rclpy would ignore them silently."""
    for spec in table.values():
        notes = [on_configure_note] if spec.on_configure else []
        try:
            node.declare_parameter(spec.name, spec.default, descriptor(
                spec, read_only=read_only_on_configure and spec.on_configure, notes=notes))
        except (ParameterException, InvalidParameterValueException) as e:  # a bad --params-file / -p value
            raise ValueError(f"parameter {spec.name}: {e}") from None
    values = {n: node.get_parameter(n).value for n in table}
    bad = [r for n, v in values.items() if (r := validate(n, v))]
    if bad:
        raise ValueError("invalid parameters: " + "; ".join(bad))
    for reason in unknown_parameters(getattr(node, "_parameter_overrides", {}), table):
        node.get_logger().warning(reason)
    return values


def set_parameters(params, values: dict, validate: Callable[[str, object], str | None]) -> SetParametersResult:
    """A node's on-set-parameters callback: all changes valid, then applied to `values`, or none."""
    reasons = [r for p in params if (r := validate(p.name, p.value))]
    if reasons:
        return SetParametersResult(successful=False, reason="; ".join(reasons))
    for p in params:
        if p.name in values:
            values[p.name] = p.value
    return SetParametersResult(successful=True)


def spin(make_node: Callable[[], rclpy.node.Node], prog: str, threads: int, args: list[str] | None = None) -> int:
    """Run one node until Ctrl-C; invalid parameters at start-up exit 2 with one line.

    threads=1: a SingleThreadedExecutor. An entity destroyed between the executor's wait
    and its dispatch (a lifecycle cleanup running on another executor thread) makes rclpy
    raise InvalidHandle out of spin(); that is a skipped wake-up, not a reason to die, so
    spinning resumes."""
    note = discovery_note()  # said once the node has a logger, so that it reaches /rosout too
    apply_ros_env_defaults()  # before rclpy.init: loopback-only discovery unless exported, SHM profile
    rclpy.init(args=sys.argv if args is None else args)
    node = None
    try:
        node = make_node()
        if note:
            node.get_logger().info(note)
        executor = SingleThreadedExecutor() if threads == 1 else MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        while True:
            try:
                executor.spin()
                break
            except InvalidHandle as e:
                node.get_logger().warning(f"executor: an entity was destroyed while in use ({e}); spinning on")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        # Jazzy's rclpy (7.1) can lose the race between Ctrl-C shutting the context down and
        # the executor building its next wait set: an RCLError ("context is not valid")
        # instead of ExternalShutdownException. After a shutdown that is the normal exit.
        if node is None or rclpy.ok():
            raise
    except (ValueError, InvalidParameterValueException) as e:
        reason = str(e).removeprefix("invalid parameters: ")  # nodes may already say so: say it once
        print(f"{prog}: invalid parameters: {reason}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0
