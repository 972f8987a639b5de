"""Bad input never crashes, hangs or eats memory; sweeps sharing a folder keep every row; no strays.

Each broken input goes through the command line and must give exit status 2, exactly one line
(`error: ... ; fix: ...`) naming the file (or option) and the field, no traceback, and no output.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from pydantic import TypeAdapter, ValidationError

from hssim.cli import main

BASE = """\
name: tiny
model: {preset: opt-1.3b, layers: 2}
hardware: rtx4090-pcie4
workload: {batch: 8, prompt_len: 64, gen_len: 3}
policies:
  - {kind: kv-only}
"""

LAUGHS = "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10) if i else ', '.join(['x'] * 10)}]\n" for i in range(7)
)


def _hw(over: str) -> str:
    return BASE.replace("hardware: rtx4090-pcie4", f"hardware: {{preset: rtx4090-pcie4, {over}}}")


def _policy(pol: str, sweep: str = "") -> str:
    return BASE.replace("{kind: kv-only}", pol) + (f"sweep: {sweep}\n" if sweep else "")


#: name -> (file bytes, text the error must contain besides the file name)
SCENARIOS: dict[str, tuple[bytes, str]] = {
    "latin-1 byte": (BASE.replace("tiny", "caf\xe9").encode("latin-1"), "byte 9"),
    "latin-1 byte in a value": (_hw("gpu: {name: G\xe9}").encode("latin-1"), "not UTF-8"),
    "complex key": ((BASE + "? [a, b]\n: 1\n").encode(), "plain value"),
    "mapping as a key": ((BASE + "? {a: 1}\n: 1\n").encode(), "plain value"),
    "int and str top keys": ((BASE + "1: x\nzzz: y\n").encode(), "top-level key"),
    "unknown top key": ((BASE + "zzz: y\n").encode(), "zzz"),
    "nested 1000 deep": ((BASE + "description: " + "[" * 1000 + "]" * 1000 + "\n").encode(), "nested deeper"),
    "nested mappings deep": ((BASE + "description: " + "{a: " * 200 + "1" + "}" * 200 + "\n").encode(),
                             "nested deeper"),
    "billion laughs in name": ((LAUGHS + BASE.replace("name: tiny", "name: *l6")).encode(), "aliases"),
    "billion laughs in batch": ((LAUGHS + BASE.replace("batch: 8", "batch: *l6")).encode(), "aliases"),
    "billion laughs in kind": ((LAUGHS + BASE.replace("{kind: kv-only}", "{kind: *l6}")).encode(), "aliases"),
    "alias inside itself": ((BASE + "description: &a [*a]\n").encode(), "alias"),
    "python tag": ((BASE + "description: !!python/object/apply:os.system [ls]\n").encode(), "tag"),
    "NUL character": ((BASE + "description: a\x00b\n").encode(), "U+0000"),
    "duplicate key": ((BASE + "name: other\n").encode(), "twice"),
    "empty file": (b"", "mapping"),
    "a list": (b"- 1\n- 2\n", "mapping"),
    "not YAML": (b"model: [\n", "line"),
    "latency inf": (_hw("link: {latency_s: .inf}").encode(), "hardware.link.latency_s"),
    "launch overhead 1e30": (_hw("gpu: {launch_overhead_s: 1.0e+30}").encode(), "hardware.gpu.launch_overhead_s"),
    "h2d 1e-300": (_hw("link: {h2d_pinned_Bps: 1.0e-300}").encode(), "hardware.link.h2d_pinned_Bps"),
    "peak flops inf": (_hw("gpu: {peak_flops: .inf}").encode(), "hardware.gpu.peak_flops"),
    "hbm inf": (_hw("gpu: {hbm_Bps: .inf}").encode(), "hardware.gpu.hbm_Bps"),
    "host memory rate inf": (_hw("host: {memory_Bps: .inf}").encode(), "hardware.host.memory_Bps"),
    "cpu flops nan": (_hw("cpu: {flops: .nan}").encode(), "hardware.cpu.flops"),
    "memory negative": (_hw("gpu: {memory_bytes: -1}").encode(), "hardware.gpu.memory_bytes"),
    "block_tokens 9e18": (_policy("{kind: hybridserve, block_tokens: 9000000000000000000}").encode(),
                          "policies[0].block_tokens"),
    "batch true": (BASE.replace("batch: 8", "batch: true").encode(), "workload.batch"),
    "gen_len 1e30": (BASE.replace("gen_len: 3", "gen_len: 1.0e+30").encode(), "workload.gen_len"),
    "pinned 1": (_policy("{kind: kv-only, pinned: 1}").encode(), "policies[0].pinned"),
    "kv_ratio -0.1 under an axis": (_policy("{kind: hybrid, kv_ratio: -0.1}", "{policy.kv_ratio: [0.5]}").encode(),
                                    "policies[0].kv_ratio"),
    "kv_ratio nan under an axis": (_policy("{kind: hybrid, kv_ratio: .nan}", "{policy.kv_ratio: [0.5]}").encode(),
                                   "policies[0].kv_ratio"),
    "bad sweep value nobody reads": (_policy("{kind: kv-only}", "{policy.kv_ratio: [0.5, 7]}").encode(),
                                     "sweep.policy.kv_ratio[1]"),
    "kind in policy_defaults": ((BASE + "policy_defaults: {kind: hybrid}\n").encode(), "policy_defaults.kind"),
    "bad policy default": ((BASE + "policy_defaults: {kv_ratio: -1}\n").encode(), "policy_defaults.kv_ratio"),
    "typo in policy_defaults": ((BASE + "policy_defaults: {num_gpu_batchs: 2}\n").encode(), "num_gpu_batchs"),
    "unknown policy kind": (_policy("{kind: [1, 2]}").encode(), "policies[0].kind"),
    "10^9 points": ((BASE + "sweep: {workload.prompt_len: [%s], workload.gen_len: [%s], policy.num_gpu_batches: [%s]}\n"
                     % ((", ".join(map(str, range(1, 1001))),) * 3)).encode(), "10000000"),
    "10^8 ops": (BASE.replace("layers: 2", "layers: 9000").replace("prompt_len: 64", "prompt_len: 8")
                 .replace("gen_len: 3", "gen_len: 2000").encode(), "model.layers x workload.gen_len"),
    "hardware names a scenario": (BASE.replace("hardware: rtx4090-pcie4", "hardware: {dir}/other.yaml").encode(),
                                  "hardware"),
    "hardware names a binary file": (BASE.replace("hardware: rtx4090-pcie4", "hardware: {dir}/blob.yaml").encode(),
                                     "hardware"),
    "lone surrogate in a name": (BASE.replace("name: tiny", 'name: "a\\ud800b"').encode(), "U+D800"),
    "lone surrogate in a hardware name": (_hw('name: "h\\udfff"').encode(), "U+DFFF"),
    "matmul efficiency 1e-300": (_hw("gpu: {matmul_efficiency: 1.0e-300}").encode(), "matmul_efficiency"),
    "hbm efficiency 1e-300": (_hw("gpu: {hbm_efficiency: 1.0e-300}").encode(), "hbm_efficiency"),
    "split beyond the positions": (_policy("{kind: kvpr, split_tokens: 100000}").encode(), "split_tokens"),
    "an axis no policy reads": (_policy("{kind: kv-only}", "{policy.split_tokens: [1, 2, 3]}").encode(),
                                "sweep.policy.split_tokens"),
    "profile file missing": (BASE.replace("hardware: rtx4090-pcie4", "hardware: /no/such/profile.yaml").encode(),
                             "no such profile file"),
    "profile given as a hardware field": (_hw("profile: /no/such/profile.yaml").encode(), "hardware.profile"),
    "profile without an idle GEMM table": (BASE.replace("hardware: rtx4090-pcie4", "hardware: bad-prof.yaml").encode(),
                                           "idle"),
}


def _one_line(res, *needles: str) -> str:
    """The run failed as promised: exit 2, one line, no traceback; returns the line."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit), res.exception
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith("error: ") and "; fix: " in line, line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_broken_scenario_is_one_line_and_writes_nothing(tmp_path, name):
    text, needle = SCENARIOS[name]
    (tmp_path / "other.yaml").write_text(BASE + "? [a]\n: 1\n")
    (tmp_path / "blob.yaml").write_bytes(bytes(range(256)) * 8)
    profile = (Path(__file__).resolve().parents[1] / "profiles" / "cpu-amd-epyc-2cpu-1t.yaml").read_text()
    (tmp_path / "bad-prof.yaml").write_text(profile.replace("\n  idle:", "\n  idl:"))
    path = tmp_path / "s.yaml"
    path.write_bytes(text.replace(b"{dir}", str(tmp_path).encode()))
    out = tmp_path / "out"
    _one_line(_invoke("sweep", path, "--out", out, "-j", "1", "--no-report"), str(path), needle)
    assert not out.exists()


