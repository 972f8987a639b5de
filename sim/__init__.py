"""hssim.sim: the simulator, a library that imports nothing above it.

Specs and presets, the schedule IR, policies (which build schedules), the one cost model
(`costs/`: roofline and calibrated profiles), the SimPy engine and its list replay, metrics,
sweeps, Chrome traces of a timeline, the optimisers and online serving.
"""
