"""Which code a figure was measured with: the commit every benchmark table and report names."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def commit(root: str = ROOT) -> str:
    """The short commit of the code that runs.

    ``DCMIP_COMMIT`` wins when set: a working tree copied to another machine (the GPU machine)
    can carry a stale ``.git`` whose HEAD is not the tree that was sent. Otherwise
    ``git rev-parse --short HEAD`` in ``root``; ``"unknown"`` where there is no git or no
    repository, so a report still gets written.
    """
    if os.environ.get("DCMIP_COMMIT"):
        return os.environ["DCMIP_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