def test_run_and_schedule_refuse_the_same_files(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_bytes(SCENARIOS["billion laughs in name"][0])
    for cmd in ("run", "schedule"):
        _one_line(_invoke(cmd, path), str(path), "aliases")


def _cli_cases(tmp: Path) -> list[tuple[list, str]]:
    ok = tmp / "ok.yaml"
    ok.write_text(BASE)
    (tmp / "afile").write_text("x")
    serving = Path(__file__).resolve().parents[1] / "scenarios" / "serving" / "serving-opt13b.yaml"
    return [
        (["sweep", ok, "--out", ""], "--out"),
        (["sweep", ok, "--out", tmp / "afile" / "sub"], "is a file"),
        (["sweep", ok, "--out", tmp / "afile"], "--out"),
        (["sweep", ok, "--out", "/proc/hssim-out"], "/proc"),
        (["sweep", ok, "--out", "/sys/hssim-out"], "/sys"),
        (["sweep", ok, "--out", "/dev/null"], "/dev"),
        (["sweep", ok, "-j", "0"], "--jobs"),
        (["sweep", ok, "-j", "-3"], "--jobs"),
        (["sweep", ok, "--cluster", "not-an-address"], "--cluster"),
        (["sweep", ok, "--cluster", "tcp://host:99999"], "--cluster"),
        (["sweep", ok, "--max-points", "0"], "--max-points"),
        (["sweep"], "FILES"),
        (["sweep", ok, "--no-such-flag"], "--no-such-flag"),
        (["no-such-command"], "no-such-command"),
        (["run", ok, "--set", "workload.batch=[1,"], "--set workload.batch"),
        (["run", ok, "--set", "workload.batch=!!python/object/apply:os.system [ls]"], "--set workload.batch"),
        (["run", ok, "--set", "=3"], "--set"),
        (["run", ok, "--set", "workload.batch=true"], "workload.batch"),
        (["run", ok, "--set", "workload.prompt_len=[64,128]"], "--set workload.prompt_len"),
        (["run", ok, "--set", "workload.prompt_len="], "--set workload.prompt_len"),
        (["run", ok, "--set", "workload.prompt_len=-5"], "--set workload.prompt_len"),
        (["run", ok, "--timeline", tmp / "t.CSV"], "--timeline"),
        (["run", ok, "--trace", tmp / "t.json", "--trace-steps", "50"], "--trace-steps"),
        (["run", ok, "--trace", tmp / "t.json", "--trace-layers", "100-200"], "--trace-layers"),
        (["sensitivity", ok, "--seed", "-1"], "--seed"),
        (["sensitivity", ok, "--samples", "100000000"], "--samples"),
        (["run", ok, "--timeline", tmp / "t.txt"], "--timeline"),
        (["run", ok, "--timeline", "/dev/null"], "--timeline"),
        (["run", ok, "--timeline", tmp], "--timeline"),
        (["run", ok, "--trace", tmp / "afile" / "t.json"], "--trace"),
        (["run", ok, "--trace", "/proc/t.json"], "--trace"),
        (["run", ok, "--layers", "0"], "--layers"),
        (["run", tmp], "SCENARIO"),
        (["serve", "trace", "--out", "/proc/t.csv"], "--out"),
        (["serve", "trace", "--out", tmp / "afile" / "t.csv"], "--out"),
        (["serve", "trace", "--out", tmp / "t.csv", "--prompt-median", "5000", "--prompt-max", "10"],
         "--prompt-median"),
        (["serve", "trace", "--out", tmp / "t.csv", "--rate-rps", "nan"], "--rate-rps"),
        (["serve", "trace", "--out", tmp / "t.csv", "--rate-rps", "inf"], "--rate-rps"),
        (["serve", "trace", "--out", tmp / "t.csv", "--sigma", "inf"], "--sigma"),
        (["serve", "trace", "--out", tmp / "t.csv", "--seed", "-1"], "--seed"),
        (["serve", "trace", "--out", tmp / "t.csv", "--requests", "1000000000"], "--requests"),
        (["serve", "trace", "--out", tmp / "t.txt"], "--out"),
        (["serve", "run", serving, "--markdown", tmp], "--markdown"),
        (["serve", "run", serving, "--markdown", "/dev/null"], "--markdown"),
        (["serve", "run", serving, "--out", tmp / "afile"], "--out"),
        (["serve", "run", serving, "-j", "0"], "--jobs"),
        (["report", tmp / "r.parquet", "--out", tmp / "afile" / "r"], "--out"),
        (["cluster", "--workers", "0"], "--workers"),
    ]


def test_bad_command_lines_are_one_line_and_write_nothing(tmp_path):
    before = None
    for args, needle in _cli_cases(tmp_path):
        if before is None:
            before = sorted(p.name for p in tmp_path.rglob("*"))
        _one_line(_invoke(*args), needle)
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, args


def test_unwritable_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    import hssim.cli.common as common

    monkeypatch.setattr(common, "_probe_writable", lambda folder: "Operation not permitted")
    ok = tmp_path / "ok.yaml"
    ok.write_text(BASE)
    _one_line(_invoke("sweep", ok, "--out", tmp_path / "out"), "cannot write")
    assert not (tmp_path / "out").exists()


TRACES = {
    "inf arrival": (b"arrival_s,prompt_len,output_len\ninf,10,10\n", "line 2"),
    "1e18 arrival": (b"arrival_s,prompt_len,output_len\n1e18,10,10\n", "line 2"),
    "nan arrival": (b"arrival_s,prompt_len,output_len\nnan,10,10\n", "line 2"),
    "latin-1 byte": (b"arrival_s,prompt_len,output_len\n0,10,10 \xe9\n", "byte 40"),
    "huge length": (b"arrival_s,prompt_len,output_len\n0,99999999999,10\n", "line 2"),
    "short row": (b"arrival_s,prompt_len,output_len\n0,10\n", "line 2"),
    "wrong header": (b"arrival,prompt,output\n0,10,10\n", "header"),
    "no rows": (b"arrival_s,prompt_len,output_len\n", "no requests"),
    "binary": (bytes(range(256)), "not UTF-8"),
}


@pytest.mark.parametrize("name", list(TRACES))
def test_broken_trace_is_one_line(tmp_path, name):
    data, needle = TRACES[name]
    trace = tmp_path / "t.csv"
    trace.write_bytes(data)
    scen = tmp_path / "s.yaml"
    scen.write_text(textwrap.dedent("""\
        model: {preset: opt-1.3b, layers: 2}
        hardware: rtx4090-pcie4
        workload: {trace: t.csv}
        policies: [{kind: vllm-swap}]
    """))
    _one_line(_invoke("serve", "run", scen), str(trace), needle)


SERVING = """\
model: {preset: opt-1.3b, layers: 2}
hardware: rtx4090-pcie4
workload: {requests: 10, rate_rps: 1.0, prompt_len: 64, output_len: 8}
policies: [{kind: vllm-swap}]
"""

SERVING_CASES = {
    "rate inf": (SERVING.replace("rate_rps: 1.0", "rate_rps: .inf"), "workload.rate_rps"),
    "requests true": (SERVING.replace("requests: 10", "requests: true"), "workload.requests"),
    "requests 1e12": (SERVING.replace("requests: 10", "requests: 1000000000000"), "workload.requests"),
    "median above max": (SERVING.replace("prompt_len: 64", "prompt_len: {dist: lognormal, median: 5000, max: 10}"),
                         "workload.prompt_len"),
    "watermark nan": (SERVING + "engine: {watermark: .nan}\n", "engine.watermark"),
    "block_tokens 9e18": (SERVING + "engine: {block_tokens: 9000000000000000000}\n", "engine.block_tokens"),
    "gpu_kv_bytes inf": (SERVING + "gpu_kv_bytes: .inf\n", "gpu_kv_bytes"),
    "gpu_kv_bytes 0.5": (SERVING + "gpu_kv_bytes: 0.5\n", "gpu_kv_bytes"),
    "gpu_kv_bytes 400 digits": (SERVING + "gpu_kv_bytes: " + "9" * 400 + "\n", "gpu_kv_bytes"),
    "policy kind a list": (SERVING.replace("[{kind: vllm-swap}]", "[{kind: [vllm-swap]}]"), "policies[0].kind"),
    "a block larger than the pool": (SERVING + "gpu_kv_bytes: 1.0e9\nengine: {block_tokens: 1048576}\n",
                                     "block_tokens"),
    "27 M points": (SERVING + "sweep: {workload.seed: [%s], engine.max_running: [%s], workload.rate_rps: [%s]}\n"
                    % ((", ".join(map(str, range(1, 301))),) * 3), "exceed the limit"),
    "laughs": (LAUGHS + SERVING.replace("requests: 10", "requests: *l6"), "aliases"),
    "trace is a device": (SERVING.replace("{requests: 10, rate_rps: 1.0, prompt_len: 64, output_len: 8}",
                                          "{trace: /dev/zero}"), "not a regular file"),
}


@pytest.mark.parametrize("name", list(SERVING_CASES))
def test_broken_serving_scenario_is_one_line(tmp_path, name):
    text, needle = SERVING_CASES[name]
    scen = tmp_path / "s.yaml"
    scen.write_text(text)
    out = tmp_path / "out"
    named = "/dev/zero" if name == "trace is a device" else str(scen)
    _one_line(_invoke("serve", "run", scen, "--out", out), named, needle)
    assert not out.exists()


def test_trace_with_spaces_and_bom_reads_like_a_plain_one(tmp_path):
    from hssim.sim.serving.workload import read_trace

    plain, spaced, bom = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    plain.write_text("arrival_s,prompt_len,output_len\n0.5,10,20\n0,5,6\n")
    spaced.write_text("arrival_s, prompt_len , output_len\n0.5, 10, 20\n 0 ,5,6\n")
    bom.write_bytes("\ufeffarrival_s,prompt_len,output_len\r\n0.5,10,20\r\n0,5,6\r\n".encode())
    assert read_trace(plain) == read_trace(spaced) == read_trace(bom)


def _spec_classes():
    from hssim.sim import specs
    from hssim.sim.serving import policies, workload
    from hssim.sim.serving import specs as serving_specs

    seen = []
    for module in (specs, serving_specs, policies, workload):
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, specs.Spec) and obj is not specs.Spec and obj not in seen:
                seen.append(obj)
    return seen


