"""UNSUP.CPU_KEEP_FREED_MEMORY (dcmip.engine.allocator): applied where it can be, said once,
and results do not depend on it (only where the bytes live changes)."""
import platform
import subprocess
import sys

import pytest
from yacs.config import CfgNode

from dcmip.engine import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A forward with and without the setting, in fresh processes (mallopt cannot be undone).
FORWARD = """
import sys, torch
if sys.argv[1] == "on":
    from dcmip.engine.allocator import keep_freed_memory
    assert keep_freed_memory()
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.ReLU(), torch.nn.Conv2d(64, 8, 3))
x = torch.randn(64, 3, 96, 96)  # 38 MB activations: above glibc's default mmap threshold
with torch.no_grad():
    y = net(x).sum(dim=(2, 3))
print(",".join(float(v).hex() for v in y.flatten()))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_outputs_are_bit_identical_with_and_without_it():
    outs = [subprocess.run([sys.executable, "-c", FORWARD, mode], capture_output=True, text=True, check=True).stdout
            for mode in ("off", "on")]
    assert outs[0] and outs[0] == outs[1]


def test_config_switch_and_log(monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    cfg = CfgNode({"UNSUP": CfgNode({"CPU_KEEP_FREED_MEMORY": False})})
    allocator.apply_allocator_config(cfg)
    assert not calls
    cfg.UNSUP.CPU_KEEP_FREED_MEMORY = True
    with caplog.at_level("INFO", logger="dcmip.engine.allocator"):
        allocator.apply_allocator_config(cfg)
    assert calls == [1] and "UNSUP.CPU_KEEP_FREED_MEMORY" in caplog.text


def test_without_glibc_it_changes_nothing_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert allocator.keep_freed_memory() is False
    cfg = CfgNode({"UNSUP": CfgNode({"CPU_KEEP_FREED_MEMORY": True})})
    with caplog.at_level("INFO", logger="dcmip.engine.allocator"):
        allocator.apply_allocator_config(cfg)
    assert "no effect" in caplog.text
