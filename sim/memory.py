"""Memory plan: the peak GPU and host memory a schedule needs, itemised.

GPU: what stays resident (weights kept on the GPU, embeddings and LM head, the
part of the cache kept on the GPU), plus every transient buffer kind times the
number of such buffers the schedule's double-buffering lets be alive at once,
plus the largest kernel workspace. Host: offloaded weights, token ids and the
cache as it stands after the last step. The simulator's measured occupancy never
exceeds this plan (a tested property).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import MemoryPlanError
from . import costs
from .schedule import MemoryItem, MemoryPlan, Op, OpKind
from .specs import PointSpec


#: how many outputs of each kind can be alive at once, given `k` micro-batches
def _live_buffers(kind: OpKind, k: int) -> int:
    if kind in (OpKind.ffn, OpKind.lm_head, OpKind.recompute_layer):
        return k + 1  # one hidden state per micro-batch, plus the one being written
    return 2  # double-buffered


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def plan_memory(point: PointSpec, scheme, ops: Sequence[Op]) -> tuple[MemoryPlan, int, int]:
    """Returns (plan, GPU bytes resident all run, host bytes resident all run)."""
    largest: dict[OpKind, int] = {}
    workspace = 0
    for op in ops:
        if op.gpu_bytes > largest.get(op.kind, 0):
            largest[op.kind] = op.gpu_bytes
        workspace = max(workspace, op.workspace_bytes)
    cache_on_host = sum(op.host_alloc_bytes for op in ops)
    return plan_from_sizes(point, scheme, largest, workspace, cache_on_host)


def plan_from_sizes(point: PointSpec, scheme, largest: dict[OpKind, int], workspace: int,
                    cache_on_host: int) -> tuple[MemoryPlan, int, int]:
    """`plan_memory` from what it reads of the ops: the largest `gpu_bytes` of each kind
    (kinds in the order their first op with a GPU buffer is issued), the largest
    `workspace_bytes` and the sum of `host_alloc_bytes`. The block builder knows these
    before it emits a single op, so a point that does not fit is rejected at once.

    Returns (plan, GPU bytes resident all run, host bytes resident all run)."""
    m, pol, wl, hw = point.model, point.policy, point.workload, point.hardware
    keep_w = pol.weights_gpu_percent / 100.0
    keep_c = pol.cache_gpu_percent / 100.0
    final_past = wl.prompt_len + wl.gen_len - 1
    state_bytes = 0
    for kind, tokens in scheme.loads(final_past).items():
        per = m.kv_bytes_per_token if kind is OpKind.load_kv else m.act_bytes_per_token
        state_bytes += wl.batch * m.layers * tokens * per

    weights_on_gpu = round(m.layers * m.weight_bytes_per_layer * keep_w) + m.embedding_bytes
    cache_on_gpu = round(state_bytes * keep_c)
    gpu_items = [
        MemoryItem("weights kept on GPU (incl. embeddings, LM head)", weights_on_gpu),
        MemoryItem("cache kept on GPU", cache_on_gpu),
    ]
    k = pol.num_gpu_batches
    for kind, nbytes in largest.items():
        live = _live_buffers(kind, k)
        gpu_items.append(MemoryItem(f"{kind.value} buffers (x{live})", live * nbytes))
    gpu_items.append(MemoryItem("largest kernel workspace", workspace))

    offloaded_w = m.layers * m.weight_bytes_per_layer - round(m.layers * m.weight_bytes_per_layer * keep_w)
    token_ids = wl.batch * (wl.prompt_len + wl.gen_len) * costs.TOKEN_ID_BYTES
    host_items = [
        MemoryItem("offloaded weights", offloaded_w),
        MemoryItem("token ids", token_ids),
        MemoryItem("cache on host (after the last step)", cache_on_host),
    ]
    plan = MemoryPlan(
        gpu=tuple(i for i in gpu_items if i.bytes),
        host=tuple(i for i in host_items if i.bytes),
        gpu_capacity_bytes=hw.gpu.memory_bytes - hw.gpu.reserved_bytes,
        host_capacity_bytes=hw.host.memory_bytes,
    )
    return plan, weights_on_gpu + cache_on_gpu, offloaded_w + token_ids


def check_plan(plan: MemoryPlan, what: str = "") -> None:
    """Raise MemoryPlanError if the plan exceeds either memory."""
    prefix = f"{what}: " if what else ""
    over: list[tuple[str, str]] = []
    for side, items, need, have, fix in (
        ("GPU", plan.gpu, plan.gpu_bytes, plan.gpu_capacity_bytes,
         "lower policy.weights_gpu_percent, policy.cache_gpu_percent or policy.gpu_batch_size"),
        ("host", plan.host, plan.host_bytes, plan.host_capacity_bytes,
         "lower workload.batch, prompt_len or gen_len, or keep more on the GPU"),
    ):
        if need > have:
            top = sorted(items, key=lambda i: -i.bytes)[:3]
            parts = ", ".join(f"{i.what} {_gb(i.bytes)}" for i in top)
            over.append((f"{side} memory: needs {_gb(need)} ({parts}), has {_gb(have)}", fix))
    if over:  # every side that overflows, so that fixing one does not reveal the other
        raise MemoryPlanError(f"{prefix}does not fit in " + "; nor in ".join(w for w, _ in over)
                              + "; fix: " + "; and ".join(f for _, f in over))
