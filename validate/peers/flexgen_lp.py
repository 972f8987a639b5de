"""FlexGen's own LP cost model (`experimental/cost_model.py` of the flexgen 0.1.8 wheel).

`lp_predict` evaluates one fixed policy (FlexGen's "estimate the throughput for a given
policy" use, with the memory relaxations lifted as its docstring advises);
`lp_search` runs FlexGen's policy search. Both need `pip install flexgen==0.1.8 pulp`
(with `torch==2.13.0` installed first); `available()` says whether they can run.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from dataclasses import dataclass

from ...sim.specs import HardwareSpec, ModelSpec


@dataclass(frozen=True)
class FlexGenPolicy:
    """FlexGen's policy: block shape and its six placement percentages (disk = the rest)."""

    gpu_batch_size: int
    num_gpu_batches: int
    w_gpu: float
    w_cpu: float
    cache_gpu: float
    cache_cpu: float
    act_gpu: float = 0.0
    act_cpu: float = 100.0
    pin_weight: bool = True

    @property
    def percent(self) -> list[float]:
        return [self.w_gpu, self.w_cpu, self.cache_gpu, self.cache_cpu, self.act_gpu, self.act_cpu]

    @property
    def batch(self) -> int:
        return self.gpu_batch_size * self.num_gpu_batches

    @property
    def uses_disk(self) -> bool:
        return self.w_gpu + self.w_cpu < 100 or self.cache_gpu + self.cache_cpu < 100

    def label(self) -> str:
        pct = " ".join(f"{p:g}" for p in self.percent)
        return f"{self.gpu_batch_size}x{self.num_gpu_batches} [{pct}]"


@dataclass(frozen=True)
class LPPrediction:
    throughput_tok_s: float
    prefill_s: float
    decode_s: float
    #: the LP's per-layer decode terms (seconds): weight + hidden load `ctogg` (added outside the max),
    #: GPU and CPU compute `compg` (a sum), and `Tgen` = ctogg + max(gtocg, dtocg, ctodg, compg)
    ctogg_s: float = float("nan")
    compg_s: float = float("nan")
    tgen_s: float = float("nan")


def available() -> bool:
    try:
        importlib.import_module("experimental.cost_model")
    except Exception:  # noqa: BLE001 - missing flexgen, pulp or torch all mean "cannot run"
        return False
    return True


def _module():
    return importlib.import_module("experimental.cost_model")


def lp_config(model: ModelSpec, hw: HardwareSpec, prompt_len: int, gen_len: int, nvme_bytes: float = 1500 * 2**30):
    """FlexGen's CostModelConfig for an OPT model: its fitted T4 constants, our memory sizes."""
    cm = _module()
    cfg = cm.CostModelConfig()
    cfg.l, cfg.h1, cfg.h2, cfg.nh = model.layers, model.hidden, model.ffn, model.heads
    cfg.s, cfg.n = prompt_len, gen_len
    cfg.gmem, cfg.cmem, cfg.nmem = hw.gpu.memory_bytes, hw.host.memory_bytes, nvme_bytes
    return cfg


@contextlib.contextmanager
def _alphas(value: float):
    """FlexGen's memory relaxation ratios (module globals), set for the duration."""
    cm = _module()
    saved = (cm.alpha_g, cm.alpha_c, cm.alpha_n)
    cm.alpha_g = cm.alpha_c = cm.alpha_n = value
    try:
        yield
    finally:
        cm.alpha_g, cm.alpha_c, cm.alpha_n = saved


def lp_predict(model: ModelSpec, hw: HardwareSpec, prompt_len: int, gen_len: int,
               policy: FlexGenPolicy) -> LPPrediction:
    """FlexGen's model's throughput, prefill and decode time for one fixed policy."""
    cm = _module()
    cfg = lp_config(model, hw, prompt_len, gen_len)
    printed = io.StringIO()
    with _alphas(100.0), contextlib.redirect_stdout(printed):
        status, _, (tput, tpre, tgen), _ = cm.solve_lp(
            cfg, policy.batch, policy.gpu_batch_size, verbose=1, debug=True, percent=policy.percent)
    if status != 1:
        raise ValueError(f"FlexGen's LP has no solution for {policy.label()} (status {status})")
    terms = dict(re.findall(r"(ctogg|compg|Tgen) = ([0-9.eE+-]+) s", printed.getvalue()))
    return LPPrediction(tput, tpre, tgen, *(float(terms.get(k, "nan")) for k in ("ctogg", "compg", "Tgen")))


def lp_search(model: ModelSpec, hw: HardwareSpec, prompt_len: int, gen_len: int) -> FlexGenPolicy | None:
    """The policy FlexGen's own search picks (its default relaxation, alpha = 0.8)."""
    cm = _module()
    cfg = lp_config(model, hw, prompt_len, gen_len)
    args = {k: None for k in ("wg", "wc", "cg", "cc", "hg", "hc", "percent", "gbs", "num_gb")}
    args["compress_w"] = False
    with contextlib.redirect_stdout(io.StringIO()):
        best, _ = cm.solve(cfg, cm.solve_lp, args)
    if best is None:
        return None
    return FlexGenPolicy(
        best.gpu_batch_size, best.num_gpu_batches,
        round(100 * best.w_gpu_percent, 1), round(100 * best.w_cpu_percent, 1),
        round(100 * best.cache_gpu_percent, 1), round(100 * best.cache_cpu_percent, 1),
        round(100 * best.act_gpu_percent, 1), round(100 * best.act_cpu_percent, 1),
    )
