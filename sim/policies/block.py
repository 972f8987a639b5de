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

Policy options on top (see `BlockOptions`): the `flexgen` policy adds FlexGen's
full barrier after every (layer, GPU batch) step (`torch.cuda.synchronize`), places
weights as whole tensors, and moves K,V to and from unpinned host memory; the
`kvpr` policy loads W_K, W_V and the layer norm as a separate, earlier weight op so
that rebuilding K,V can start before the rest of the layer's weights arrive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .. import costs
from ..memory import plan_memory
from ..schedule import KIND_STREAM, LINK_KINDS, Op, OpKind, Schedule, ScheduleMeta, Stream
from ..specs import PointSpec, PolicyKind
from .placement import flexgen_gpu_weight_percent, kv_proj_early_params
from .schemes import CacheScheme, scheme_for

Item = tuple[int, int, int]  # (step, layer, micro_batch)

#: link kinds that move cache state (K,V, activations) rather than weights or hidden states
CACHE_LINK_KINDS = frozenset({OpKind.load_kv, OpKind.load_act, OpKind.store_kv, OpKind.store_act})


@dataclass(frozen=True)
class BlockOptions:
    """How a policy runs the block schedule beyond its cache scheme."""

    step_barrier: bool = False  # full sync after every (layer, GPU batch) step (FlexGen)
    cache_pinned: bool = True  # host K,V and activations in pinned memory
    early_kv_proj: bool = False  # load LN, W_K, W_V as their own, first weight op (KVPR)


def block_options(point: PointSpec) -> BlockOptions:
    pol = point.policy
    if pol.kind is PolicyKind.flexgen:
        return BlockOptions(step_barrier=True, cache_pinned=pol.cache_pinned and pol.pinned)
    if pol.kind is PolicyKind.kvpr:
        return BlockOptions(step_barrier=pol.step_barrier, early_kv_proj=True, cache_pinned=pol.pinned)
    if pol.kind is PolicyKind.hybridserve:
        return BlockOptions(step_barrier=pol.step_barrier, cache_pinned=pol.pinned)
    return BlockOptions(cache_pinned=pol.pinned)


def effective_point(point: PointSpec) -> PointSpec:
    """The point as the runtime sees it: FlexGen keeps whole tensors, so its real GPU
    share of the weights replaces the requested percentage."""
    pol = point.policy
    if pol.kind is not PolicyKind.flexgen or pol.weights_gpu_percent in (0.0, 100.0):
        return point
    real = flexgen_gpu_weight_percent(point.model, pol.weights_gpu_percent)
    return point.model_copy(update={"policy": pol.model_copy(update={"weights_gpu_percent": real})})


def build_schedule(point: PointSpec, check_memory: bool = True) -> Schedule:
    """The schedule of one point; raises `MemoryPlanError` if it does not fit."""
    run = effective_point(point)
    return _BlockBuilder(run, scheme_for(run.policy, run), block_options(run)).build(check_memory)


