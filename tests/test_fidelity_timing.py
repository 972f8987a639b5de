"""FlexGen's `--debug fewer_batch` accounting, as `validate.peers.fidelity` applies it to a timeline."""

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hssim.validate.peers.fidelity import fewer_batch_decode_s


def _timeline(layers: int, steps: int, prefill_s: float, layer_s: list[float]) -> pd.DataFrame:
    """One op per (step, layer): prefill layers of `prefill_s / layers`, decode layers of `layer_s`."""
    rows, t = [], 0.0
    for step in range(steps):
        for layer in range(layers):
            d = prefill_s / layers if step == 0 else layer_s[layer]
            rows.append({"step": step, "layer": layer, "start_s": t, "end_s": t + d})
            t += d
    return pd.DataFrame(rows)


@given(layers=st.integers(10, 96), gen_len=st.integers(2, 64), layer_s=st.floats(1e-4, 1.0))
def test_uniform_layers_cost_num_layers_times_the_mean(layers, gen_len, layer_s):
    tl = _timeline(layers, gen_len, 3.0, [layer_s] * layers)
    # 2L + 2 sub-layers, each half a layer: the embeddings add one layer's worth to every step
    assert fewer_batch_decode_s(tl, layers, gen_len) == pytest.approx((gen_len - 1) * (layers + 1) * layer_s)


def test_only_layers_five_to_nine_of_step_one_count():
    layers = 12
    slow = [1.0] * layers
    for i in range(5, 10):
        slow[i] = 2.0
    tl = _timeline(layers, 3, 1.0, slow)
    assert fewer_batch_decode_s(tl, layers, 3) == pytest.approx(2 * (layers + 1) * 2.0)
