"""Latency of one comparison in the app (teacher + three students + rewards), after the models are loaded, alone
and with several users at once.

    OMP_NUM_THREADS=1 python bench/app_latency.py --runs 5 --out bench/results/app_latency.json \
        [--screenshot assets/samples/app-screenshot.png]

Measurements of the same request (one prompt, students at 4 steps, teacher at --teacher-steps with CFG, one
image each): `engine`, rglcd.demo.Engine.compare called directly (sampling + rewards, per column); `api`, the
app on 127.0.0.1 called with gradio_client's /compare (adds the queue, PNG encoding and HTTP). Members the family
does not have yet are stand-ins, copies of the lcm entry (same UNet, same cost), and named in the result. A sweep
of teacher step counts shows which default meets the target. --screenshot drives the app serving the family as
it is (no stand-ins) in chromium through playwright. `concurrent`: --clients separate processes, each with its own
gradio_client, start together and make --calls /compare calls one after the other (prompts and seeds differ per
client, settings as above); the seconds of every call at the client (p50, p95), whether all succeeded, and the
engine's batch sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

from rglcd.demo import COLUMNS, Engine, Settings, build_app  # noqa: E402
from rglcd.testing import capture_page, launch_local, stand_in_family  # noqa: E402

TARGET_S = 1.0  # one warm comparison at the client
CONCURRENT_TARGETS_S = {"p50": 3.0, "p95": 5.0}  # each call, with --clients users at once
CLIENT_PROMPTS = ("red apple", "banana", "rocket", "pizza", "sun", "fire", "octopus", "snowman")
# One client process: connect, wait for the common start, make the calls; prints [{"seconds", "ok"}, ...].
CLIENT = """
import json, sys, time
from gradio_client import Client
url, start_at, calls, args = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
client = Client(url, verbose=False)
time.sleep(max(0.0, start_at - time.time()))
out = []
for _ in range(calls):
    t0 = time.perf_counter()
    try:
        result = client.predict(*args, api_name="/compare")
        ok = result[8].startswith("Done") and all(r["status"] == "ok" for r in result[9]["results"].values())
    except Exception:
        ok = False
    out.append({"seconds": time.perf_counter() - t0, "ok": ok})
