"""Speed of the array schedule and the compiled replay, against an earlier revision, in one run.

Run:  python benchmarks/bench_speed.py [--before REV] [--grid-every N] [--out benchmarks/results/speed.md]

Both revisions are measured by the same code, in child processes of this script, one after
the other: REV extracted with `git archive` into a temporary folder, and this working tree
(through a link), each put first on PYTHONPATH. Every figure is CPU time of the process doing
the work (`time.process_time`, or `getrusage` of a child), with wall time beside it; the
machine may be shared, so the CPU times and the ratios are what to read.

- replay: the list-scheduling replay alone (with the critical path) on the OPT-175B point's
  schedule (96 layers, batch 64 = 8 x 8, prompt 512, 32 output tokens, H100 PCIe 5.0), ops
  per CPU second, best of 7;
- point: that point through `run_point(engine="list")` (build, durations, replay, metrics),
  best of 5; and the first call in a fresh process (which also imports numba and loads the
  compiled kernels from numba's on-disk cache);
- grid: the HybridServe-style grid (OPT-6.7B/13B/30B/66B x prompt 256/512/1024/1920 x r in 11
  steps x kv-only, hybrid, token-recompute; RTX 4090, batch 128 = 8 x 16, 128 output tokens),
  every N-th point for both revisions (`--grid-every`), serially in one process;
- joint: `search_joint` (what `hssim optimize --what joint` runs) on the first point of
  scenarios/hybridserve-opt30b.yaml, in one process (jobs=1);
- startup: `hssim run --json` as a command, CPU of the whole child process, on a one-layer,
  two-token OPT-1.3B point (start-up and imports: the work is negligible) and on the OPT-175B
  point, less the CPU of `python -c pass`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

POINT_175B = """name: opt175b
model: opt-175b
hardware: h100-80gb-pcie5
workload: {batch: 64, prompt_len: 512, gen_len: 32}
policies: [{kind: kv-only, num_gpu_batches: 8}]
"""
POINT_TINY = """name: tiny
model: {preset: opt-1.3b, layers: 1}
hardware: rtx4090-pcie4
workload: {batch: 8, prompt_len: 64, gen_len: 2}
policies: [{kind: kv-only, num_gpu_batches: 2}]
"""


# ------------------------------------------------------------------------------ child side
def _point(model="opt-175b", hw="h100-80gb-pcie5", batch=64, k=8, prompt=512, gen=32, **pol):
    from hssim.sim.presets import hardware_preset, model_preset
    from hssim.sim.specs import PointSpec, PolicySpec, WorkloadSpec

    pol.setdefault("kind", "kv-only")
    return PointSpec(scenario="bench", model=model_preset(model), hardware=hardware_preset(hw),
                     workload=WorkloadSpec(batch=batch, prompt_len=prompt, gen_len=gen),
                     policy=PolicySpec(num_gpu_batches=k, **pol))


def _grid(every: int):
    pts = []
    for model in ("opt-6.7b", "opt-13b", "opt-30b", "opt-66b"):
        for prompt in (256, 512, 1024, 1920):
            pts.append(_point(model, "rtx4090-pcie4", 128, 8, prompt, 128, kind="kv-only"))
            for r in [i / 10 for i in range(11)]:
                for kind in ("hybrid", "token-recompute"):
                    pts.append(_point(model, "rtx4090-pcie4", 128, 8, prompt, 128, kind=kind, kv_ratio=r))
    return pts[::every]


def _timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    value = fn()
    return time.process_time() - c0, time.perf_counter() - w0, value


def _best(fn, repeats):
    runs = [_timed(fn) for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs), runs[-1][2]


def child(grid_every: int) -> dict:
    """Every in-process measurement, on whichever hssim is first on the path."""
    import hssim
    from hssim.sim.api import run_point
    from hssim.sim.costs import RooflineCostModel, durations_ns
    from hssim.sim.engine import list_replay
    from hssim.sim.memory import MemoryPlanError
    from hssim.sim.optimize.search import SETTINGS
    from hssim.sim.policies import build_schedule

    out: dict = {"hssim": str(Path(hssim.__file__).parent)}
    head = _point()
    c, w, run = _timed(lambda: run_point(head, engine="list"))
    out["point_first"] = (c, w)
    out["makespan_ns"] = int(run.result.makespan_ns)
    out["metrics"] = run.metrics
    c, w, _ = _best(lambda: run_point(head, engine="list"), 5)
    out["point"] = (c, w)
    sched = build_schedule(head)
    dur = durations_ns(sched, RooflineCostModel(head.hardware))
    c, w, res = _best(lambda: list_replay(sched, dur), 7)
    out["ops"] = len(sched)
    out["replay"] = (c, w)
    assert int(res.makespan_ns) == out["makespan_ns"]

    def grid():
        done = []
        for p in _grid(grid_every):
            try:
                done.append(run_point(p, engine="list").metrics["throughput_tok_s"])
            except MemoryPlanError:
                done.append(None)
        return done

    c, w, tputs = _timed(grid)
    out["grid"] = (c, w, len(tputs), sum(t is not None for t in tputs))
    out["grid_tput"] = tputs

    from hssim.cli.optimize import _base_point
    from hssim.sim.optimize.joint import search_joint

    SETTINGS.jobs = 1
    jp = _base_point(str(ROOT / "scenarios" / "hybridserve-opt30b.yaml"), 0)
    c, w, rep = _timed(lambda: search_joint(jp))
    out["joint"] = (c, w, len(rep.joint.tried), rep.joint.best.throughput_tok_s)
    return out


# ------------------------------------------------------------------------------ parent side
def _run_child(path_dir: str, args: list[str]) -> tuple[float, float, str]:
    """(CPU s, wall s, stdout) of a child process with `path_dir` first on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": path_dir}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.perf_counter()
    res = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - w0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise RuntimeError(f"{args}: {res.stderr[-3000:]}")
    return (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime), wall, res.stdout


