"""``accelerate launch --config_file FSDP.yaml tests/fsdp_cpu.py TRAIN.yaml``: LLaMA-Factory's launcher with FSDP on
CPU ranks, for tests only.

accelerate 1.11 turns FSDP on only for GPU-like process groups: on CPU ranks (``MULTI_CPU``, gloo) it ignores an
FSDP config and silently runs DDP. This lets its FSDP plugin through there, and nothing else: after accelerate set
up its state, a ``MULTI_CPU`` state that was given an FSDP plugin becomes an ``FSDP`` state on device ``cpu`` (FSDP1
wants the bare device), as the GPU branch would have made it. accelerate then wraps the model itself (FSDP1
``FullyShardedDataParallel`` or FSDP2 ``fully_shard``), and HF's Trainer, LLaMA-Factory and lf-multilr run unchanged.
One CPU-only fault of torch's FSDP1 optimizer-state saving is mended as well (``_copy_gathered_states``).
"""

import os
import runpy
import sys
from functools import wraps

import torch
from accelerate import Accelerator, state
from accelerate.utils import DistributedType
from torch.distributed.fsdp import _optim_utils

_original = state.AcceleratorState.__init__


@wraps(_original)
def _init(self, *args, fsdp_plugin=None, **kwargs):
    _original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        for shared in (self.__dict__, state.PartialState._shared_state):
            shared.update(distributed_type=DistributedType.FSDP, device=torch.device("cpu"))
        self.fsdp_plugin = fsdp_plugin


def _describe(accelerator, model):
    """Print what accelerate made of the model on this rank, so a test can tell that FSDP really wrapped it."""
    params = list(model.parameters())
    flat = any(getattr(param, "_is_flat_param", False) for param in params)  # FlatParameter passes as Parameter
    kinds = "FlatParameter" if flat else "/".join(sorted({type(param).__name__ for param in params}))
    local = sum(param.to_local().numel() if hasattr(param, "to_local") else param.numel() for param in params)
    where = f"fsdp_cpu: rank {accelerator.process_index}"
    # One write per line: under PYTHONUNBUFFERED, print() writes the text and its newline separately, and the other
    # rank's line can land in between on the shared pipe.
    sys.stdout.write(f"{where}: {type(model).__name__}, {kinds}, {local} elements here\n")
    sys.stdout.flush()


def _report(prepare):
    @wraps(prepare)
    def wrapped(self, *args, **kwargs):
        result = prepare(self, *args, **kwargs)
        for thing in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(thing, torch.nn.Module):
                _describe(self, thing)
        return result

    return wrapped


def _copy_gathered_states(unflatten):
    """torch's FSDP1 optimizer-state gather (``_allgather_orig_param_states``) gathers each state (``exp_avg``,
    ``exp_avg_sq``) into one reused buffer and keeps views of it, counting on ``.cpu()`` to copy them when the state
    is offloaded (accelerate offloads it). On a GPU that is a copy; on CPU ranks it is the same tensor, so every
    saved ``exp_avg`` would hold ``exp_avg_sq``. Copy them here, as the GPU path does."""

    @wraps(unflatten)
    def wrapped(fsdp_param_info, output_states, state_name, *args, **kwargs):
        unflatten(fsdp_param_info, output_states, state_name, *args, **kwargs)
        for states in output_states.values():
            value = states.get(state_name)
            if isinstance(value, torch.Tensor) and value.device.type == "cpu":
                states[state_name] = value.clone()

    return wrapped


state.AcceleratorState.__init__ = _init
_optim_utils._unflatten_orig_param_states = _copy_gathered_states(_optim_utils._unflatten_orig_param_states)
Accelerator.prepare_model = _report(Accelerator.prepare_model)  # FSDP1
Accelerator._prepare_fsdp2 = _report(Accelerator._prepare_fsdp2)  # FSDP2


def _destroy_after_barrier(destroy):
    """LLaMA-Factory destroys the process group as soon as its rank is done; on CPU (gloo) a rank that tears the
    group down while the other still finishes its last collective was once seen aborting (SIGABRT) after training
    had completed and saved. The ranks meet first, then tear down."""

    @wraps(destroy)
    def wrapped(*args, **kwargs):
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        return destroy(*args, **kwargs)

    return wrapped


torch.distributed.destroy_process_group = _destroy_after_barrier(torch.distributed.destroy_process_group)

if __name__ == "__main__":
    runpy.run_module("llamafactory.launcher", run_name="__main__")
    # Training returned normally (an error would have propagated above): leave without the interpreter's teardown
    # of gloo's threads, the other place a CPU rank can abort after the work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
