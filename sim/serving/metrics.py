"""Serving metrics: latency percentiles, throughput, link bytes, and remapping over time.

- TTFT (time to first token): first token's time - arrival, per request.
- TBT (time between tokens): gaps between consecutive tokens of a request, pooled over
  all requests.
- throughput: output tokens / (last token's time - first arrival).
- remapped layers: time-weighted mean and maximum over iterations; the per-iteration
  log (`ServingRun.iterations`) has the full series.
- swaps: the cudaMemcpyAsync calls vLLM issues for them, and the time iterations waited.
- tenants: weight reloads (a tenant whose weights were reclaimed gets a request), the
  time from that request's arrival until its weights were back, and the most bytes of
  other tenants' weights a tenant's pool held.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .scheduler import RequestState

PERCENTILES = (50, 90, 99)


def _percentiles(name: str, values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {f"{name}_p{p}_s": float("nan") for p in PERCENTILES}
    qs = np.percentile(values, PERCENTILES)
    return {f"{name}_p{p}_s": float(q) for p, q in zip(PERCENTILES, qs, strict=True)}


def latency_arrays(states: list[RequestState]) -> tuple[np.ndarray, np.ndarray]:
    """(TTFT per request, every time between tokens), seconds."""
    ttft = np.array([s.token_times_ns[0] / 1e9 - s.request.arrival_s for s in states])
    gaps = [np.diff(np.asarray(s.token_times_ns, dtype=np.int64)) for s in states if len(s.token_times_ns) > 1]
    tbt = np.concatenate(gaps) / 1e9 if gaps else np.zeros(0)
    return ttft, tbt


def serving_metrics(states: list[RequestState], iterations: pd.DataFrame, layers: int) -> dict[str, float]:
    ttft, tbt = latency_arrays(states)
    tokens = sum(len(s.token_times_ns) for s in states)
    first_arrival_s = min(s.request.arrival_s for s in states)
    end_s = max(s.token_times_ns[-1] for s in states) / 1e9
    span_s = max(end_s - first_arrival_s, 1e-12)
    it = iterations
    dur = (it["end_s"] - it["start_s"]).to_numpy()
    busy_s = float(dur.sum())
    remapped = it["remapped_layers"].to_numpy()
    swapped_gb = float(it["h2d_kv_bytes"].sum() + it["d2h_kv_bytes"].sum()) / 1e9
    return {
        "requests": len(states),
        "output_tokens": tokens,
        "duration_s": span_s,
        "throughput_tok_s": tokens / span_s,
        **_percentiles("ttft", ttft),
        "ttft_mean_s": float(ttft.mean()),
        **_percentiles("tbt", tbt),
        "tbt_mean_s": float(tbt.mean()) if tbt.size else float("nan"),
        "iterations": len(it),
        "gpu_busy": float(it["compute_s"].sum()) / span_s,
        "preemptions": int(it["preempted"].sum()),
        "recomputed_tokens": int(sum(s.recomputed_tokens for s in states)),
        "h2d_kv_bytes": int(it["h2d_kv_bytes"].sum()),
        "h2d_weight_bytes": int(it["h2d_weight_bytes"].sum()),
        "h2d_reload_bytes": int(it["h2d_reload_bytes"].sum()),
        "h2d_bytes": int(it["h2d_kv_bytes"].sum() + it["h2d_weight_bytes"].sum() + it["h2d_reload_bytes"].sum()),
        "d2h_bytes": int(it["d2h_kv_bytes"].sum()),
        "kv_copies": int(it["kv_copies"].sum()),
        "swap_wait_s": float(it["swap_wait_s"].sum()),
        "swap_wait_s_per_gb": (float(it["swap_wait_s"].sum()) / swapped_gb) if swapped_gb else 0.0,
        "weight_reloads": int((it["reloaded_layers"] > 0).sum()),
        "reload_wait_s": float(it["reload_wait_s"].sum()),
        "borrowed_bytes_max": int(it["borrowed_bytes"].max()) if len(it) else 0,
        "weight_stall_s": float(it["weight_stall_s"].sum()),
        "remapped_layers_mean": float((remapped * dur).sum() / busy_s) if busy_s > 0 else 0.0,
        "remapped_layers_max": int(remapped.max()) if len(remapped) else 0,
        "remapped_fraction_max": (int(remapped.max()) if len(remapped) else 0) / layers,
        "layer_reverts": int(it["reverted_layers"].sum()),
    }