def measure(path_dir: str, grid_every: int, scenarios: dict[str, Path]) -> dict:
    # warm numba's on-disk cache for this tree, so that no figure below includes a compile
    _run_child(path_dir, ["-c", "from hssim.sim.api import run_point; import sys; "
                          f"sys.path.insert(0, {str(HERE)!r}); import bench_speed as b; "
                          "run_point(b._point(gen=2), engine='list')"])
    _, _, stdout = _run_child(path_dir, [str(HERE / "bench_speed.py"), "--child", "--grid-every", str(grid_every)])
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["hssim"].startswith(path_dir), out["hssim"]
    base = min(_run_child(path_dir, ["-c", "pass"])[0] for _ in range(3))
    for name, yaml in scenarios.items():
        runs = [_run_child(path_dir, ["-m", "hssim.cli", "run", str(yaml), "--json"]) for _ in range(3)]
        json.loads(runs[-1][2])  # one JSON object
        out[f"cli_{name}"] = (min(r[0] for r in runs) - base, min(r[1] for r in runs))
    out["python_pass"] = base
    return out


def _tree(rev: str | None, into: Path) -> str:
    """A folder whose `hssim` is hssim at `rev` (None: this working tree)."""
    pkg = into / "hssim"
    if rev is None:
        pkg.symlink_to(ROOT, target_is_directory=True)
    else:
        pkg.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(pkg)], input=archive, check=True)
    return str(into)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="bcdeae6", help="git revision to compare against")
    ap.add_argument("--grid-every", type=int, default=4, help="time every N-th grid point")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.grid_every)))
        return
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        scen = {"tiny": Path(d) / "tiny.yaml", "opt175b": Path(d) / "opt175b.yaml"}
        scen["tiny"].write_text(POINT_TINY)
        scen["opt175b"].write_text(POINT_175B)
        (Path(d) / "before").mkdir()
        (Path(d) / "after").mkdir()
        before = measure(_tree(args.before, Path(d) / "before"), args.grid_every, scen)
        after = measure(_tree(None, Path(d) / "after"), args.grid_every, scen)
    load1 = os.getloadavg()
    assert before["makespan_ns"] == after["makespan_ns"]
    assert before["metrics"] == after["metrics"], "the OPT-175B point's metrics differ"
    assert before["grid_tput"] == after["grid_tput"], "a grid point's throughput differs"
    print(render(before, after, args, load0, load1))