def test_every_numeric_spec_field_refuses_absurd_values():
    """Booleans, inf, nan and 1e30 are refused by every int and float field of every spec."""
    from typing import Annotated, get_args

    checked = 0
    for cls in _spec_classes():
        for name, info in cls.model_fields.items():
            base = [a for a in (get_args(info.annotation) or (info.annotation,)) if a is not type(None)]
            if base not in ([int], [float]):
                continue
            adapter = TypeAdapter(Annotated[info.annotation, info])
            for bad in (True, math.inf, -math.inf, math.nan, 1e30, -1e30):
                with pytest.raises(ValidationError):
                    adapter.validate_python(bad)
                    pytest.fail(f"{cls.__name__}.{name} took {bad!r}")
            checked += 1
    assert checked >= 30


def test_op_estimate_bounds_every_policy():
    """The op count the CLI checks before building is an upper bound of what is built."""
    from hssim.sim.api import estimate_ops
    from hssim.sim.policies import build_schedule
    from hssim.sim.presets import HARDWARE, MODELS
    from hssim.sim.specs import PointSpec, PolicySpec, WorkloadSpec

    policies = [{"kind": "kv-only"}, {"kind": "kv-only", "cpu_attention": True}, {"kind": "flexgen"},
                {"kind": "flexgen", "cpu_attention": True}, {"kind": "hybrid", "kv_ratio": 0.5},
                {"kind": "token-recompute", "kv_ratio": 0.5}, {"kind": "hybridserve", "kv_ratio": 0.5},
                {"kind": "kvpr"}, {"kind": "kvpr", "split_rule": "per-step"},
                {"kind": "hybrid", "kv_ratio": 0.5, "weights_gpu_percent": 50}]
    for layers in (1, 3):
        model = MODELS["opt-1.3b"].model_copy(update={"layers": layers})
        for gen in (1, 3):
            for k in (1, 2):
                for pol in policies:
                    p = PointSpec(scenario="x", model=model, hardware=HARDWARE["rtx4090-pcie4"],
                                  workload=WorkloadSpec(batch=4, prompt_len=16, gen_len=gen),
                                  policy=PolicySpec(num_gpu_batches=k, **pol))
                    assert len(build_schedule(p, check_memory=False).ops) <= estimate_ops(p)


