"""FlexGen's block schedule, shared by every offloading policy.

Program order, as FlexGen issues work: for each step (prefill, then each decode
step), for each layer, for each GPU batch (micro-batch):

1. on GPU batch 0, prefetch the next layer's streamed weights (double-buffered);
2. load the next micro-batch's cache (K,V / activations / token ids), one ahead;
3. run this micro-batch's compute (recompute, attention, FFN, LM head);
4. store the previous micro-batch's new token state, one behind.

Buffers are double-buffered: a load waits (`after`) until the buffer it reuses has
been consumed, and attention waits until the store two micro-batches back has
drained its output buffer.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import costs
from ..memory import plan_memory
from ..schedule import KIND_STREAM, Op, OpKind, Schedule, ScheduleMeta
from ..specs import PointSpec
from .schemes import CacheScheme, scheme_for

Item = tuple[int, int, int]  # (step, layer, micro_batch)


def build_schedule(point: PointSpec, check_memory: bool = True) -> Schedule:
    """The schedule of one point; raises `MemoryPlanError` if it does not fit."""
    return _BlockBuilder(point, scheme_for(point.policy)).build(check_memory)


class _BlockBuilder:
    def __init__(self, point: PointSpec, scheme: CacheScheme) -> None:
        self.point = point
        self.m = point.model
        self.pol = point.policy
        self.wl = point.workload
        self.scheme = scheme
        self.gbs = point.gpu_batch_size
        self.k = self.pol.num_gpu_batches
        self.L = self.m.layers
        self.weight_link_bytes = round(
            self.m.weight_bytes_per_layer * (1.0 - self.pol.weights_gpu_percent / 100.0)
        )
        self.cache_host_fraction = 1.0 - self.pol.cache_gpu_percent / 100.0
        self.ops: list[Op] = []
        # producers, by item or layer
        self.weights: dict[tuple[int, int], int] = {}
        self.cache_loads: dict[int, dict[OpKind, int]] = {}
        self.attention: dict[int, int] = {}
        self.ffn: dict[Item, int] = {}
        self.recompute: dict[Item, int] = {}
        self.lm_head: dict[tuple[int, int], int] = {}
        self.stores: dict[int, list[int]] = {}
        self.layer_tail: dict[tuple[int, int], list[int]] = {}

    # ---------------------------------------------------------------- helpers
    def _add(self, kind: OpKind, item: Item, deps: Iterable[int | None] = (),
             after: Iterable[int | None] = (), **sizes) -> int:
        t, layer, j = item
        op_id = len(self.ops)
        self.ops.append(
            Op(
                id=op_id, stream=KIND_STREAM[kind], kind=kind, layer=layer, step=t,
                micro_batch=j,
                deps=tuple(sorted({d for d in deps if d is not None})),
                after=tuple(sorted({a for a in after if a is not None})),
                pinned=self.pol.pinned, **sizes,
            )
        )
        return op_id

    def _work(self, w: costs.Work) -> dict:
        return dict(flops=w.flops, hbm_bytes=w.hbm_bytes, kernels=w.kernels,
                    workspace_bytes=w.workspace_bytes)

    def _state_bytes(self, kind: OpKind) -> int:
        """Bytes per token per layer of the state a load/store kind moves."""
        if kind in (OpKind.load_kv, OpKind.store_kv):
            return self.m.kv_bytes_per_token
        if kind in (OpKind.load_act, OpKind.store_act):
            return self.m.act_bytes_per_token
        if kind is OpKind.load_tokens:
            return costs.TOKEN_ID_BYTES
        raise ValueError(kind)

    def _past(self, step: int) -> int:
        """Tokens already in the cache when decode step `step` runs."""
        return self.wl.prompt_len + step - 1

    # ------------------------------------------------------------------ build
    def build(self, check_memory: bool) -> Schedule:
        n, L, k = self.wl.gen_len, self.L, self.k
        items: list[Item] = [(t, layer, j) for t in range(n) for layer in range(L) for j in range(k)]
        layers = [(t, layer) for t in range(n) for layer in range(L)]

        self._emit_weight_load(layers, 0)
        self._emit_cache_loads(items, 0)
        for i, item in enumerate(items):
            t, layer, j = item
            if j == 0 and t * L + layer + 1 < len(layers):
                self._emit_weight_load(layers, t * L + layer + 1)
            if i + 1 < len(items):
                self._emit_cache_loads(items, i + 1)
            self._emit_compute(items, i)
            if i >= 1:
                self._emit_stores(items, i - 1)
        self._emit_stores(items, len(items) - 1)

        meta = ScheduleMeta(
            model=self.m.name, hardware=self.point.hardware.name, policy=self.pol.label,
            layers=L, batch=self.wl.batch, gpu_batch_size=self.gbs, num_gpu_batches=k,
            prompt_len=self.wl.prompt_len, gen_len=n,
        )
        plan, gpu_static, host_static = plan_memory(self.point, self.scheme, self.ops)
        sched = Schedule(meta=meta, ops=tuple(self.ops), memory=plan,
                         gpu_static_bytes=gpu_static, host_static_bytes=host_static)
        if check_memory:
            wl = self.wl
            plan.check(f"{self.m.name} on {self.point.hardware.name}, {self.pol.label}, batch {wl.batch} "
                       f"({k}x{self.gbs}), prompt {wl.prompt_len}, gen {wl.gen_len}")
        return sched

    def _emit_weight_load(self, layers: list[tuple[int, int]], idx: int) -> None:
        if self.weight_link_bytes == 0:
            return
        t, layer = layers[idx]
        # double buffer: overwrite the buffer of the layer two back once it is done
        reuse = self.layer_tail.get(layers[idx - 2], []) if idx >= 2 else []
        self.weights[(t, layer)] = self._add(
            OpKind.load_weights, (t, layer, 0), after=reuse,
            link_bytes=self.weight_link_bytes, gpu_bytes=self.weight_link_bytes,
            shape=(("params", self.m.layer_params),),
        )

    def _emit_cache_loads(self, items: list[Item], i: int) -> None:
        t, layer, j = items[i]
        loads: dict[OpKind, int] = {}
        self.cache_loads[i] = loads
        if t == 0 or self.pol.cpu_attention:
            return
        past = self._past(t)
        reuse = self.attention.get(i - 2)
        wanted = dict(self.scheme.loads(past))
        if layer == 0:
            wanted = {OpKind.load_tokens: self.scheme.token_id_tokens(past), **wanted}
        for kind, tokens in wanted.items():
            if tokens <= 0:
                continue
            frac = 1.0 if kind is OpKind.load_tokens else self.cache_host_fraction
            nbytes = round(self.gbs * tokens * self._state_bytes(kind) * frac)
            if nbytes == 0:
                continue
            loads[kind] = self._add(
                kind, items[i], after=[reuse], link_bytes=nbytes, gpu_bytes=nbytes,
                shape=(("batch", self.gbs), ("tokens", tokens)),
            )

    def _emit_compute(self, items: list[Item], i: int) -> None:
        item = items[i]
        t, layer, j = item
        m, gbs = self.m, self.gbs
        p = m.dtype_bytes
        w = self.weights.get((t, layer))
        hidden_in = self.ffn[t, layer - 1, j] if layer > 0 else self.lm_head.get((t - 1, j))
        drained = self.stores.get(i - 2, [])
        if t == 0:
            new, past = self.wl.prompt_len, 0
        else:
            new, past = 1, self._past(t)
        shape = (("batch", gbs), ("new_tokens", new), ("past_tokens", past))
        hidden_bytes = gbs * new * m.act_bytes_per_token

        if t > 0 and self.pol.cpu_attention:
            attn = self._emit_cpu_attention(i, item, w, hidden_in, drained, past)
        else:
            rec = None
            loads = self.cache_loads.get(i, {})
            plan = self.scheme.recompute(past) if t > 0 else None
            if plan is not None:
                kind, tokens = plan
                if kind is OpKind.recompute_kv:
                    work = costs.recompute_kv_work(m, gbs * tokens)
                    rec = self._add(
                        kind, item, deps=[w, loads.get(OpKind.load_act)],
                        gpu_bytes=gbs * tokens * m.kv_bytes_per_token,
                        shape=(("batch", gbs), ("tokens", tokens)), **self._work(work),
                    )
                else:  # recompute_layer: re-run this layer for the recomputed prefix
                    prev = self.recompute.get((t, layer - 1, j)) if layer else loads.get(
                        OpKind.load_tokens)
                    last = layer == self.L - 1
                    work = costs.recompute_layer_work(m, gbs, tokens, last)
                    out = gbs * tokens * (m.kv_bytes_per_token + (0 if last else m.act_bytes_per_token))
                    rec = self._add(
                        kind, item, deps=[w, prev], gpu_bytes=out,
                        shape=(("batch", gbs), ("tokens", tokens), ("last_layer", int(last))),
                        **self._work(work),
                    )
                    self.recompute[item] = rec
            work = costs.attention_work(m, gbs, new, past)
            attn = self._add(
                OpKind.attention, item,
                deps=[w, hidden_in, rec, loads.get(OpKind.load_kv)], after=drained,
                gpu_bytes=gbs * new * m.kv_bytes_per_token + hidden_bytes,
                shape=shape, **self._work(work),
            )
        self.attention[i] = attn
        work = costs.ffn_work(m, gbs, new)
        f = self._add(OpKind.ffn, item, deps=[w, attn], gpu_bytes=hidden_bytes, shape=shape,
                      **self._work(work))
        self.ffn[item] = f
        tail = f
        if layer == self.L - 1:
            work = costs.lm_head_work(m, gbs)
            tail = self.lm_head[(t, j)] = self._add(
                OpKind.lm_head, item, deps=[f], gpu_bytes=gbs * p, shape=(("batch", gbs),),
                **self._work(work),
            )
        self.layer_tail.setdefault((t, layer), []).append(tail)

    def _emit_cpu_attention(self, i: int, item: Item, w: int | None, hidden_in: int | None,
                            drained: list[int], past: int) -> int:
        """FlexGen's CPU attention: QKV on the GPU, attention over host-held K,V on the
        CPU (which appends the new K,V there), the result back to the GPU."""
        m, gbs = self.m, self.gbs
        p = m.dtype_bytes
        qkv_bytes = gbs * (m.hidden + 2 * m.kv_hidden) * p
        shape = (("batch", gbs), ("new_tokens", 1), ("past_tokens", past))
        work = costs.qkv_proj_work(m, gbs, 1)
        qkv = self._add(OpKind.qkv_proj, item, deps=[w, hidden_in], after=drained,
                        gpu_bytes=qkv_bytes, shape=shape, **self._work(work))
        sent = self._add(OpKind.store_qkv, item, deps=[qkv], link_bytes=qkv_bytes,
                         host_alloc_bytes=gbs * m.kv_bytes_per_token, shape=shape)
        self.stores[i] = [sent]
        flops, host_bytes = costs.cpu_attention_work(m, gbs, past + 1)
        cpu = self._add(OpKind.cpu_attention, item, deps=[sent], flops=flops,
                        host_bytes=host_bytes, shape=shape)
        out_bytes = gbs * m.hidden * p
        back = self._add(OpKind.load_attn_out, item, deps=[cpu], link_bytes=out_bytes,
                         gpu_bytes=out_bytes, shape=shape)
        work = costs.out_proj_work(m, gbs, 1)
        return self._add(OpKind.out_proj, item, deps=[w, back], gpu_bytes=out_bytes,
                         shape=shape, **self._work(work))

    def _emit_stores(self, items: list[Item], i: int) -> None:
        t, layer, j = items[i]
        if t > 0 and self.pol.cpu_attention:
            return  # the CPU appended the new K,V itself
        if t == 0:
            wanted = self.scheme.prefill_stores(self.wl.prompt_len)
        else:
            kind = self.scheme.new_token_store(self._past(t))
            wanted = {kind: 1} if kind is not None else {}
        ids = []
        for kind, tokens in wanted.items():
            nbytes = round(self.gbs * tokens * self._state_bytes(kind) * self.cache_host_fraction)
            if nbytes == 0:
                continue
            ids.append(self._add(
                kind, items[i], deps=[self.attention[i]], link_bytes=nbytes,
                host_alloc_bytes=nbytes, shape=(("batch", self.gbs), ("tokens", tokens)),
            ))
        self.stores[i] = ids