class _BlockBuilder:
    def __init__(self, point: PointSpec, scheme: CacheScheme, options: BlockOptions | None = None) -> None:
        self.point = point
        self.m = point.model
        self.pol = point.policy
        self.wl = point.workload
        self.scheme = scheme
        self.opts = options or BlockOptions(cache_pinned=point.policy.pinned)
        self.gbs = point.gpu_batch_size
        self.k = self.pol.num_gpu_batches
        self.L = self.m.layers
        streamed = 1.0 - self.pol.weights_gpu_percent / 100.0
        self.weight_link_bytes = round(self.m.weight_bytes_per_layer * streamed)
        early = round(kv_proj_early_params(self.m) * self.m.dtype_bytes * streamed) if self.opts.early_kv_proj else 0
        #: (part, bytes) of each layer's streamed weights, in load order
        self.weight_parts = [(n, b) for n, b in (("kv_proj", early), ("rest", self.weight_link_bytes - early)) if b]
        self.cache_host_fraction = 1.0 - self.pol.cache_gpu_percent / 100.0
        self.ops: list[Op] = []
        self.barrier: tuple[int, ...] = ()
        self.early_weights: dict[tuple[int, int], int] = {}
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
        pinned = self.opts.cache_pinned if kind in CACHE_LINK_KINDS else self.pol.pinned
        self.ops.append(
            Op(
                id=op_id, stream=KIND_STREAM[kind], kind=kind, layer=layer, step=t,
                micro_batch=j,
                deps=tuple(sorted({d for d in deps if d is not None})),
                after=tuple(sorted({a for a in (*after, *self.barrier) if a is not None})),
                pinned=pinned if kind in LINK_KINDS else True, **sizes,
            )
        )
        return op_id

    def _sync(self, since: int) -> None:
        """FlexGen's barrier: every op issued from now on waits for all ops issued since
        `since` (the last op of each stream, streams being in order)."""
        last: dict[Stream, int] = {}
        for op in self.ops[since:]:
            last[op.stream] = op.id
        if last:
            self.barrier = tuple(sorted(last.values()))

    def _tok_shape(self, total: int) -> tuple[tuple[str, int], ...]:
        """Shape of a cache op moving `total` tokens over the GPU batch (batch x tokens = total)."""
        if total % self.gbs == 0:
            return (("batch", self.gbs), ("tokens", total // self.gbs))
        return (("batch", 1), ("tokens", total), ("sequences", self.gbs))

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

        # A decode step's cache load of (layer, micro-batch) reads what the previous step's
        # store of the same (layer, micro-batch) wrote, `per_step` items back. Normally that
        # store is long issued when the load is prefetched; with very few layers x GPU
        # batches it is not, and the load waits in `pending` until the store is issued.
        per_step = L * k
        pending: dict[int, int] = {}

        def load(idx: int) -> None:
            needed = idx - per_step
            if items[idx][0] == 0 or needed in self.stores:
                self._emit_cache_loads(items, idx)
            else:
                pending[needed] = idx

        def store(idx: int) -> None:
            self._emit_stores(items, idx)
            if idx in pending:
                self._emit_cache_loads(items, pending.pop(idx))

        self._emit_weight_load(layers, 0)
        load(0)
        since = 0
        for i, item in enumerate(items):
            t, layer, j = item
            if self.opts.step_barrier:  # FlexGen: sync() ends every (layer, GPU batch) step
                self._sync(since)
                since = len(self.ops)
            if j == 0 and t * L + layer + 1 < len(layers):
                self._emit_weight_load(layers, t * L + layer + 1)
            if i >= 1:
                store(i - 1)  # one behind (issue order across streams does not change any stream's queue)
            if i + 1 < len(items):
                load(i + 1)  # one ahead
            self._emit_compute(items, i)
        store(len(items) - 1)
        assert not pending, "a cache load was never issued"

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
        for part, nbytes in self.weight_parts:
            shape = (("params", self.m.layer_params),)
            if len(self.weight_parts) > 1:
                shape += (("part_bytes", nbytes), (part, 1))
            op = self._add(OpKind.load_weights, (t, layer, 0), after=reuse, link_bytes=nbytes,
                           gpu_bytes=nbytes, shape=shape)
            if part == "kv_proj":
                self.early_weights[(t, layer)] = op
            self.weights[(t, layer)] = op  # the last part: the whole layer has arrived

    def _emit_cache_loads(self, items: list[Item], i: int) -> None:
        t, layer, j = items[i]
        loads: dict[OpKind, int] = {}
        self.cache_loads[i] = loads
        if t == 0 or self.pol.cpu_attention:
            return
        past = self._past(t)
        reuse = self.attention.get(i - 2)
        written = self.stores[i - self.L * self.k]  # the previous step's store of this (layer, micro-batch)
        wanted = dict(self.scheme.mb_loads(past, j, self.gbs))
        if layer == 0:
            wanted = {OpKind.load_tokens: self.gbs * self.scheme.token_id_tokens(past), **wanted}
        for kind, total in wanted.items():
            if total <= 0:
                continue
            frac = 1.0 if kind is OpKind.load_tokens else self.cache_host_fraction
            nbytes = round(total * self._state_bytes(kind) * frac)
            if nbytes == 0:
                continue
            loads[kind] = self._add(
                kind, items[i], deps=() if kind is OpKind.load_tokens else written, after=[reuse],
                link_bytes=nbytes, gpu_bytes=nbytes, shape=self._tok_shape(total),
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
            plan = self.scheme.mb_recompute(past, j, gbs) if t > 0 else None
            if plan is not None:
                kind, total = plan
                tokens = total // gbs
                if kind is OpKind.recompute_kv:
                    work = costs.recompute_kv_work(m, total)
                    rec = self._add(
                        kind, item, deps=[self.early_weights.get((t, layer), w), loads.get(OpKind.load_act)],
                        gpu_bytes=total * m.kv_bytes_per_token,
                        shape=self._tok_shape(total), **self._work(work),
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
            wanted = self.scheme.mb_prefill_stores(self.wl.prompt_len, j, self.gbs)
        else:
            wanted = self.scheme.mb_new_token_stores(self._past(t), j, self.gbs)
        ids = []
        for kind, total in wanted.items():
            nbytes = round(total * self._state_bytes(kind) * self.cache_host_fraction)
            if nbytes == 0:
                continue
            ids.append(self._add(
                kind, items[i], deps=[self.attention[i]], link_bytes=nbytes,
                host_alloc_bytes=nbytes, shape=self._tok_shape(total),
            ))
        self.stores[i] = ids