def test_schedule_checks_memory_before_building(tmp_path, monkeypatch):
    from hssim.sim.policies import block

    def never(*args, **kwargs):
        raise AssertionError("ops were built for a point that does not fit")

    monkeypatch.setattr(block._BlockBuilder, "_emit", never)
    scen = tmp_path / "s.yaml"
    scen.write_text(_hw("host: {memory_bytes: 1000000}"))
    _one_line(_invoke("schedule", scen), str(scen), "does not fit")


# ------------------------------------------------------------------ sweeps sharing a folder


def test_a_second_sweep_on_a_locked_folder_is_refused(tmp_path):
    from hssim.sim.outfiles import FolderLock

    scen = tmp_path / "s.yaml"
    scen.write_text(BASE)
    out = tmp_path / "out"
    with FolderLock(out):
        _one_line(_invoke("sweep", scen, "--out", out, "-j", "1", "--no-report"), "another hssim sweep")
    assert sorted(p.name for p in out.iterdir()) == [".hssim.lock"]
    res = _invoke("sweep", scen, "--out", out, "-j", "1", "--no-report")
    assert res.exit_code == 0, res.output


def test_a_sweeps_workers_do_not_hold_its_folder_lock(tmp_path):
    """A forked worker closes its copy of the lock: a killed sweep's folder is free once the sweep is gone."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from hssim.sim.outfiles import FolderLock
    from hssim.sim.sweep import _ignore_sigint

    lock = FolderLock(tmp_path).__enter__()
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"), initializer=_ignore_sigint)
    try:
        assert pool.submit(os.getpid).result() != os.getpid()  # forked while the lock is held
        lock.__exit__(None, None, None)
        with FolderLock(tmp_path):
            pass
    finally:
        pool.shutdown()


def test_tables_hold_every_row_of_the_journal(tmp_path):
    from hssim.sim.sweep import JOURNAL, Journal

    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(BASE)
    b.write_text(BASE.replace("name: tiny", "name: other").replace("{kind: kv-only}", "{kind: hybrid, kv_ratio: 0.5}"))
    out = tmp_path / "out"
    for scen in (a, b, a):
        res = _invoke("sweep", scen, "--out", out, "-j", "1", "--no-report")
        assert res.exit_code == 0, res.output
        journal = Journal(out / JOURNAL).load()
        for table in ("results.parquet", "results.csv"):
            df = pd.read_parquet(out / table) if table.endswith("parquet") else pd.read_csv(out / table)
            assert sorted(df["point_key"]) == sorted(journal), table
    assert set(df["scenario"]) == {"tiny", "other"}


def test_fresh_with_an_unreachable_cluster_keeps_the_journal(tmp_path):
    import socket

    from hssim.sim.sweep import JOURNAL

    scen = tmp_path / "s.yaml"
    scen.write_text(BASE)
    out = tmp_path / "out"
    out.mkdir()
    (out / JOURNAL).write_text('{"point_key": "x", "status": "ok"}\n')
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _one_line(_invoke("sweep", scen, "--out", out, "--fresh", "--cluster", f"tcp://127.0.0.1:{port}"), "--cluster")
    assert (out / JOURNAL).read_text() == '{"point_key": "x", "status": "ok"}\n'
    new = tmp_path / "new"
    _one_line(_invoke("sweep", scen, "--out", new, "--cluster", f"tcp://127.0.0.1:{port}"), "--cluster")
    assert not new.exists()


# ------------------------------------------------------------------------------- strays


_PARENT = """
import sys, time
from concurrent.futures import ProcessPoolExecutor
from hssim.sim.sweep import _ignore_sigint
pool = ProcessPoolExecutor(max_workers=2, initializer=_ignore_sigint)
futures = [pool.submit(time.sleep, 120) for _ in range(2)]
while len(pool._processes) < 2:
    time.sleep(0.05)
