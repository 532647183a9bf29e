"""Paired driving-score CIs between the planners of two `dima sim --bench --json` runs.

    .venv/bin/python tools/bench_pair.py runs/sim_bench_a/bench.json runs/sim_bench_b/bench.json
    .venv/bin/python tools/bench_pair.py A.json B.json --rename dima=dima_dagger   # B's `dima` is another checkpoint

Lockstep runs are deterministic, so two benches on the same world and routes can be paired
route by route. The tool checks that first: every planner present in both runs (the
references at least) must have the same per-route driving scores, else it refuses.
"""
from __future__ import annotations

import argparse
import json
import sys

from dima_planner.sim.scoring import route_bootstrap_ci


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs=2, help="two bench JSON files (dima sim --bench --json)")
    ap.add_argument("--rename", nargs="*", default=[], metavar="OLD=NEW",
                    help="planner names of the second run to rename (its `dima` ran another checkpoint)")
    args = ap.parse_args(argv)
    a, b = (json.load(open(p))["planners"] for p in args.runs)
    for spec in args.rename:
        old, _, new = spec.partition("=")
        b[new] = b.pop(old)
    routes = lambda r: [x["name"] for x in r["routes"]]  # noqa: E731
    ds = lambda r: [x["driving_score"] for x in r["routes"]]  # noqa: E731
    shared = sorted(set(a) & set(b))
    for name in shared:
        if routes(a[name]) != routes(b[name]) or ds(a[name]) != ds(b[name]):
            print(f"{name} scored differently in the two runs: the runs cannot be paired", file=sys.stderr)
            return 1
    if shared:
        print(f"paired over {len(routes(a[shared[0]]))} routes; identical in both runs: {', '.join(shared)}")
    else:  # no planner in common: at least the same routes (names and lengths) in the same order
        ra, rb = next(iter(a.values())), next(iter(b.values()))
        geo = lambda r: [(x["name"], x["route_length_m"]) for x in r["routes"]]  # noqa: E731
        if geo(ra) != geo(rb):
            print("the runs share no planner and their routes differ: they cannot be paired", file=sys.stderr)
            return 1
        print(f"paired over {len(geo(ra))} routes; no planner in both runs: the same route names and lengths only")
    merged = {**a, **b}
    for name in [n for n in b if n not in a]:
        print(f"{name} (DS {b[name]['mean_driving_score']:.1f}) minus:")
        for other, r in merged.items():
            if other == name:
                continue
            diff = sum(ds(b[name])) / len(ds(b[name])) - sum(ds(r)) / len(ds(r))
            lo, hi = route_bootstrap_ci(ds(b[name]), ds(r))
            print(f"  {other:<16} {diff:+6.1f} [{lo:+.1f}, {hi:+.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
