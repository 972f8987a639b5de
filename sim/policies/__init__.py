"""Policies build schedules; they never run them."""

from .block import build_schedule
from .schemes import CacheScheme, scheme_for

__all__ = ["CacheScheme", "build_schedule", "scheme_for"]