time.sleep(0.5)
print(" ".join(str(p) for p in pool._processes), flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_workers_end_when_the_sweep_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids)
    finally:
        parent.kill()
        parent.wait()


def test_local_cluster_listens_on_loopback_dask_ports_only():
    import psutil

    from hssim.cli.sweep import start_local_cluster

    lc = start_local_cluster(1)
    try:
        from distributed import Client

        with Client(lc) as client:
            info = client.scheduler_info()
        known = {int(lc.scheduler_address.rsplit(":", 1)[1])}
        for addr, worker in info["workers"].items():
            known.add(int(addr.rsplit(":", 1)[1]))
            if worker.get("nanny"):
                known.add(int(worker["nanny"].rsplit(":", 1)[1]))
        me = psutil.Process()
        listening = []
        for proc in [me, *me.children(recursive=True)]:
            try:
                conns = proc.net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue
            listening += [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
        assert listening
        assert {a.ip for a in listening} == {"127.0.0.1"}
        assert {a.port for a in listening} <= known  # no dashboard, no HTTP port
    finally:
        lc.close()


def test_figures_are_written_whole_and_stale_temporaries_removed(tmp_path):
    import matplotlib.pyplot as plt

    from hssim.reports.style import save_figure

    dead = tmp_path / ".f.png.999999999.abc.tmp"  # a writer that no longer exists
    old = tmp_path / ".results.parquet.abc123.tmp"
    unnamed = tmp_path / ".f.pdf.xyz.tmp"
    for p in (dead, old, unnamed):
        p.write_bytes(b"")
    os.utime(unnamed, (time.time() - 3600, time.time() - 3600))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    paths = save_figure(fig, tmp_path, "f")
    assert all(p.stat().st_size > 0 for p in paths)
    assert not dead.exists() and not unnamed.exists()
    assert old.exists()  # another file's temporary: left to that file's next write
    from hssim.sim.sweep import write_atomic

    os.utime(old, (time.time() - 3600, time.time() - 3600))
    write_atomic(pd.DataFrame({"a": [1]}), tmp_path / "results.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png", "results.parquet"]


def test_a_sweep_where_no_point_fits_writes_full_tables_and_a_report(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(_hw("gpu: {memory_bytes: 1000}"))
    out = tmp_path / "out"
    res = _invoke("sweep", path, "--out", out, "-j", "1")
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out / "results.csv")
    assert (df["status"] == "infeasible").all() and "throughput_tok_s" in df.columns
    assert (out / "report" / "README.md").is_file()


def test_a_file_where_the_report_folder_goes_is_refused_before_any_point_runs(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(BASE)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report").write_text("x")
    _one_line(_invoke("sweep", path, "--out", out, "-j", "1"), "report")
    assert sorted(p.name for p in out.iterdir()) == ["report"]
