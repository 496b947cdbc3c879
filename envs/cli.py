"""``servegym`` command line: simulate a scenario with its built-in policies and print the metrics table;
list the shipped scenarios; summarize a trace file (``servegym trace-stats FILE``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import yaml

from servegym.envs.metrics import compute_metrics, format_metrics_table
from servegym.envs.metrics_stream import StreamingMetrics
from servegym.envs.perf.specs import MODELS
from servegym.envs.scenario import ScenarioError, list_scenarios, load_scenario
from servegym.envs.sim.simulator import Simulator
from servegym.envs.sim.stream import StreamingSimulator
from servegym.envs.sim.trace import write_trace_csv
from servegym.envs.workloads.requests import WorkloadError
from servegym.envs.workloads.trace_stats import format_stats, load_for_stats, trace_stats

DEFAULT_SCENARIO = "chat_azure"

# The table the main job prints: the figures an operator reads first.
SUMMARY_KEYS = [
    "arrived",
    "finished",
    "dropped",
    "slo_attainment",
    "slo_attainment/interactive",
    "slo_attainment/batch",
    "goodput/req_per_s",
    "goodput/req_per_s_per_gpu",
    "throughput/tok_per_s",
    "ttft_s/p50",
    "ttft_s/p99",
    "tpot_s/p50",
    "tpot_s/p99",
    "e2e_s/p99",
    "cost/usd",
    "cost/usd_per_1m_output_tokens",
    "fairness/jain",
    "util/busy",
    "util/kv",
    "preemptions",
]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set a.b=3`` becomes ``{"a": {"b": 3}}``; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ScenarioError(f"--set {item!r}: expected KEY=VALUE, e.g. horizon_s=600")
        key, val = item.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(val)
    return out


def cmd_simulate(args: argparse.Namespace) -> int:

    t0 = time.perf_counter()
    scenario = load_scenario(args.scenario, parse_overrides(args.set))
    if scenario.streaming:  # generated and held window by window (docs/streaming.md)
        if args.trace:
            raise ScenarioError(f"scenario {scenario.name!r}: --trace is not recorded in streaming runs")
        sim = StreamingSimulator(scenario, seed=args.seed, timing=args.timing)
    else:
        sim = Simulator(
            scenario, seed=args.seed, timing=args.timing, trace=args.trace_rows if args.trace else 0
        )
    t_build = time.perf_counter() - t0
    t1 = time.perf_counter()
    if isinstance(sim, StreamingSimulator):
        metrics = sim.run(StreamingMetrics(len(scenario.tenants)))
        n_requests = metrics["arrived"]
    else:
        metrics = compute_metrics(sim.run(progress=not args.quiet))
        n_requests = len(sim.requests)
    t_run = time.perf_counter() - t1
    sc = sim.scenario
    print(
        f"scenario {sc.name} | seed {sim.seed} | horizon {sc.horizon_s:g} s | "
        f"policies batching={sc.policies.batching} routing={sc.policies.routing} "
        f"scaling={sc.policies.scaling} | timing {sim.timing}"
    )
    print(
        f"{n_requests:,} requests simulated in {t_run:.2f} s wall, workload built in {t_build:.2f} s "
        f"(the first run of a code version includes numba's one-time compile, announced above)\n"
    )
    print(format_metrics_table(metrics, None if args.all else SUMMARY_KEYS))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(metrics, f, indent=1, sort_keys=True)
    if args.trace:
        n = write_trace_csv(sim.iteration_trace(), args.trace)
        print(f"\nwrote {n:,} iterations to {args.trace}")
    return 0


def cmd_list(_: argparse.Namespace) -> int:
    names = list_scenarios()
    width = max((len(n) for n in names), default=0)
    for name in names:
        try:
            line = summary_line(load_scenario(name).description)
        except ScenarioError as e:
            line = f"(does not load: {str(e).splitlines()[0]})"
        print(f"{name:{width}s}  {line}".rstrip())
    return 0


def summary_line(description: str, limit: int = 110) -> str:
    """A scenario description's first sentence, on one line (cut at ``limit`` characters)."""
    text = " ".join(description.split())
    end = text.find(". ")
    first = text if end < 0 else text[: end + 1]
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."


def cmd_trace_stats(args: argparse.Namespace) -> int:
    try:
        table, fmt = load_for_stats(args.file, args.format)
        stats = trace_stats(table, {name: m.max_context for name, m in MODELS.items()})
    except (WorkloadError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_stats(args.file, fmt, stats))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(stats, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="servegym", description=__doc__)
    sub = ap.add_subparsers(dest="cmd")
    sim = sub.add_parser("simulate", help="run a scenario with its built-in policies")
    sim.add_argument("--scenario", default=DEFAULT_SCENARIO, help="name in configs/scenarios/ or a YAML path")
    sim.add_argument("--seed", type=int, default=None)
    sim.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario key"
    )
    sim.add_argument("--json", default=None, help="also write every metric to this JSON file")
    sim.add_argument("--all", action="store_true", help="print every metric, not the summary")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.add_argument(
        "--timing",
        choices=("v0", "v1"),
        default=None,
        help="timing version when the scenario names none (v1)",
    )
    sim.add_argument("--trace", default=None, metavar="CSV", help="write the per-iteration trace to this CSV")
    sim.add_argument(
        "--trace-rows", type=int, default=1_000_000, help="iterations the trace keeps (first ones)"
    )
    sub.add_parser("scenarios", help="list the shipped scenarios, each with its one-line description")
    ts = sub.add_parser(
        "trace-stats",
        help="rows, span, rate, inter-arrival CV, lengths, prefix reuse and context fit of a trace file",
    )
    ts.add_argument("file", help="a trace file (Azure or BurstGPT CSV, Mooncake JSONL, or a generic CSV)")
    ts.add_argument(
        "--format",
        choices=("azure", "mooncake", "burstgpt", "generic"),
        default=None,
        help="the trace format (default: told from the file)",
    )
    ts.add_argument("--json", default=None, help="also write the statistics to this JSON file")
    args = ap.parse_args(argv)
    if args.cmd is None:
        args = ap.parse_args(["simulate", *(argv or sys.argv[1:])])
    try:
        return {"simulate": cmd_simulate, "scenarios": cmd_list, "trace-stats": cmd_trace_stats}[args.cmd](
            args
        )
    except (ScenarioError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
