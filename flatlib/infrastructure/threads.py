"""Thread control: every number of the book is computed on one CPU thread.

How a matrix product is split across threads changes the order of its floating-point sums, so
on two threads a trained network or a measure can differ from one thread's in the last bits,
while a store key (``flatlib.keys``) knows nothing of threads. One thread makes a stored number
the same whoever computed it, whatever the machine's core count. Training, measures, the study
rows, certificates and the experiments all enter this one context; torch's thread count is
process-wide, so it is restored on the way out.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_thread():
    """Run the block with ``torch.set_num_threads(1)``, restoring the process's count after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