def render(before: dict, after: dict, args, load0, load1) -> str:
    cmd = f"python benchmarks/bench_speed.py --before {args.before} --grid-every {args.grid_every}" + \
        (f" --out {args.out}" if args.out else "")
    n = after["ops"]

    def ratio(key, i=0):
        return before[key][i] / after[key][i]

    def met(ok):
        return "met" if ok else "MISSED"

    rows = [
        ("replay alone (list replay + critical path), 175B schedule, best of 7", "replay",
         f"{n / before['replay'][0] / 1e6:.1f} M ops/s", f"{n / after['replay'][0] / 1e6:.1f} M ops/s",
         f">= 50 M ops/s: {met(n / after['replay'][0] >= 50e6)}"),
        ("OPT-175B point, `run_point(engine=\"list\")`, best of 5", "point", None, None,
         f"<= 30 ms CPU: {met(after['point'][0] <= 0.030)}"),
        ("OPT-175B point, first call in a fresh process", "point_first", None, None, ""),
        (f"HybridServe-style grid, every {args.grid_every}th point ({after['grid'][2]} points, "
         f"{after['grid'][3]} fit), serial", "grid", None, None, ""),
        (f"`search_joint` on hybridserve-opt30b.yaml point 0 ({after['joint'][2]} joint candidates), jobs=1",
         "joint", None, None, f"<= 5 s CPU: {met(after['joint'][0] <= 5.0)}"),
        ("`hssim run --json`, 1-layer OPT-1.3B point (start-up), CPU beyond `python -c pass`", "cli_tiny", None,
         None, f"<= 0.5 s CPU: {met(after['cli_tiny'][0] <= 0.5)}"),
        ("`hssim run --json`, OPT-175B point, CPU beyond `python -c pass`", "cli_opt175b", None, None, ""),
    ]
    lines = [
        f"# Speed: array schedules and the compiled replay ({platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()})", "",
        f"Command: `{cmd}`", "",
        f"Before = hssim at `{args.before}` (a `git archive` copy), after = this tree; both measured by the same "
        "code in child processes of one run, one after the other (see the script's docstring). CPU = CPU time of "
        "the process doing the work; wall = elapsed. The OPT-175B point's metrics and every grid point's "
        "throughput were checked equal between the two.", "",
        "| what | before CPU s | after CPU s | speed-up (CPU) | before wall s | after wall s | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, key, b_txt, a_txt, target in rows:
        b, a = before[key], after[key]
        bc = b_txt or f"{b[0]:.3f}"
        ac = a_txt or f"{a[0]:.3f}"
        if b_txt:
            bc, ac = f"{b[0]:.4f} ({b_txt})", f"{a[0]:.4f} ({a_txt})"
        lines.append(f"| {label} | {bc} | {ac} | {ratio(key):.1f}x | {b[1]:.3f} | {a[1]:.3f} | {target} |")
    lines += ["", f"`python -c pass`: {after['python_pass']:.3f} s CPU. The OPT-175B schedule has {n:,} ops. "
              f"Load average (1 min) at start {load0[0]:.2f}, at end {load1[0]:.2f} ({os.cpu_count()} cores, "
              "shared).", ""]
    text = "\n".join(lines)
    if args.out:
        Path(args.out).write_text(text)
    return text


if __name__ == "__main__":
    main()
