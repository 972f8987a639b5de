"""A drift probe: one decode GEMM and one copy of a layer's weights, timed at calibration and before
every validation point.

On a shared machine the rates the calibration measured can move by the time a point is measured
minutes later (another tenant on the memory bus): two calibrations of a 2-vCPU VM minutes apart
put whole groups of GEMM shapes 1.05-1.44x apart. The probe changes no prediction. Its ratios,
the probe's time before a point over its time at calibration (`probe_gemm_ratio`,
`probe_copy_ratio` of `points.csv`), are reported beside the point's error, so that a reader can
tell the machine's drift from the model's error: a point measured while the probe ran 1.15x
slower than at calibration is expected to be predicted about 1/1.15 of its measured time by a
faithful model.

The probe's operands are the busy neighbours' of the micro-benchmarks (`microbench`): the set's
largest streamed weight GEMM at decode size over cold weights, and a copy of its largest layer
(at most twice the last-level cache), in the profile's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .device import require_torch
from .microbench import TORCH_DTYPE_NAMES, BenchPlan, _neighbour_copy, _neighbour_matmul, llc_bytes, neighbour_shapes
from .timing import time_interleaved

#: seconds of calls per probe and per kernel: short next to a point, long enough for a stable median
PROBE_S = 0.1


@dataclass
class DriftProbe:
    backend: str
    gemm: Callable[[], object]
    copy: Callable[[], object]

    def measure(self) -> dict[str, float]:
        """Seconds per call of the probe's GEMM and copy (interleaved, median of 5 passes)."""
        torch = require_torch()
        with torch.inference_mode():
            gemm_s, copy_s = time_interleaved([self.gemm, self.copy], self.backend, PROBE_S)
        return {"gemm_s": gemm_s, "copy_s": copy_s}


def drift_probe(backend: str, plan: BenchPlan) -> DriftProbe:
    torch = require_torch()
    dtype = getattr(torch, TORCH_DTYPE_NAMES[plan.dtype])
    llc = llc_bytes(backend)
    nk, layer_bytes = neighbour_shapes(plan.models)
    return DriftProbe(backend, _neighbour_matmul(backend, dtype, nk, llc),
                      _neighbour_copy(backend, min(layer_bytes, 2 * llc), llc, dtype))


def drift_ratios(now: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    """The probe's time now over its baseline: above 1, the machine is slower than when calibrated."""
    return {"probe_gemm_ratio": now["gemm_s"] / baseline["gemm_s"],
            "probe_copy_ratio": now["copy_s"] / baseline["copy_s"]}
