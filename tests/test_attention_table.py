"""The attention table: the measurements themselves, looked up the way the executor's attention scales."""

from __future__ import annotations

import math

import pytest
from conftest import make_point, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st
from test_validate import synthetic_profile

from hssim.errors import ProfileError
from hssim.sim.costs.profile import AttentionTable, HardwareProfile, ProfiledCostModel, load_profile
from hssim.sim.costs.profile_ranges import scaled_profile
from hssim.sim.policies import build_schedule
from hssim.sim.schedule import OpKind

CONTEXTS = (16, 32, 64, 128, 256)
BATCHES = (1, 2, 4)
PROMPTS = (16, 32, 64)


def decode_s(b: int, ctx: int, hidden: int = 2048) -> float:
    """A per-byte time that grows as the context leaves the caches, as measured on a CPU."""
    kv_bytes = b * ctx * 2 * hidden * 2
    return 2e-5 + kv_bytes * (0.8e-9 + 0.1e-9 * math.log2(ctx))


def prefill_s(b: int, new: int, hidden: int = 2048) -> float:
    return 3e-5 + b * new * new * hidden * 4e-12


def table(hidden: int = 2048, heads: int = 32, kv_heads: int = 32, factor: float = 1.0) -> AttentionTable:
    rows = [(b, hidden, heads, kv_heads, 1, c, decode_s(b, c, hidden) * factor) for b in BATCHES for c in CONTEXTS]
    rows += [(b, hidden, heads, kv_heads, n, n, prefill_s(b, n, hidden) * factor) for b in BATCHES for n in PROMPTS]
    return AttentionTable(rows=rows)


def test_measured_shapes_are_priced_at_their_measurement():
    t = table()
    for b in BATCHES:
        for c in CONTEXTS:
            assert t.time_s(b, 2048, 32, 32, 1, c - 1) == pytest.approx(decode_s(b, c))
        for n in PROMPTS:
            assert t.time_s(b, 2048, 32, 32, n, 0) == pytest.approx(prefill_s(b, n))


@settings(max_examples=60, deadline=None)
@given(b=st.integers(1, 4), c=st.integers(17, 255))
def test_between_measurements_the_price_lies_between_its_neighbours(b, c):
    t = table()
    lo_c = max(x for x in CONTEXTS if x <= c)
    hi_c = min(x for x in CONTEXTS if x >= c)
    lo_b = max(x for x in BATCHES if x <= b)
    hi_b = min(x for x in BATCHES if x >= b)
    got = t.time_s(b, 2048, 32, 32, 1, c - 1)
    assert decode_s(lo_b, lo_c) * (1 - 1e-9) <= got <= decode_s(hi_b, hi_c) * (1 + 1e-9)
    # more context never costs less
    assert t.time_s(b, 2048, 32, 32, 1, c) >= got


def test_table_follows_a_per_byte_cost_that_grows_where_the_linear_fit_cannot():
    """At contexts between the measured ones the table is within 3%; calibration's linear fit of the same
    measurements, one rate through every shape, is further off."""
    import pandas as pd

    from hssim.validate.calibrate import fit_linear
    from hssim.validate.microbench import attention_features

    t = table()
    rows = [{**attention_features(b, 32, 2048, 2048, 1, c, 2), "seconds": decode_s(b, c)}
            for b in BATCHES for c in CONTEXTS]
    fit = fit_linear(pd.DataFrame(rows))
    for b, c in ((4, 100), (2, 200), (1, 40), (4, 180)):
        truth = decode_s(b, c)
        table_err = abs(t.time_s(b, 2048, 32, 32, 1, c - 1) - truth) / truth
        f = attention_features(b, 32, 2048, 2048, 1, c, 2)
        fit_err = abs(fit.time_s(f["kv_bytes"], f["flops"], f["rows"]) - truth) / truth
        assert table_err < 0.03 and table_err < fit_err


