"""vLLM's per-block KV swaps, and several models (tenants) sharing one GPU under Oneiros."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hssim.cli.serve import serve
from hssim.sim.presets import hardware_preset, model_preset
from hssim.sim.schedule import Stream
from hssim.sim.serving.engine import run_serving
from hssim.sim.serving.policies import ServingPolicySpec
from hssim.sim.serving.specs import ServingEngineSpec, ServingPoint, TenantSpec
from hssim.sim.serving.timing import IterationCost, kv_swap_copies
from hssim.sim.serving.workload import Bursts, Request, ServingWorkload, poisson_requests
from tests.conftest import tiny_model

MODEL = tiny_model(layers=6, hidden=256, heads=4)
BLOCK_BYTES = 16 * MODEL.kv_bytes_per_token * MODEL.layers
WL = ServingWorkload(requests=1, rate_rps=1.0, prompt_len=8, output_len=8)  # requests are passed explicitly


def test_swap_copy_count_is_blocks_x_layers_x_k_and_v_by_hand():
    # LLaMA-3-8B, 100 tokens in 16-token blocks: 7 blocks; 32 layers; K and V apart: 7 * 32 * 2 calls,
    # each one block of one layer's K (or V): 16 tokens * 8 KV heads * 128 * 2 bytes = 32 KiB.
    llama = model_preset("llama-3-8b")
    assert kv_swap_copies(7, llama, 16) == (448, 32768)
    copies, each = kv_swap_copies(5, MODEL, 16)
    assert copies * each == 5 * BLOCK_BYTES  # the calls move exactly the blocks' bytes


def test_swap_time_is_set_by_the_per_call_issue_cost_not_the_bulk_rate():
    llama = model_preset("llama-3-8b")
    hw = hardware_preset("gh200-c2c")
    cost = IterationCost(llama, hw)
    copies, each = kv_swap_copies(128, llama, 16)  # one 2048-token sequence
    t = cost.kv_swap_s(copies, each, Stream.h2d, 2.3e-6)
    bulk = copies * each / hw.link.h2d_pinned_Bps
    assert t >= copies * 2.3e-6 and t > 10 * bulk
    # when the wire is slower than the host, the wire sets the pace
    slow = hw.model_copy(update={"link": hw.link.model_copy(update={"h2d_pinned_Bps": 1e9})})
    t_slow = IterationCost(llama, slow).kv_swap_s(copies, each, Stream.h2d, 2.3e-6)
    assert t_slow == pytest.approx(slow.link.latency_s + 2.3e-6 + copies * each / 1e9, rel=1e-9)


def _point(policy: str, tenants: list[TenantSpec], hardware: str = "gh200-c2c") -> ServingPoint:
    return ServingPoint(scenario="test", hardware=hardware_preset(hardware), policy=ServingPolicySpec(kind=policy),
                        engine=ServingEngineSpec(max_batched_tokens=256), tenants=tuple(tenants))


def test_every_swap_iteration_issues_blocks_x_layers_x_2_copies_and_waits_for_them():
    single = ServingPoint(scenario="test", model=MODEL, hardware=hardware_preset("gh200-c2c"), workload=WL,
                          engine=ServingEngineSpec(max_batched_tokens=256),
                          policy=ServingPolicySpec(kind="vllm-swap"), gpu_kv_bytes=30 * BLOCK_BYTES)
    reqs = [Request(i, i * 1e-4, 120 + 7 * (i % 5), 40 + 3 * (i % 7)) for i in range(30)]
    it = run_serving(single, reqs).iterations
    swapped = it[it["kv_copies"] > 0]
    assert len(swapped) > 0
    blocks = (swapped["h2d_kv_bytes"] + swapped["d2h_kv_bytes"]) // BLOCK_BYTES
    assert (swapped["kv_copies"] == blocks * MODEL.layers * 2).all()
    assert not ((swapped["h2d_kv_bytes"] > 0) & (swapped["d2h_kv_bytes"] > 0)).any()  # vLLM: never both in a step
    assert (swapped["swap_wait_s"] >= swapped["kv_copies"] * 2.3e-6 * (1 - 1e-9)).all()
    assert (it.loc[it["kv_copies"] == 0, "swap_wait_s"] == 0).all()


def _two_tenants(kv_blocks: int = 24) -> list[TenantSpec]:
    return [TenantSpec(name=n, model=MODEL, workload=WL, gpu_kv_bytes=kv_blocks * BLOCK_BYTES) for n in ("a", "b")]


def _busy_then_late() -> dict[str, list[Request]]:
    """Tenant a gets a burst that outgrows its pool; tenant b sits idle, then gets one request later."""
    a = [Request(i, i * 1e-4, 120 + 7 * (i % 5), 40 + 3 * (i % 7)) for i in range(30)]
    return {"a": a, "b": [Request(0, 0.05, 60, 10)]}


def test_oneiros_reclaims_an_idle_tenants_weights_and_reloads_them_on_its_next_request():
    point = _point("oneiros", _two_tenants())
    run = run_serving(point, _busy_then_late())
    it = run.iterations
    a, b = it[it["tenant"] == "a"], it[it["tenant"] == "b"]
    per_layer = MODEL.weight_bytes_per_layer
    # a's pool took b's idle layers, in whole layers, never more than b has
    assert a["borrowed_bytes"].max() > 0
    assert (a["borrowed_bytes"] % per_layer == 0).all() and a["borrowed_bytes"].max() <= MODEL.layers * per_layer
    # b's first iteration waited for exactly the layers lent away, loaded back over H2D
    first = b.iloc[0]
    lent = a.loc[a["start_s"] < 0.05, "borrowed_bytes"].iloc[-1] // per_layer
    assert first["reloaded_layers"] == lent > 0
    layer_h2d_s = IterationCost(MODEL, point.hardware).layer_h2d_s
    assert first["reload_wait_s"] >= lent * round(layer_h2d_s * 1e9) / 1e9 - 1e-12
    assert (b["reloaded_layers"].iloc[1:] == 0).all()
    # ... and paid on its first token: arrival + reload + its prefill alone
    s = next(s for s in run.requests if s.request.arrival_s == 0.05)
    cost = IterationCost(MODEL, point.hardware)
    alone_s = MODEL.layers * cost.layer_s([(60, 0)]) + cost.lm_head_s(1)
    assert s.token_times_ns[0] / 1e9 - 0.05 >= first["reload_wait_s"] + alone_s * (1 - 1e-9)
    assert run.tenant_metrics["b"]["weight_reloads"] == 1
    assert run.metrics["h2d_reload_bytes"] == lent * per_layer
    # once b is back, a holds none of b's layers: it gave them back
    assert a.loc[a["start_s"] > b["end_s"].iloc[0], "borrowed_bytes"].eq(0).all()


def test_reclaiming_idle_weights_beats_swapping_for_the_busy_tenant():
    reqs = _busy_then_late()
    swap = run_serving(_point("vllm-swap", _two_tenants()), reqs)
    oneiros = run_serving(_point("oneiros", _two_tenants()), reqs)
    assert swap.iterations["borrowed_bytes"].max() == 0 and swap.metrics["weight_reloads"] == 0
    a = oneiros.iterations[oneiros.iterations["tenant"] == "a"]
    assert a["kv_blocks_capacity"].max() > swap.iterations["kv_blocks_capacity"].max()
    # idle tenants' weights first, its own layers only after
    first_borrow = a.index[a["borrowed_bytes"] > 0][0]
    assert (a.loc[:first_borrow, "next_remapped_layers"].iloc[:-1] == 0).all()
    assert oneiros.tenant_metrics["a"]["ttft_p99_s"] < swap.tenant_metrics["a"]["ttft_p99_s"]


def test_tenants_take_turns_and_every_request_is_served_once():
    tenants = [TenantSpec(name=n, model=MODEL, workload=WL, gpu_kv_bytes=30 * BLOCK_BYTES) for n in "xyz"]
    bursts = [Bursts(on_s=0.01, period_s=0.03, offset_s=0.01 * k) for k in range(3)]
    reqs = {n: poisson_requests(20, 2000.0, WL.prompt_len.model_copy(update={"value": 90}),
                                WL.output_len.model_copy(update={"value": 12}), seed=k, bursts=b)
            for k, (n, b) in enumerate(zip("xyz", bursts, strict=True))}
    for policy in ("vllm-swap", "vllm-recompute", "oneiros"):
        run = run_serving(_point(policy, tenants), reqs)
        assert run.metrics["output_tokens"] == 3 * 20 * 12
        for n in "xyz":
            assert run.tenant_metrics[n]["output_tokens"] == 20 * 12
        it = run.iterations
        assert (it["start_s"].to_numpy()[1:] >= it["end_s"].to_numpy()[:-1]).all()  # one iteration at a time
        assert (it["kv_blocks_used"] <= it["kv_blocks_capacity"]).all()
        assert sum(len(s.token_times_ns) for s in run.requests) == 3 * 20 * 12
        assert all((np.diff(s.token_times_ns) > 0).all() for s in run.requests)


def test_bursts_open_and_close_the_arrival_windows():
    b = Bursts(on_s=10, period_s=30, offset_s=5)
    wall = b.wall_time_s(np.array([0.0, 9.9, 10.0, 25.0]))
    assert np.allclose(wall, [5.0, 14.9, 35.0, 70.0])


# ------------------------------------------------------------------ bad input
TENANTS = """
name: tenants
hardware: gh200-c2c
engine: {max_batched_tokens: 512}
tenants:
  - name: a
    model: {preset: opt-1.3b, layers: 4}
    gpu_kv_bytes: 2.0e8
    workload: {requests: 10, rate_rps: 200, seed: 1, prompt_len: 50, output_len: 8}
  - name: b
    model: {preset: opt-1.3b, layers: 3}
    gpu_kv_bytes: 2.0e8
    workload: {requests: 10, rate_rps: 200, seed: 2, prompt_len: 50, output_len: 8}
