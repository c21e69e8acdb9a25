"""A test shim for LLaMA-Factory's v1 engine on several CPU ranks, put on PYTHONPATH by tests/test_v1.py.

v1 synchronizes the ranks with ``torch.accelerator.synchronize()`` after every step. With torch's CUDA build on a
machine without a GPU, torch takes CUDA for the accelerator and that call fails initialising it, so a stock v1 run
with two CPU ranks stops after its first step. On such a machine there is no device work to wait for: the call is
made a no-op. Nothing else changes (the ranks still all-reduce through gloo, as v1 does on CPU).
"""

import torch

if not torch.cuda.is_available() and hasattr(torch, "accelerator"):
    torch.accelerator.synchronize = lambda device=None: None
