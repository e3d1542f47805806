"""A web server's heap before it serves (runtime.heap): frozen, and young collections far apart."""
from __future__ import annotations

import subprocess
import sys


def test_settling_freezes_the_startup_heap_and_raises_only_the_young_threshold():
    # In a process of its own: the test runner's collector is left as it is.
    code = ("import gc; from runtime.heap import YOUNG_THRESHOLD, settle_for_serving; before = gc.get_threshold(); "
            "settle_for_serving(); after = gc.get_threshold(); "
            "print(gc.get_freeze_count() > 1000, after == (YOUNG_THRESHOLD,) + before[1:], before[0] < YOUNG_THRESHOLD)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "True"]
