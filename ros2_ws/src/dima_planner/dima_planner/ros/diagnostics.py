"""The planner node's /diagnostics message from a planner_stats.PlannerStats snapshot.

Three statuses: model, inputs, planning. Tests and tools read the *keys* (values), never
the message text: the keys are the interface.
"""
from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from ..runtime.planner_stats import ERROR, OK, WARN, PlannerStats, Rejection, percentiles_ms  # noqa: F401  (re-exported)


def _kv(key: str, value) -> KeyValue:
    if isinstance(value, float):
        value = f"{value:.3f}"
    return KeyValue(key=key, value=str(value))


def build_diagnostics(stamp, node_name: str, *, state: str, model_loaded: bool, model_id: str, device: str,
                      model_error: str, snapshot: dict, input_rates: dict[str, float],
                      input_ages: dict[str, float | None], front_name: str, front_timeout: float,
                      drops_busy: int, recent_s: float = 2.0, watchdog: tuple[int, float, str] = (0, 0.0, ""),
                      loss_warn: float = 0.05) -> DiagnosticArray:
    """The node's DiagnosticArray. Levels: ERROR = cannot plan (no model, no front camera,
    recent rejections and no recent plan); WARN = planning but degraded or dropping."""
    hw = f"{node_name}"
    now = time.monotonic()
    arr = DiagnosticArray(header=Header(stamp=stamp))

    # Model
    if model_loaded:
        m = DiagnosticStatus(level=OK, name=f"{node_name}: model", message=f"loaded ({state})", hardware_id=hw)
    else:
        m = DiagnosticStatus(level=ERROR if model_error else WARN, name=f"{node_name}: model", hardware_id=hw,
                             message=model_error or f"not loaded ({state})")
    m.values = [_kv("state", state), _kv("model_id", model_id), _kv("device", device), _kv("error", model_error)]
    arr.status.append(m)

    # Inputs
    inp = DiagnosticStatus(level=OK, name=f"{node_name}: inputs", message="ok", hardware_id=hw)
    front_age = input_ages.get(front_name)
    if state == "active" and (front_age is None or front_age > front_timeout):
        inp.level = ERROR
        inp.message = (f"no front camera ({front_name}) image " +
                       ("received yet" if front_age is None else f"for {front_age:.1f} s") + "; not planning")
    streams = snapshot.get("streams", {})
    for key in input_rates:
        age = input_ages.get(key)
        inp.values.append(_kv(f"{key}.rate_hz", input_rates[key]))
        inp.values.append(_kv(f"{key}.age_s", "never" if age is None else age))
        if key in streams:
            received, lost, recent = streams[key]
            # lost = expected from the stamps but never delivered to the node (publisher,
            # transport or the subscription queue); recent = share of the last ~200 expected
            inp.values += [_kv(f"{key}.received", received), _kv(f"{key}.lost_before_node", lost),
                           _kv(f"{key}.recent_loss", float(recent))]
            if recent > loss_warn and inp.level < WARN:
                inp.level = WARN
                inp.message = (f"{key}: {recent:.0%} of the recent frames never reached the node (stamp gaps "
                               f"at the subscription: publisher, transport or a full subscription queue)")
    for key, n in sorted(snapshot.get("input_rejections", {}).items()):
        inp.values.append(_kv(f"rejected.{key}", n))
    inp.values.append(_kv("last_input_rejection", snapshot.get("last_input_rejection", "")))
    for key, text in sorted(snapshot.get("warnings", {}).items()):
        inp.values.append(_kv(f"warning.{key}", text))
        if inp.level < WARN:
            inp.level, inp.message = WARN, text
    arr.status.append(inp)

    # Planning
    snap = snapshot
    p50, p99 = percentiles_ms(snap["model_s"])
    t50, t99 = percentiles_ms(snap["total_s"])
    o50, o99 = percentiles_ms(snap["overhead_s"])
    plan = DiagnosticStatus(level=OK, name=f"{node_name}: planning", hardware_id=hw,
                            message=f"{snap['plans']} plans")
    rej = snap["last_rejection"]
    recent_rej = rej is not None and now - rej.wall <= recent_s
    recent_plan = snap["last_plan_wall"] is not None and now - snap["last_plan_wall"] <= recent_s
    if recent_rej:
        plan.level = WARN if recent_plan else ERROR
        plan.message = f"cycle skipped ({rej.category}): {rej.reason}"
    elif snap["last_degraded"] and recent_plan:
        plan.level = WARN
        plan.message = f"planning degraded: {snap['last_degraded']}"
    wd_level, wd_silent, wd_why = watchdog
    if wd_level > plan.level:  # front images arrive, nothing is published
        plan.level = wd_level
        plan.message = f"no plan for {wd_silent:.1f} s while front images arrive: {wd_why}"
    anchors = snap.get("anchors", 0)
    plan.values = [_kv("plans", snap["plans"]), _kv("dropped.busy", drops_busy), _kv("anchors", anchors),
                   _kv("no_plan_s", float(wd_silent)), _kv("no_plan_reason", wd_why)]
    plan.values += [_kv(f"rejected.{k}", v) for k, v in sorted(snap["rejections"].items())]
    plan.values += [_kv(f"degraded.{k}", v) for k, v in sorted(snap["degraded"].items())]
    plan.values += [_kv("last_rejection", f"{rej.category}: {rej.reason}" if rej else ""),
                    _kv("model_latency_p50_ms", p50), _kv("model_latency_p99_ms", p99),
                    _kv("planner_latency_p50_ms", t50), _kv("planner_latency_p99_ms", t99),
                    _kv("node_overhead_p50_ms", o50), _kv("node_overhead_p99_ms", o99)]
    arr.status.append(plan)
    for st in arr.status:  # levels are worked out as ints; the message field is a byte, as received
        st.level = bytes([st.level]) if isinstance(st.level, int) else st.level
    return arr
