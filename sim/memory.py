"""Memory plan: the peak GPU and host memory a schedule needs, itemised.

GPU: the device buffers the executor (`hw/buffers.py`, `DeviceBuffers.allocate`)
allocates for the schedule, sized from the schedule's own ops, plus the largest
transient a kernel allocates while it runs. They are allocated once for the whole
run, so the peak is their sum:

- resident: the weights kept on the GPU, embeddings, positions, final norm and
  (untied) LM head, and the part of the cache kept on the GPU;
- two weight slots (layer `i` of the run's layer sequence uses slot `i % 2`);
- two cache load slots, each holding one item's loads: its K,V from the front and its
  activations from the back of one buffer, so a slot is the size of the largest *sum* of one
  item's K,V and activation loads (a GPU batch of HybridServe's naive mini-batches loads
  mostly one form, so the two never both reach their largest in one slot), and two token-id
  slots; one buffer for the rebuilt K,V (the compute stream runs one recompute at a time);
- one hidden state per micro-batch (prompt rows: prefill runs whole prompts; token
  recompute keeps its prefix's hidden state in rows 1.. during decode);
- two output slots for the new tokens' K,V (and input activations where the
  schedule stores them), prompt-sized;
- FlexGen's CPU attention: two Q,K,V and two attention-output exchange slots; the
  prompt's token ids;
- transient: the most one op allocates while it runs: its kernel workspace, plus for
  an attention the context the executor concatenates (rebuilt + loaded + new K,V).

Host: offloaded weights, token ids and the cache as it stands after the last step.
The simulator's measured occupancy never exceeds this plan (a tested property), and
`tests/test_memory_plan.py` checks the plan against the executor's own buffers.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from ..errors import MemoryPlanError
from . import costs
from .schedule import MemoryItem, MemoryPlan, Op, OpKind
from .specs import NormKind, PointSpec


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def attention_context_bytes(point: PointSpec, past: int, reads_past: bool) -> int:
    """What the executor allocates for one attention's context when the step reads past
    tokens: hw/runner.py `_attention` concatenates [rebuilt; loaded; new] K,V (`torch.cat`),
    or scatters packed loads into a context of the same size (`_packed_context`)."""
    if not reads_past:
        return 0
    return (past + 1) * point.gpu_batch_size * point.model.kv_bytes_per_token


def plan_memory(point: PointSpec, scheme, ops: Sequence[Op]) -> tuple[MemoryPlan, int, int]:
    """Returns (plan, GPU bytes resident all run, host bytes resident all run)."""
    largest: dict[OpKind, int] = {}
    transient = 0
    reads = {(op.step, op.layer, op.micro_batch) for op in ops
             if op.kind in (OpKind.load_kv, OpKind.recompute_kv, OpKind.recompute_layer)}
    for op in ops:
        if op.gpu_bytes > largest.get(op.kind, 0):
            largest[op.kind] = op.gpu_bytes
        context = 0
        if op.kind is OpKind.attention:
            context = attention_context_bytes(point, op.shape_dict["past_tokens"],
                                              (op.step, op.layer, op.micro_batch) in reads)
        transient = max(transient, op.workspace_bytes + context)
    cache_on_host = sum(op.host_alloc_bytes for op in ops)
    per_item: dict[tuple[int, int, int], int] = {}
    for op in ops:
        if op.kind in (OpKind.load_kv, OpKind.load_act):
            key = (op.step, op.layer, op.micro_batch)
            per_item[key] = per_item.get(key, 0) + op.gpu_bytes
    return plan_from_sizes(point, scheme, largest, transient, cache_on_host, {op.kind for op in ops},
                           cache_item_bytes=max(per_item.values(), default=0))


def device_embedding_bytes(point: PointSpec) -> int:
    """What the executor keeps on the device besides the layers (`hw/weights.py`,
    `random_weights`; `hw/buffers.py`, `DeviceBuffers.allocate`): token embedding,
    learned positions, final norm, and the LM head when it is not the embedding itself."""
    m = point.model
    learned = m.norm_kind is NormKind.layernorm
    tied = learned  # hw: OPT-style models tie the LM head to the embedding
    params = m.vocab * m.hidden * (1 if tied else 2) + (m.max_positions * m.hidden if learned else 0)
    params += 2 * m.hidden if learned else m.hidden
    return params * m.dtype_bytes


def gpu_buffer_items(point: PointSpec, largest: dict[OpKind, int], transient: int,
                     kinds: Collection[OpKind], cache_item_bytes: int = 0) -> list[MemoryItem]:
    """The executor's device buffers for a schedule, beyond the resident weights and cache
    (see the module docstring); `largest`: the largest `gpu_bytes` of each op kind,
    `transient`: the most one op allocates while it runs (its workspace, and an attention's
    concatenated context), `kinds`: every op kind the schedule has, `cache_item_bytes`: the
    largest K,V + activation load bytes of one item (0: not known, the two largest added)."""
    m, pol, wl = point.model, point.policy, point.workload
    p, k, gbs = m.dtype_bytes, pol.num_gpu_batches, point.gpu_batch_size
    h, kv_tok, act_tok = m.hidden, m.kv_bytes_per_token, m.act_bytes_per_token
    prompt_rows = max(wl.prompt_len, 1)
    tok = largest.get(OpKind.load_tokens, 0) // (gbs * costs.TOKEN_ID_BYTES)  # token ids per sequence
    act_rows = largest.get(OpKind.load_act, 0) // act_tok
    kv_load, act_load = largest.get(OpKind.load_kv, 0), largest.get(OpKind.load_act, 0)
    if kv_load and act_load:  # one buffer per slot: an item's K,V from the front, activations from the back
        cache_slots = [("cache load slots (x2, one item's K,V and activations)",
                        2 * (cache_item_bytes or kv_load + act_load))]
    else:
        cache_slots = [("K,V load slots (x2)", 2 * kv_load), ("activation load slots (x2)", 2 * act_load)]
    items = [
        ("weight slots (x2)", 2 * largest.get(OpKind.load_weights, 0)),
        *cache_slots,
        ("token-id load slots (x2)", 2 * largest.get(OpKind.load_tokens, 0)),
        ("rebuilt K,V", max(act_rows, tok * gbs) * kv_tok),
        # token recompute's prefix hidden state shares its micro-batch's hidden state (rows 1..)
        (f"hidden states (x{k})", k * max(prompt_rows, 1 + tok) * gbs * h * p),
        ("new K,V slots (x2)", 2 * prompt_rows * gbs * kv_tok),
        ("new activation slots (x2)", 2 * prompt_rows * gbs * act_tok if OpKind.store_act in kinds else 0),
        ("CPU-attention exchange slots (x2)",
         2 * gbs * (2 * h + 2 * m.kv_hidden) * p if OpKind.cpu_attention in kinds else 0),
        (f"prompt token ids (x{k})", k * wl.prompt_len * gbs * costs.TOKEN_ID_BYTES),
    ]
    items.append(("largest transient (kernel workspace, concatenated attention context)", transient))
    return [MemoryItem(what, nbytes) for what, nbytes in items if nbytes]


def plan_from_sizes(point: PointSpec, scheme, largest: dict[OpKind, int], transient: int,
                    cache_on_host: int, kinds: Collection[OpKind],
                    cache_item_bytes: int = 0) -> tuple[MemoryPlan, int, int]:
    """`plan_memory` from what it reads of the ops: the largest `gpu_bytes` of each kind,
    the largest transient (`workspace_bytes`, plus an attention's concatenated context),
    the sum of `host_alloc_bytes` and the op kinds present.
    The block builder knows these before it emits a single op, so a point that does not
    fit is rejected at once.

    Returns (plan, GPU bytes resident all run, host bytes resident all run)."""
    m, pol, wl, hw = point.model, point.policy, point.workload, point.hardware
    keep_c = pol.cache_gpu_percent / 100.0
    final_past = wl.prompt_len + wl.gen_len - 1
    state_bytes = 0
    for kind, tokens in scheme.loads(final_past).items():
        per = m.kv_bytes_per_token if kind is OpKind.load_kv else m.act_bytes_per_token
        state_bytes += wl.batch * m.layers * tokens * per

    layer_bytes = m.layers * m.weight_bytes_per_layer
    streamed = largest.get(OpKind.load_weights, 0)  # one layer's streamed part (hw: the weight slot)
    offloaded_w = m.layers * streamed
    weights_on_gpu = layer_bytes - offloaded_w + device_embedding_bytes(point)
    cache_on_gpu = round(state_bytes * keep_c)
    gpu_items = [
        MemoryItem("weights kept on GPU (incl. embeddings, LM head)", weights_on_gpu),
        MemoryItem("cache kept on GPU", cache_on_gpu),
        *gpu_buffer_items(point, largest, transient, kinds, cache_item_bytes),
    ]
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