def test_beyond_the_grid_decode_scales_with_context_and_batch_prefill_with_causal_pairs():
    t = table()
    assert t.time_s(4, 2048, 32, 32, 1, 511) == pytest.approx(decode_s(4, 256) * 2)
    assert t.time_s(8, 2048, 32, 32, 1, 255) == pytest.approx(decode_s(4, 256) * 2)
    pairs = lambda n: n * (n + 1) // 2  # noqa: E731
    assert t.time_s(4, 2048, 32, 32, 128, 0) == pytest.approx(prefill_s(4, 64) * pairs(128) / pairs(64))
    # below the smallest measured context the smallest measurement is a floor
    assert t.time_s(1, 2048, 32, 32, 1, 3) == pytest.approx(decode_s(1, 16))
    # queries after a past attend to more pairs than a plain prefill of the same length
    assert t.time_s(2, 2048, 32, 32, 16, 16) > t.time_s(2, 2048, 32, 32, 16, 0)


def test_an_unmeasured_model_is_priced_from_the_nearest_measured_one_scaled_by_its_widths():
    t = AttentionTable(rows=table(2048).rows + table(4096).rows)
    # exact groups are their own
    assert t.time_s(2, 4096, 32, 32, 1, 63) == pytest.approx(decode_s(2, 64, 4096))
    # hidden 5120 (40 heads of 128) is nearest 4096: K,V bytes x1.25
    assert t.time_s(2, 5120, 40, 40, 1, 63) == pytest.approx(1.25 * decode_s(2, 64, 4096))
    # a GQA model reads a quarter of the K,V bytes per token
    assert t.time_s(2, 4096, 32, 8, 1, 63) == pytest.approx(0.25 * decode_s(2, 64, 4096))


def test_cost_model_prices_attention_from_the_table_where_the_profile_has_one():
    model = tiny_model(layers=2, hidden=256)
    p = make_point(model, batch=4, prompt_len=16, gen_len=3, num_gpu_batches=2, kind="kv-only")
    attn = [op for op in build_schedule(p).ops if op.kind is OpKind.attention]
    without = synthetic_profile()
    slow = table(256, model.heads, model.kv_heads, factor=10.0)
    fast = table(256, model.heads, model.kv_heads)
    idle_only = synthetic_profile(attention={"idle": fast})
    both = synthetic_profile(attention={"idle": fast, "busy": slow})
    for op in attn:
        plain = ProfiledCostModel(without, model).duration_s(op)
        tabled = ProfiledCostModel(idle_only, model).duration_s(op)
        assert tabled != plain
        # the busy table is used beside a copy; without one the idle table is
        assert ProfiledCostModel(both, model, contended=True).duration_s(op) > tabled
        assert ProfiledCostModel(idle_only, model, contended=True).duration_s(op) == pytest.approx(
            ProfiledCostModel(idle_only, model, contended=False).duration_s(op))


def test_table_survives_save_and_load_and_scaling_moves_decode_with_bytes_prefill_with_flops(tmp_path):
    prof = synthetic_profile(attention={"idle": table()})
    back = load_profile(prof.save(tmp_path / "p.yaml"))
    assert back.attention == prof.attention
    figures = {"gpu.hbm_Bps": prof.elementwise_Bps / 2}  # memory half as fast: decode attention twice as long
    slow_mem = scaled_profile(prof, figures).attention["idle"]
    assert slow_mem.time_s(2, 2048, 32, 32, 1, 63) == pytest.approx(2 * decode_s(2, 64))
    assert slow_mem.time_s(2, 2048, 32, 32, 32, 0) == pytest.approx(prefill_s(2, 32))


@pytest.mark.parametrize("rows, msg", [
    ([(1, 2048, 32, 32, 4, 8, 1e-3)], "decode"),
    ([(1, 2048, 32, 32, 1, 16, -1.0)], "seconds"),
    ([(0, 2048, 32, 32, 1, 16, 1e-3)], "positive"),
])
def test_a_malformed_table_is_refused(rows, msg):
    with pytest.raises(ValueError, match=msg):
        AttentionTable(rows=rows)


def test_a_profile_whose_table_lacks_a_phase_is_refused_with_the_fix(tmp_path):
    decode_only = AttentionTable(rows=[r for r in table().rows if r[4] == 1])
    with pytest.raises(ValueError, match="decode and prefill"):
        synthetic_profile(attention={"idle": decode_only})
    data = synthetic_profile(attention={"idle": table()}).model_dump(mode="json")
    data["attention"]["idle"]["rows"] = [r for r in data["attention"]["idle"]["rows"] if r[4] != 1]
    import yaml
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match="bad.yaml.*attention.*recalibrate"):
        load_profile(path)
    assert isinstance(HardwareProfile.model_validate(synthetic_profile().model_dump()), HardwareProfile)
