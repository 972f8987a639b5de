"""Timing a callable on the CPU or on a CUDA device, and a busy neighbour thread.

`time_s` runs `fn` until `min_total_s` has passed (at least `min_iters` times,
after one untimed warm-up call) and returns the median seconds per call over
`rounds` rounds; on CUDA each round is bracketed by `synchronize`, so the time
includes the kernels, not only their launch.

`time_interleaved` times many callables the same way but takes their rounds in
passes over all of them, so that each one's samples are spread over the whole
measurement: on a shared machine a slow spell of a few seconds (another tenant
using the memory bus) then falls on one sample of many callables, which the
median drops, rather than on every sample of the few timed during it. On a
2-vCPU VM, timing each GEMM shape's rounds back to back, two calibrations minutes
apart differed by up to 1.44x on whole groups of consecutive shapes.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence


def _sync(backend: str) -> None:
    if backend == "cuda":
        import torch

        torch.cuda.current_stream().synchronize()  # this thread's stream only, not a busy neighbour's


def _iters(fn: Callable[[], object], backend: str, budget_s: float, max_iters: int) -> int:
    """Calls per round so that a round lasts about `budget_s`, after one untimed warm-up call."""
    fn()
    _sync(backend)
    once = _round_s(fn, backend, 1)
    return int(min(max_iters, max(1, budget_s / max(once, 1e-7))))


def _round_s(fn: Callable[[], object], backend: str, iters: int) -> float:
    """Seconds per call over `iters` back-to-back calls."""
    _sync(backend)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(backend)
    return (time.perf_counter() - t0) / iters


def time_s(fn: Callable[[], object], backend: str, min_total_s: float = 0.02, rounds: int = 3,
           max_iters: int = 200) -> float:
    iters = _iters(fn, backend, min_total_s / rounds, max_iters)
    return statistics.median(_round_s(fn, backend, iters) for _ in range(rounds))


def time_interleaved(fns: Sequence[Callable[[], object]], backend: str, min_total_s: float = 0.02,
                     passes: int = 5, max_iters: int = 200) -> list[float]:
    """Median seconds per call of each of `fns`, its `passes` samples taken one per pass over all of them."""
    iters = [_iters(fn, backend, min_total_s / passes, max_iters) for fn in fns]
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(passes):
        for fn, n, got in zip(fns, iters, samples, strict=True):
            got.append(_round_s(fn, backend, n))
    return [statistics.median(got) for got in samples]


@contextlib.contextmanager
def busy_neighbour(work: Callable[[], object] | None, backend: str = "cpu") -> Iterator[None]:
    """Run `work` in a loop on another thread while the body runs (None: nothing).

    On CUDA the neighbour issues on its own stream and waits for each call, so it
    keeps its engine busy without queueing unbounded work.
    """
    if work is None:
        yield
        return
    import torch

    from ..hw.threads import adopt_threads

    stop = threading.Event()
    intra_op = torch.get_num_threads()  # the caller's count, as the executor's stream threads run

    def loop() -> None:
        adopt_threads(intra_op)  # else its oneDNN GEMMs use every CPU (hw/threads.py)
        stream = torch.cuda.Stream() if backend == "cuda" else None
        with torch.inference_mode(), (torch.cuda.stream(stream) if stream else contextlib.nullcontext()):
            while not stop.is_set():
                work()
                if stream is not None:
                    stream.synchronize()

    t = threading.Thread(target=loop, name="hssim-busy", daemon=True)
    t.start()
    try:
        time.sleep(0.005)
        yield
    finally:
        stop.set()
        t.join()