policies:
  - {kind: vllm-swap}
  - {kind: oneiros}
"""

BAD = {
    "weights do not fit": ("model: {preset: opt-1.3b, layers: 3}", "model: opt-66b", "tenants: "),
    "no workload": ("    workload: {requests: 10, rate_rps: 200, seed: 2, prompt_len: 50, output_len: 8}\n", "",
                    "tenants[1].workload"),
    "duplicate names": ("  - name: b\n", "  - name: a\n", "tenants[1].name"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tenant_lists_give_one_clear_line_and_write_nothing(tmp_path: Path, case):
    old, new, field = BAD[case]
    assert old in TENANTS
    scen = tmp_path / "t.yaml"
    scen.write_text(TENANTS.replace(old, new))
    out = tmp_path / "out"
    res = CliRunner().invoke(serve, ["run", str(scen), "--out", str(out), "--markdown", str(out / "r.md"),
                                     "--figures", str(out)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {scen}: "), res.output
    assert field in lines[0] and "fix:" in lines[0]
    assert not out.exists()


def test_tenant_scenario_runs_and_reports_each_tenant(tmp_path: Path):
    scen = tmp_path / "t.yaml"
    scen.write_text(TENANTS)
    out = tmp_path / "out"
    res = CliRunner().invoke(serve, ["run", str(scen), "--out", str(out), "--markdown", str(out / "r.md"),
                                     "--figures", str(out)])
    assert res.exit_code == 0, res.output
    import pandas as pd

    df = pd.read_csv(out / "results.csv")
    assert sorted(df["tenant"].unique()) == ["a", "all", "b"] and len(df) == 6
    for _, grp in df.groupby("policy"):
        per = grp[grp["tenant"] != "all"]
        assert grp.loc[grp["tenant"] == "all", "output_tokens"].item() == per["output_tokens"].sum() == 160
    md = (out / "r.md").read_text()
    assert "Several models on one GPU" in md and "tenants_over_time.png" in md
    assert (out / "tenants_over_time.png").read_bytes()[:4] == b"\x89PNG"


ROOT = Path(__file__).resolve().parents[1]


def test_bundled_tenant_scenario_and_committed_report_cover_tenants_and_per_block_swaps():
    import pandas as pd

    from hssim.sim.serving.scenario import load_serving_points

    points = load_serving_points([ROOT / "scenarios" / "serving" / "serving-tenants-llama2-7b.yaml"])
    assert {len(p.tenants) for p in points} == {3}
    assert {p.hardware.link.name for p in points} == {"nvlink-c2c", "pcie5-x16"}
    df = pd.read_csv(ROOT / "reports" / "serving" / "results.csv")
    assert {"all", "chat", "code", "summarize"} <= set(df["tenant"])
    swapped = df[(df["policy"] == "vllm-swap") & (df["kv_copies"] > 0)]
    bulk_s_per_gb = 1e9 / swapped["link_h2d_Bps"]
    assert (swapped["swap_wait_s_per_gb"] >= bulk_s_per_gb * (1 - 1e-3)).all()  # never faster than the link
    c2c = swapped[swapped["link"] == "nvlink-c2c"]
    assert (c2c["swap_wait_s_per_gb"] > 3 * 1e9 / c2c["link_h2d_Bps"]).all()  # set by the calls, not the link
