"""Starting the processes of a run: fastreid's launcher or torchrun.

- fastreid's own flags, ``--num-gpus N --num-machines M --machine-rank R --dist-url tcp://H:P``:
  ``fastreid.engine.launch`` spawns N processes on this machine (``dcmip.compat`` makes its
  worker fall back to gloo without GPUs).
- ``torchrun --nproc_per_node N [--nnodes M --node_rank R --rdzv_endpoint H:P] tools/train_net.py``
  (what SLURM and Kubernetes launchers call): torchrun has started one process per GPU and put
  the rendezvous in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), so each process joins the process
  group from there (``init_method="env://"``) and runs the training itself.

Both end in :func:`run_worker`: the same per-machine process group (fastreid's
``comm.get_local_rank`` and friends rely on it) and the same one-line report of bad input.
"""
import os
import sys

import torch
import torch.distributed as dist

from fastreid.engine import launch as fastreid_launch
from fastreid.utils import comm

from ..compat import USER_ERROR_EXIT_CODE
from ..registry import TrainingStopped, UserInputError
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (torch.distributed.run) started."""
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def launch(main_func, args) -> None:
    """Run ``main_func(args)`` in every process of the job, however the job was started."""
    if not launched_by_torchrun():
        fastreid_launch(main_func, args.num_gpus, num_machines=args.num_machines,
                        machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
        return
    if args.num_gpus != 1 or args.num_machines != 1 or args.machine_rank != 0:
        raise UserInputError("torchrun has started the processes: drop --num-gpus / --num-machines / "
                             "--machine-rank and give torchrun's --nproc_per_node / --nnodes / --node_rank.")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= per_machine
    if world_size > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    run_worker(main_func, (args,), per_machine, rank // per_machine, rank)


def run_worker(main_func, args, per_machine: int, machine_rank: int, global_rank: int) -> None:
    """The part of a worker after the process group is up: fastreid's per-machine group,
    then ``main_func(*args)``, ending with one ``error:`` line and ``USER_ERROR_EXIT_CODE`` on
    bad input or stopped training instead of a traceback per rank."""
    if dist.is_initialized():
        comm.synchronize()
        assert comm._LOCAL_PROCESS_GROUP is None
        # new_group must be called by every rank for every group, in the same order.
        for machine in range(dist.get_world_size() // per_machine):
            group = dist.new_group(list(range(machine * per_machine, (machine + 1) * per_machine)))
            if machine == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
    try:
        main_func(*args)
    except (UserInputError, TrainingStopped) as e:
        print(f"error{f' (rank {global_rank})' if global_rank else ''}: {e}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT_CODE)
