"""validate: the profile and its cost model, the comparison, and `hssim validate --device cpu` end to end."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import make_point, tiny_model

from hssim.sim.costs.profile import (
    Curve,
    GemmTable,
    HardwareProfile,
    LinearFit,
    ProfiledCostModel,
    ProfileDeviceWarning,
    check_device,
    load_profile,
)
from hssim.sim.engine import simulate
from hssim.sim.policies import build_schedule
from hssim.sim.schedule import OpKind
from hssim.sim.trace import read_trace
from hssim.validate.compare import join_ops, overlap, point_errors, step_times


def _fit(c: float) -> LinearFit:
    return LinearFit(intercept_s=c, per_kv_byte_s=1e-10, per_flop_s=1e-12, per_row_s=0.0, median_ape=0.0)


def synthetic_profile(**over) -> HardwareProfile:
    curve = Curve(bytes=[4096, 2**20, 2**26], seconds=[5e-6, 1e-4, 6e-3])
    data = dict(
        name="synthetic", device={"backend": "cpu", "name": "test-cpu", "driver": "d", "torch_version": "t",
                                  "cuda_version": "none", "host": "h", "cpu_count": 2, "date": "2026-01-01"},
        dtype="fp16", threads=1, contention="idle", device_memory_bytes=64 * 2**30, host_memory_bytes=64 * 2**30,
        launch_s=5e-6, copies={f"{d}/pageable/idle": curve for d in ("h2d", "d2h")}, device_copy=curve,
        gemm={"idle": GemmTable(rows=[(m, n, k, 1e-6 + 2 * m * n * k / 1e11) for m in (1, 8, 64)
                                      for n, k in ((1024, 256), (768, 256), (256, 256), (256, 1024))])},
        attention_decode=_fit(1e-5), attention_prefill=_fit(2e-5), cpu_attention=_fit(3e-5), op_overhead_s={},
    )
    data.update(over)
    return HardwareProfile(**data)


def test_curve_and_gemm_table_interpolate_monotonically_and_extrapolate_linearly():
    c = Curve(bytes=[1000, 10_000, 100_000], seconds=[1e-5, 2e-5, 1e-4])
    sizes = np.geomspace(10, 1e7, 50)
    times = [c.time_s(s) for s in sizes]
    assert all(b >= a for a, b in zip(times, times[1:], strict=False))
    assert c.time_s(1e6) == pytest.approx(1e-3)  # linear in bytes beyond the largest measurement
    assert c.time_s(0) == 0.0
    t = synthetic_profile().gemm["idle"]
    assert t.time_s(8, 1024, 256) == pytest.approx(1e-6 + 2 * 8 * 1024 * 256 / 1e11)
    assert t.time_s(4, 1024, 256) < t.time_s(8, 1024, 256) < t.time_s(16, 1024, 256)
    # an unmeasured (N, K) is scaled from the nearest measured one by N*K
    assert t.time_s(8, 2048, 256) == pytest.approx(2 * t.time_s(8, 1024, 256))


@pytest.mark.parametrize("policy", [dict(kind="kv-only"), dict(kind="kv-only", cpu_attention=True),
                                    dict(kind="hybrid", kv_ratio=0.5), dict(kind="token-recompute", kv_ratio=0.5)])
@pytest.mark.parametrize("llama", [False, True])
def test_profiled_cost_model_covers_every_op_of_every_policy(policy, llama):
    model = tiny_model(layers=2, hidden=256, llama=llama)
    p = make_point(model, batch=4, prompt_len=16, gen_len=3, num_gpu_batches=2, **policy)
    sched = build_schedule(p)
    cost = ProfiledCostModel(synthetic_profile(), p.model)
    durs = [cost.duration_s(op) for op in sched.ops]
    assert all(math.isfinite(d) and d > 0 for d in durs)
    res = simulate(sched, cost)
    assert res.makespan_s > 0
    # more context costs more attention; more bytes cost more copy time
    att = sorted((op.shape_dict["past_tokens"], cost.duration_s(op)) for op in sched.ops
                 if op.kind is OpKind.attention and op.step >= 1)
    assert all(b[1] >= a[1] for a, b in zip(att, att[1:], strict=False))


def test_profile_round_trips_through_yaml_and_warns_on_another_device(tmp_path):
    prof = synthetic_profile()
    path = prof.save(tmp_path / "p.yaml")
    back = load_profile(path)
    assert back == prof
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_device(back, dict(prof.device))
    with pytest.warns(ProfileDeviceWarning, match="another device"):
        load_profile(path, current={**prof.device, "name": "other-gpu"})
    spec = back.hardware_spec()
    assert spec.link.h2d_pinned_Bps == pytest.approx(2**26 / 6e-3)


def test_join_and_errors_of_identical_timelines_are_zero():
    p = make_point(tiny_model(layers=2), batch=4, prompt_len=16, gen_len=3, num_gpu_batches=2, kind="hybrid",
                   kv_ratio=0.5)
    sched = build_schedule(p)
    tl = simulate(sched, ProfiledCostModel(synthetic_profile(), p.model)).timeline()
    ops = join_ops(tl, tl)
    assert len(ops) == len(sched.ops) and float(ops["ape"].max()) == 0.0
    row, steps = point_errors(tl, tl)
    assert row["e2e_ape"] == 0.0 and (steps["ape"] == 0).all()
    assert step_times(tl).sum() == pytest.approx(tl["end_s"].max())
    ov = overlap(tl)
    assert 0.0 <= ov["hidden_link_share"] <= 1.0 and ov["overlap_s"] <= ov["link_busy_s"] + 1e-12


def test_validate_gpu_without_cuda_is_a_one_line_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from click.testing import CliRunner

    from hssim.cli.validate import validate

    r = CliRunner().invoke(validate, ["--gpu"])
    assert r.exit_code == 2
    assert "no CUDA device" in r.output and "--device cpu" in r.output and len(r.output.strip().splitlines()) == 1
    assert r.output.startswith("error: --gpu:")
    r = CliRunner().invoke(validate, ["--device", "cuda"])  # the message names the flag the user gave
    assert r.exit_code == 2 and r.output.startswith("error: --device cuda:"), r.output


def test_cuda_driver_version_tries_nvml_then_nvidia_smi_then_libcuda(monkeypatch):
    from hssim.validate import device

    calls = []

    def source(name, value):
        def f():
            calls.append(name)
            return value
        return f

    monkeypatch.setattr(device, "_driver_from_nvml", source("nvml", None))
    monkeypatch.setattr(device, "_driver_from_smi", source("smi", "550.54.15"))
    monkeypatch.setattr(device, "_driver_from_libcuda", source("libcuda", "CUDA 12.4 driver API"))
    assert device.cuda_driver_version() == "550.54.15" and calls == ["nvml", "smi"]
    monkeypatch.setattr(device, "_driver_from_smi", source("smi", None))
    assert device.cuda_driver_version() == "CUDA 12.4 driver API"
    monkeypatch.setattr(device, "_driver_from_libcuda", source("libcuda", None))
    assert device.cuda_driver_version() is None


def test_validate_device_cpu_quick_writes_a_complete_finite_report(tmp_path):
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from hssim.cli.validate import validate

    out = tmp_path / "report"
    r = CliRunner().invoke(validate, ["--device", "cpu", "--set", "quick", "--out", str(out)])
    assert r.exit_code == 0, r.output
    for name in ("README.md", "summary.csv", "points.csv", "steps.csv", "kinds.csv", "worst_ops.csv", "ops.csv",
                 "copy_overlap.csv",
                 "ablation.csv", "profile.yaml", "figures/scatter_by_kind.png", "figures/gantt_decode_step.png",
                 "figures/overlap_by_policy.png", "microbench/gemm.csv", "microbench/copies.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summ = pd.read_csv(out / "summary.csv").iloc[0]
    for col in ("e2e_ape_median", "e2e_ape_p95", "step_ape_median", "step_ape_p95"):
        assert math.isfinite(summ[col]) and summ[col] >= 0, col
    points = pd.read_csv(out / "points.csv")
    assert points["policy"].nunique() == 7  # each policy kind, flexgen, kvpr and hybridserve included
    assert {"flexgen", "kvpr l=8", "hybridserve r=0.50 balanced"} <= set(points["policy"])
    assert points["load_1min"].notna().all() and "load_1min_max" in summ and "overloaded" in summ
    assert set(points["host_cache_memory"]) == {"pageable"}  # the CPU backend never pins
    assert np.isfinite(points[["makespan_sim_s", "makespan_meas_s", "e2e_ape"]].to_numpy()).all()
    # the machine's drift since calibration, measured before every point
    probe = points[["probe_gemm_ratio", "probe_copy_ratio"]].to_numpy()
    assert np.isfinite(probe).all() and (probe > 0).all()
    kinds = pd.read_csv(out / "kinds.csv")
    assert np.isfinite(kinds[["ape_median", "sim_total_s", "meas_total_s"]].to_numpy()).all()
    text = (out / "README.md").read_text()
    assert "hssim validate --device cpu --set quick" in text and "not run on a GPU" in text
    assert "load average (1 min)" in text
    traces = sorted((out / "traces").glob("*.json.gz"))
    assert len(traces) == len(points)
    trace = read_trace(traces[0])  # the measured and the simulated timeline, as processes of their own
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "process_name"}
    assert any("measured" in n for n in names.values()) and any("simulated" in n for n in names.values())
    assert {e["pid"] for e in trace["traceEvents"] if e.get("ph") == "X"} <= set(names)
    # the saved profile loads back and drives the cost model
    prof = load_profile(out / "profile.yaml")
    assert prof.device["backend"] == "cpu" and prof.op_overhead_s
    assert prof.op_cold_s and set(prof.op_cold_s) <= set(prof.op_overhead_s)
    # attention measured beside a copy as well as alone, as GEMMs are
    assert prof.attention_decode_busy is not None and prof.attention_prefill_busy is not None
    # and kept as measured: the table the cost model prices attention from
    assert set(prof.attention) == {"idle", "busy"}
    assert set(pd.read_csv(out / "microbench" / "attention.csv")["condition"]) == {"idle", "busy"}


def test_contention_blend_lies_between_idle_and_busy_rates():
    from hssim.sim.costs.contention import simulate_contended

    p = make_point(tiny_model(layers=2), batch=4, prompt_len=16, gen_len=3, num_gpu_batches=2, kind="kv-only")
    sched = build_schedule(p)
    idle = synthetic_profile()
    slow = GemmTable(rows=[(m, n, k, 3 * s) for m, n, k, s in idle.gemm["idle"].rows])
    prof = synthetic_profile(contention="overlap", gemm={"idle": idle.gemm["idle"], "busy": slow})
    lo = simulate(sched, ProfiledCostModel(prof, p.model, contended=False)).makespan_ns
    hi = simulate(sched, ProfiledCostModel(prof, p.model, contended=True)).makespan_ns
    mid = simulate_contended(sched, prof, p.model).makespan_ns
    assert lo <= mid <= hi
    same = synthetic_profile(contention="overlap", gemm={"idle": idle.gemm["idle"], "busy": idle.gemm["idle"]})
    assert simulate_contended(sched, same, p.model).makespan_ns == lo


def test_attention_beside_a_copy_is_priced_with_its_busy_fit_and_idle_without_one():
    model = tiny_model(layers=2, hidden=256)
    p = make_point(model, batch=4, prompt_len=16, gen_len=3, num_gpu_batches=2, kind="kv-only")
    attn = [op for op in build_schedule(p).ops if op.kind is OpKind.attention]
    slow = LinearFit(intercept_s=1e-3, per_kv_byte_s=1e-8, per_flop_s=1e-10, per_row_s=0.0, median_ape=0.0)
    with_busy = synthetic_profile(attention_decode_busy=slow, attention_prefill_busy=slow)
    without = synthetic_profile()
    for op in attn:
        idle = ProfiledCostModel(with_busy, p.model, contended=False).duration_s(op)
        busy = ProfiledCostModel(with_busy, p.model, contended=True).duration_s(op)
        assert busy > idle == ProfiledCostModel(without, p.model, contended=False).duration_s(op)
        assert ProfiledCostModel(without, p.model, contended=True).duration_s(op) < busy
    # the fits survive a save and a load
    assert HardwareProfile.model_validate(with_busy.model_dump()).attention_decode_busy == slow


def test_contention_blend_charges_opposite_direction_copies_their_duplex_rate():
    from hssim.sim.costs.contention import overlap_shares, simulate_contended

    p = make_point(tiny_model(layers=2), batch=4, prompt_len=16, gen_len=3, num_gpu_batches=2, kind="kv-only")
    sched = build_schedule(p)
    base = synthetic_profile(contention="overlap")
    curve = base.copies["h2d/pageable/idle"]
    slow = Curve(bytes=curve.bytes, seconds=[4 * s for s in curve.seconds])
    prof = base.model_copy(update={"copies": {**base.copies, "h2d/pageable/duplex": slow,
                                              "d2h/pageable/duplex": slow}})
    lo = simulate(sched, ProfiledCostModel(prof, p.model, contended=False))
    all_duplex = simulate(sched, ProfiledCostModel(prof, p.model, condition_name="duplex")).makespan_ns
    mid = simulate_contended(sched, prof, p.model).makespan_ns
    assert lo.makespan_ns <= mid <= all_duplex
    side, duplex = overlap_shares(sched, lo)
    streams = np.array([op.stream.value for op in sched.ops])
    assert ((side >= 0) & (side <= 1)).all() and ((duplex >= 0) & (duplex <= 1)).all()
    assert (duplex[streams == "compute"] == 0).all()
    if (duplex > 0).any():  # a store overlapped a load: the blend must have charged it
        assert mid > lo.makespan_ns
    # with no duplex slowdown measured, the blend is the idle replay (GEMMs have no busy table here)
    assert simulate_contended(sched, base, p.model).makespan_ns == lo.makespan_ns


def test_sweep_hands_out_operands_that_together_exceed_twice_the_cache():
    torch = pytest.importorskip("torch")
    from hssim.validate.microbench import Sweep, llc_bytes, neighbour_shapes

    first = torch.arange(1000, dtype=torch.float32)
    s = Sweep(first, llc=10_000)
    seen = [s.next() for _ in range(len(s.pool))]
    assert len({t.data_ptr() for t in seen}) == len(s.pool)  # a full cycle touches every copy once
    assert sum(t.numel() * t.element_size() for t in s.pool) > 2 * 10_000
    assert all(torch.equal(t, first) for t in s.pool)
    assert len(Sweep(first, llc=1).pool) == 2  # never the same tensor twice in a row
    assert llc_bytes("cpu") > 0
    m = tiny_model(layers=2)
    (n, k), layer = neighbour_shapes((m,))
    assert n * k * m.dtype_bytes <= layer == m.weight_bytes_per_layer


def test_attribution_sees_no_wake_up_gap_in_a_simulated_timeline():
    from hssim.validate.attribution import neighbours, pick_ops, wake_share

    p = make_point(tiny_model(layers=2), batch=4, prompt_len=16, gen_len=3, num_gpu_batches=2, kind="hybrid",
                   kv_ratio=0.5)
    sched = build_schedule(p)
    r = simulate(sched, ProfiledCostModel(synthetic_profile(), p.model))
    gap_s, share = wake_share(sched, r.start_ns, r.end_ns)
    assert gap_s == 0 and share == 0  # the simulator starts every op the moment it is ready
    delayed = r.start_ns + 1000, r.end_ns + 1000  # every op 1 us late: the origin gap is on the path
    assert wake_share(sched, *delayed)[0] == pytest.approx(1e-6)
    near = neighbours(sched, r.start_ns, r.end_ns)
    for op in sched.ops:
        nb = near[op.id]
        if nb is not None:
            other = sched.ops[nb]
            assert other.stream is not op.stream
            assert min(r.end_ns[op.id], r.end_ns[nb]) > max(r.start_ns[op.id], r.start_ns[nb])
    picked = pick_ops(sched, step=1)
    assert len({op.kind for op in picked}) == len(picked) == len({op.kind for op in sched.ops})


def test_harness_runs_single_ops_on_the_executors_buffers():
    pytest.importorskip("torch")
    from hssim.validate.measure import harness

    p = make_point(tiny_model(layers=2), batch=2, prompt_len=8, gen_len=2, num_gpu_batches=2, kind="kv-only")
    h = harness(p, "cpu")
    start, end = h.run_all()
    assert (end >= start).all() and len(end) == len(h.schedule.ops)
    for op in h.schedule.ops[:5]:
        h.run_op(op)  # in place, on the calling thread


def test_contention_blend_never_prices_below_every_measured_rate():
    from hssim.sim.costs.contention import simulate_contended

    p = make_point(tiny_model(layers=2), batch=4, prompt_len=16, gen_len=3, num_gpu_batches=2, kind="kv-only")
    sched = build_schedule(p)
    base = synthetic_profile(contention="overlap")
    curve = base.copies["h2d/pageable/idle"]
    fast = Curve(bytes=curve.bytes, seconds=[0.1 * s for s in curve.seconds])  # noise: "contended" faster
    prof = base.model_copy(update={"copies": {**base.copies, **{f"{d}/pageable/{c}": fast for d in ("h2d", "d2h")
                                                                for c in ("busy", "duplex")}}})
    fastest = simulate(sched, ProfiledCostModel(prof, p.model, contended=True)).makespan_ns
    assert fastest <= simulate_contended(sched, prof, p.model).makespan_ns


def test_attribution_reproduces_each_ops_kernels_warm_and_cold():
    pytest.importorskip("torch")
    from hssim.validate.attribution import bench_calls, pick_ops

    p = make_point(tiny_model(layers=2), batch=2, prompt_len=8, gen_len=2, num_gpu_batches=2, kind="kv-only")
    for op in pick_ops(build_schedule(p), step=1):
        for cold in (False, True):
            fn = bench_calls(p, op, cold)
            if op.kind in (OpKind.ffn, OpKind.attention, OpKind.lm_head, OpKind.load_weights):
                assert fn is not None, op.kind
            if fn is not None:
                fn()
                fn()


def test_interleaved_timing_spreads_each_callables_samples_over_the_passes():
    from hssim.validate.timing import time_interleaved

    order: list[int] = []
    fns = [lambda i=i: order.append(i) for i in range(3)]
    times = time_interleaved(fns, "cpu", min_total_s=0.0, passes=4)
    assert len(times) == 3 and all(t > 0 for t in times)
    timed = order[6:]  # after two untimed calls each (warm-up, one to size the rounds)
    assert timed == [0, 1, 2] * 4  # one round of each per pass, passes in turn


def test_a_slow_spell_falls_on_one_sample_and_the_median_drops_it():
    import time as _time

    from hssim.validate.timing import time_interleaved

    calls = {"n": 0}

    def spell():  # every call of one pass is slowed, as a noisy neighbour would
        calls["n"] += 1
        _time.sleep(0.02 if 6 < calls["n"] <= 9 else 0.001)

    fns = [spell, spell, spell]
    times = time_interleaved(fns, "cpu", min_total_s=0.0, passes=5)
    assert all(t < 0.01 for t in times)


def test_drift_probe_times_its_kernels_and_ratios_say_how_much_slower_the_machine_is():
    pytest.importorskip("torch")
    from hssim.validate.probe import drift_probe, drift_ratios
    from hssim.validate.suite import validation_set

    probe = drift_probe("cpu", validation_set("cpu", "quick").bench)
    now = probe.measure()
    assert now["gemm_s"] > 0 and now["copy_s"] > 0
    slower = drift_ratios({"gemm_s": 3.0, "copy_s": 1.0}, {"gemm_s": 2.0, "copy_s": 2.0})
    assert slower == {"probe_gemm_ratio": 1.5, "probe_copy_ratio": 0.5}


def test_error_by_copy_overlap_buckets_compute_ops_by_the_measured_share_a_weight_copy_overlapped():
    from hssim.validate.compare import error_by_copy_overlap

    def op(i, stream, kind, sim, meas):
        return {"op_id": i, "stream": stream, "kind": kind, "layer": 0, "step": 1, "micro_batch": 0, "point": 0,
                "start_s_sim": sim[0], "end_s_sim": sim[1], "start_s_meas": meas[0], "end_s_meas": meas[1],
                "dur_sim_s": sim[1] - sim[0], "dur_meas_s": meas[1] - meas[0]}

    ops = pd.DataFrame([
        op(0, "h2d", "load_weights", (0.0, 1.0), (0.0, 1.0)),
        op(1, "compute", "ffn", (0.0, 1.0), (0.0, 1.25)),  # overlapped 80% measured, 100% simulated
        op(2, "compute", "attention", (1.0, 2.0), (1.25, 2.25)),  # after the copy: alone
        op(3, "d2h", "store_kv", (2.0, 2.1), (2.25, 2.5)),  # not a compute op: not counted
    ])
    g = error_by_copy_overlap(ops).set_index("measured_copy_share")
    assert g.loc["50%-90%", "ops"] == 1 and g.loc["0%-10%", "ops"] == 1 and g["ops"].sum() == 2
    assert g.loc["50%-90%", "sim_copy_share"] == pytest.approx(1.0)
    assert g.loc["50%-90%", "sim_over_meas"] == pytest.approx(1.0 / 1.25)
    assert g.loc["0%-10%", "sim_over_meas"] == pytest.approx(1.0)
