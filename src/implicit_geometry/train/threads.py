"""Intra-op thread count for small tensor programs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def threads_for(numel: int, device: torch.device) -> Iterator[None]:
    """One intra-op CPU thread for small problems (below torch's parallel grain size a second thread only adds
    synchronization, which costs a lot on a shared machine); the default otherwise. Restored on exit."""
    previous = torch.get_num_threads()
    if device.type == "cpu" and numel < 1 << 16:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
