"""The one cost model, asked by everyone: the simulator, the optimisers, serving and validation.

- `work`: how much each piece of a layer is (FLOPs, HBM bytes, launches, workspace), from
  the model's shapes alone; policies write it into ops;
- `roofline`: the `CostModel` protocol and the roofline default priced from a preset's
  `HardwareSpec`;
- `profile`: calibrated hardware profiles (loading, finding, checking the device) and the
  `ProfiledCostModel` that prices ops from their micro-benchmark curves;
- `contention`: replay with a profile's idle/busy rates blended by how much each op
  overlaps the other side.

Measuring and fitting profiles lives in `hssim.validate`; pricing with one lives here.
"""

from .roofline import (
    CostModel,
    RooflineCostModel,
    cpu_time_s,
    durations_ns,
    gpu_time_s,
    link_time_s,
    payload_durations_ns,
)
from .work import (
    TOKEN_ID_BYTES,
    Work,
    attended_pairs,
    attention_work,
    cpu_attention_work,
    ffn_work,
    lm_head_work,
    out_proj_work,
    qkv_proj_work,
    recompute_kv_work,
    recompute_layer_work,
)

__all__ = [
    "TOKEN_ID_BYTES", "CostModel", "RooflineCostModel", "Work", "attended_pairs", "attention_work",
    "cpu_attention_work", "cpu_time_s", "durations_ns", "ffn_work", "gpu_time_s", "link_time_s", "lm_head_work",
    "out_proj_work", "payload_durations_ns", "qkv_proj_work", "recompute_kv_work", "recompute_layer_work",
]
