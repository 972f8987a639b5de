"""Host buffers (pinned or pageable) and device double buffers for one schedule.

Host (`HostBuffers`): each layer's streamed weights (the tail of its flat vector),
the cache lists of `plan` (`kv` `[entries, gbs, 2*kv_hidden]`, `act`
`[entries, gbs, hidden]` per layer and micro-batch), token ids
`[positions, gbs]` per micro-batch, and FlexGen's CPU-attention exchange buffers.
Pinned (page-locked) where CUDA is present and the policy asks for it, else
pageable: `pinned` says which one a run used.

Device (`DeviceBuffers`): two weight slots (layer `i` of the step-major layer
sequence uses slot `i % 2`), two slots per load kind and for each attention's
new K,V / input activations (item `i` uses slot `i % 2`: the schedule's `after`
edges free them), one hidden state per micro-batch, and the resident part of
every layer's weights, embeddings and LM head. On the CPU backend "device" is
ordinary memory and every copy is a real memory copy.

Weights kept on the GPU (`weights_gpu_percent`) are the head of each layer's flat
vector; the streamed tail lands in a slot. A parameter split across the two is
joined by one device copy when a kernel needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sim.schedule import OpKind
from ..sim.specs import PointSpec
from .kernels import Rotary
from .plan import ExecPlan
from .weights import TORCH_DTYPES, LayerLayout, ModelWeights


def streamed_params(point: PointSpec) -> int:
    """Parameters of each layer that `load_weights` moves (the rest stay on the device)."""
    m = point.model
    return round(m.layer_params * (1.0 - point.policy.weights_gpu_percent / 100.0))


def _alloc(shape, dtype, pinned: bool) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype, pin_memory=pinned)


@dataclass
class HostBuffers:
    weights: list[torch.Tensor]  # per layer: the streamed tail
    cache: dict[tuple[int, int, str], torch.Tensor]  # (layer, mb, "kv"/"act") -> entries
    tokens: list[torch.Tensor]  # per micro-batch: [positions, gbs] int32
    qkv: list[torch.Tensor]  # CPU attention: 2 slots of [gbs, h + 2 hk]
    attn_out: list[torch.Tensor]  # CPU attention: 2 slots of [gbs, h]
    pinned: bool

    @classmethod
    def allocate(cls, point: PointSpec, plan: ExecPlan, weights: ModelWeights, prompt_ids: torch.Tensor,
                 pinned: bool) -> HostBuffers:
        m, wl = point.model, point.workload
        gbs, k = point.gpu_batch_size, point.policy.num_gpu_batches
        dtype = TORCH_DTYPES[m.dtype]
        n_res = m.layer_params - streamed_params(point)
        host_w = []
        if n_res < m.layer_params:
            for flat in weights.layers:
                buf = _alloc((m.layer_params - n_res,), dtype, pinned)
                buf.copy_(flat[n_res:])
                host_w.append(buf)
        width = {"kv": 2 * m.kv_hidden, "act": m.hidden}
        cache = {
            (layer, j, cls): _alloc((cap, gbs, width[cls]), dtype, pinned)
            for cls, cap in plan.capacity.items() for layer in range(m.layers) for j in range(k)
        }
        tokens = []
        for j in range(k):
            t = _alloc((wl.prompt_len + wl.gen_len, gbs), torch.int32, pinned)
            t[:wl.prompt_len].copy_(prompt_ids[:, j * gbs:(j + 1) * gbs])
            tokens.append(t)
        cpu_attn = any(op.kind is OpKind.cpu_attention for op in plan.schedule.ops)
        qkv = [_alloc((gbs, m.hidden + 2 * m.kv_hidden), dtype, pinned) for _ in range(2 if cpu_attn else 0)]
        attn_out = [_alloc((gbs, m.hidden), dtype, pinned) for _ in range(2 if cpu_attn else 0)]
        return cls(host_w, cache, tokens, qkv, attn_out, pinned)


@dataclass
class DeviceBuffers:
    device: torch.device
    layout: LayerLayout
    resident: list[torch.Tensor]  # per layer: head of the flat vector kept on the device
    weight_slots: list[torch.Tensor]
    loads: dict[OpKind, list[torch.Tensor]]  # 2 slots per load kind
    hidden: list[torch.Tensor]  # per micro-batch [max(prompt, 1), gbs, h]
    prefix_hidden: list[torch.Tensor]  # token-recompute: per micro-batch [tokens, gbs, h]
    new_kv: list[torch.Tensor]  # 2 slots [prompt, gbs, 2 hk]
    new_x: list[torch.Tensor]  # 2 slots [prompt, gbs, h]
    rebuilt_kv: torch.Tensor  # recompute output [tokens, gbs, 2 hk]
    qkv: list[torch.Tensor]  # CPU attention: 2 slots [gbs, h + 2 hk]
    attn_in: list[torch.Tensor]  # CPU attention: 2 slots [gbs, h]
    prompt_ids: list[torch.Tensor]  # per micro-batch [prompt, gbs]
    embed: torch.Tensor
    positions: torch.Tensor | None
    final_norm: dict[str, torch.Tensor]
    lm_head: torch.Tensor
    rotary: Rotary | None
    rope_positions: dict[int, torch.Tensor]  # load_act op id -> positions of its tokens

    @classmethod
    def allocate(cls, point: PointSpec, plan: ExecPlan, weights: ModelWeights, prompt_ids: torch.Tensor,
                 device: torch.device) -> DeviceBuffers:
        m, wl = point.model, point.workload
        gbs, k = point.gpu_batch_size, point.policy.num_gpu_batches
        dtype = TORCH_DTYPES[m.dtype]
        n_stream = streamed_params(point)
        n_res = m.layer_params - n_stream

        def zeros(*shape, dt=dtype):
            return torch.zeros(shape, dtype=dt, device=device)

        h, hk2 = m.hidden, 2 * m.kv_hidden
        tok = plan.max_load_tokens
        rebuilt = max(tok.get(OpKind.load_act, 0), tok.get(OpKind.load_tokens, 0))
        rows = max(wl.prompt_len, 1)
        cpu_attn = any(op.kind is OpKind.cpu_attention for op in plan.schedule.ops)
        rotary = Rotary.of(m, device, dtype) if weights.positions is None else None
        rope_positions = {}
        if rotary is not None:
            rope_positions = {i: torch.tensor(p, dtype=torch.long, device=device)
                              for i, p in plan.positions.items() if plan.schedule.ops[i].kind is OpKind.load_act}
        return cls(
            device=device,
            layout=LayerLayout.of(m),
            resident=[flat[:n_res].to(device).clone() for flat in weights.layers] if n_res else [],
            weight_slots=[zeros(n_stream) for _ in range(2)] if n_stream else [],
            loads={
                OpKind.load_kv: [zeros(tok.get(OpKind.load_kv, 0), gbs, hk2) for _ in range(2)],
                OpKind.load_act: [zeros(tok.get(OpKind.load_act, 0), gbs, h) for _ in range(2)],
                OpKind.load_tokens: [zeros(tok.get(OpKind.load_tokens, 0), gbs, dt=torch.int32) for _ in range(2)],
            },
            hidden=[zeros(rows, gbs, h) for _ in range(k)],
            prefix_hidden=[zeros(tok.get(OpKind.load_tokens, 0), gbs, h) for _ in range(k)],
            new_kv=[zeros(rows, gbs, hk2) for _ in range(2)],
            new_x=[zeros(rows, gbs, h) for _ in range(2)],
            rebuilt_kv=zeros(rebuilt, gbs, hk2),
            qkv=[zeros(gbs, h + hk2) for _ in range(2 if cpu_attn else 0)],
            attn_in=[zeros(gbs, h) for _ in range(2 if cpu_attn else 0)],
            prompt_ids=[prompt_ids[:, j * gbs:(j + 1) * gbs].to(device) for j in range(k)],
            embed=weights.embed.to(device),
            positions=None if weights.positions is None else weights.positions.to(device),
            final_norm={n: t.to(device) for n, t in weights.final_norm.items()},
            lm_head=weights.embed.to(device) if weights.lm_head is weights.embed else weights.lm_head.to(device),
            rotary=rotary,
            rope_positions=rope_positions,
        )

    def layer_weights(self, layer: int, slot: int) -> dict[str, torch.Tensor]:
        """Named views of `layer`'s weights: resident head and/or the streamed tail in `slot`."""
        if not self.weight_slots:
            return self.layout.views(self.resident[layer])
        if not self.resident:
            return self.layout.views(self.weight_slots[slot])
        head, tail = self.resident[layer], self.weight_slots[slot]
        n_res = head.numel()
        out = {}
        for name, (off, shape) in self.layout.params.items():
            size = 1
            for d in shape:
                size *= d
            if off + size <= n_res:
                out[name] = head[off:off + size].view(shape)
            elif off >= n_res:
                out[name] = tail[off - n_res:off - n_res + size].view(shape)
            else:
                out[name] = torch.cat((head[off:], tail[:off + size - n_res])).view(shape)
        return out
