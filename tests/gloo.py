"""Two-process gloo groups for the tests' ``mp.spawn`` workers."""
import contextlib
import socket

import torch.distributed as dist


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gloo_group(rank, world_size, port):
    """Join a gloo group on localhost for the body, then leave it together.

    The barrier matters: a rank that tears its group down (or exits) while its peer is still
    inside a collective or the store handshake can take the peer down with SIGABRT
    ("terminate called without an active exception"), seen once in CI on a loaded machine.
    """
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()
