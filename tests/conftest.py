"""Shared builders for tests: tiny models and points that simulate in milliseconds."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from hssim.sim.presets import hardware_preset, model_preset
from hssim.sim.specs import FFNKind, ModelSpec, NormKind, PointSpec, PolicySpec, WorkloadSpec


def tiny_model(layers: int = 3, hidden: int = 256, heads: int = 4, kv_heads: int | None = None,
               llama: bool = False) -> ModelSpec:
    return ModelSpec(
        name=f"tiny-{'llama' if llama else 'opt'}-{layers}x{hidden}",
        layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads or heads, ffn=4 * hidden,
        ffn_kind=FFNKind.swiglu if llama else FFNKind.relu,
        norm_kind=NormKind.rmsnorm if llama else NormKind.layernorm,
        bias=not llama, vocab=1000, max_positions=4096,
    )


def make_point(model: ModelSpec | str = "opt-1.3b", hardware: str = "rtx4090-pcie4", batch: int = 8,
               prompt_len: int = 64, gen_len: int = 4, layers: int | None = None, **policy) -> PointSpec:
    m = model_preset(model) if isinstance(model, str) else model
    if layers is not None:
        m = m.model_copy(update={"layers": layers})
    policy.setdefault("kind", "kv-only")
    return PointSpec(
        scenario="test", model=m, hardware=hardware_preset(hardware),
        workload=WorkloadSpec(batch=batch, prompt_len=prompt_len, gen_len=gen_len),
        policy=PolicySpec(**policy),
    )


@st.composite
def small_points(draw, kinds=("kv-only", "token-recompute", "hybrid")) -> PointSpec:
    """Random small points over every policy kind and block shape."""
    kind = draw(st.sampled_from(kinds))
    k = draw(st.integers(1, 3))
    gbs = draw(st.integers(1, 4))
    policy = dict(
        kind=kind, num_gpu_batches=k, gpu_batch_size=gbs,
        weights_gpu_percent=draw(st.sampled_from([0.0, 50.0, 100.0])),
    )
    if kind == "kv-only":
        policy["cpu_attention"] = draw(st.booleans())
    else:
        policy["kv_ratio"] = draw(st.floats(0.0, 1.0))
    if not policy.get("cpu_attention"):
        policy["cache_gpu_percent"] = draw(st.sampled_from([0.0, 25.0]))
    model = tiny_model(layers=draw(st.integers(1, 3)), kv_heads=draw(st.sampled_from([None, 1])))
    return make_point(model, batch=gbs * k, prompt_len=draw(st.integers(1, 40)),
                      gen_len=draw(st.integers(1, 5)), **policy)


@pytest.fixture
def point_factory():
    return make_point