print(json.dumps(out))
"""


def engine_runs(engine: Engine, settings: Settings, runs: int) -> dict:
    """Median seconds over `runs` comparisons: total wall time, and per column sampling and reward time."""
    totals, per_column = [], {c: {"sample": [], "reward": []} for c in COLUMNS}
    for _ in range(runs):
        t0 = time.perf_counter()
        for result in engine.compare(settings):
            if result.status != "ok":
                raise SystemExit(f"{result.column} is {result.status}: {result.message}")
            per_column[result.column]["sample"].append(result.seconds)
            per_column[result.column]["reward"].append(result.reward_seconds)
        totals.append(time.perf_counter() - t0)
    return {"total_s": {"median": round(statistics.median(totals), 3), "max": round(max(totals), 3),
                        "runs": [round(t, 3) for t in totals]},
            "columns": {c: {k: round(statistics.median(v), 3) for k, v in parts.items()}
                        for c, parts in per_column.items()}}


def api_runs(engine: Engine, settings: Settings, runs: int) -> dict:
    """Median client-side seconds of `runs` /compare calls to the app on 127.0.0.1 (after one untimed call)."""
    from gradio_client import Client

    app = build_app(engine)
    try:
        client = Client(launch_local(app), verbose=False)
        args = (settings.prompt, settings.student_steps, settings.teacher_steps, settings.student_guidance,
                settings.teacher_guidance, str(settings.seed), settings.num_images)
        client.predict(*args, api_name="/compare")
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            client.predict(*args, api_name="/compare")
            times.append(time.perf_counter() - t0)
    finally:
        app.close()
    return {"median": round(statistics.median(times), 3), "max": round(max(times), 3),
            "runs": [round(t, 3) for t in times]}


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile (0-100) of `values`, linear between the closest ranks."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def concurrent_runs(engine: Engine, settings: Settings, clients: int, calls: int) -> dict:
    """`clients` processes, each calling /compare `calls` times in a row, all starting at once: client-side seconds
    of every call (p50, p95, max), how many succeeded, and the engine's batch sizes meanwhile."""
    app = build_app(engine)
    try:
        url = launch_local(app)
        start_at = time.time() + 20  # time for every process to import gradio_client and connect
        before = len(engine.sampler.batch_sizes)
        procs = [subprocess.Popen([sys.executable, "-c", CLIENT, url, str(start_at), str(calls), json.dumps([
            CLIENT_PROMPTS[i % len(CLIENT_PROMPTS)], settings.student_steps, settings.teacher_steps,
            settings.student_guidance, settings.teacher_guidance, str(i), settings.num_images])],
            stdout=subprocess.PIPE, text=True) for i in range(clients)]
        per_client = [json.loads(p.communicate(timeout=1200)[0].strip().splitlines()[-1]) for p in procs]
        batch_sizes = engine.sampler.batch_sizes[before:]
    finally:
        app.close()
    times = [c["seconds"] for calls_ in per_client for c in calls_]
    return {"clients": clients, "calls_per_client": calls, "succeeded": sum(c["ok"] for cs in per_client for c in cs),
            "calls": len(times), "p50_s": round(percentile(times, 50), 3), "p95_s": round(percentile(times, 95), 3),
            "max_s": round(max(times), 3), "per_client_s": [[round(c["seconds"], 3) for c in cs] for cs in per_client],
            "batch_sizes": batch_sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="emoji-64")
    parser.add_argument("--prompt", default="red apple")
    parser.add_argument("--student-steps", type=int, default=4)
    parser.add_argument("--teacher-steps", type=int, default=25)
    parser.add_argument("--sweep", type=int, nargs="*", default=[8, 12, 16, 25, 50],
                        help="teacher step counts to time (engine, median of --runs)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8, help="concurrent client processes (0: skip)")
    parser.add_argument("--calls", type=int, default=3, help="/compare calls per concurrent client")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/app_latency.json")
    parser.add_argument("--screenshot", default=None, help="PNG path: the app in chromium via playwright")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        family_file = stand_in_family(args.family, Path(tmp), {c: "lcm" for c in COLUMNS})
        members = json.loads(family_file.read_text())["members"]
        stand_ins = sorted(c for c in COLUMNS if "stand_in_for" in members[c])
        engine = Engine(str(family_file))
        t0 = time.perf_counter()
        engine.warm_up()
        load_s = time.perf_counter() - t0
        settings = Settings(args.prompt, args.student_steps, args.teacher_steps)
        list(engine.compare(settings))  # first call: lazy parts of the pipelines, allocator warm-up
        result = {
            "what": "one comparison (teacher + 3 students, 1 image each, rewards) after the models are loaded",
            "family": args.family, "prompt": args.prompt, "student_steps": args.student_steps,
            "teacher_steps": args.teacher_steps, "guidance": {"student": settings.student_guidance,
                                                              "teacher": settings.teacher_guidance},
            "stand_ins": {c: "copy of the lcm entry (member not in the family yet)" for c in stand_ins},
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average_1min_at_start": round(os.getloadavg()[0], 2), "runs": args.runs,
            "load_s": round(load_s, 2),
            "engine": engine_runs(engine, settings, args.runs),
            "api": api_runs(engine, settings, args.runs),
            "concurrent": concurrent_runs(engine, settings, args.clients, args.calls) if args.clients else None,
            "teacher_steps_sweep": {n: engine_runs(engine, Settings(args.prompt, args.student_steps, n),
                                                   args.runs)["total_s"]["median"] for n in args.sweep},
            "target_s": TARGET_S, "concurrent_targets_s": CONCURRENT_TARGETS_S,
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        }
    concurrent = result["concurrent"]
    result["meets_target"] = {"engine": result["engine"]["total_s"]["median"] < TARGET_S,
                              "api": result["api"]["median"] < TARGET_S,
                              "concurrent": concurrent is not None and concurrent["succeeded"] == concurrent["calls"]
                              and all(concurrent[f"{k}_s"] < v for k, v in CONCURRENT_TARGETS_S.items())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.screenshot:
        app = build_app(Engine(args.family))
        try:
            page = capture_page(launch_local(app), args.prompt, Path(args.screenshot), plot=True)
        finally:
            app.close()
        print(json.dumps(page, indent=2))


if __name__ == "__main__":
    main()
