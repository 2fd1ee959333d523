"""fastreid's Checkpointer with atomic writes."""
import os

import torch

from fastreid.utils.checkpoint import Checkpointer


class AtomicCheckpointer(Checkpointer):
    """Writes ``<name>.pth`` and the ``last_checkpoint`` tag through a temporary file and a
    rename, so a run killed while saving leaves the previous checkpoint intact."""

    def save(self, name: str, model_state=None, **kwargs):
        """Like fastreid's; ``model_state`` replaces the model's own weights in the file (DCMIP
        keeps the better of student and teacher as ``model_best``)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict() if model_state is None else model_state}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {save_file}")
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(f"{name}.pth")

    def tag_last_checkpoint(self, last_filename_basename: str):
        _atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                      lambda f: f.write(last_filename_basename.encode()))

    def _load_file(self, f: str):
        # Our checkpoints hold numpy/python RNG states next to tensors; they are the user's own
        # files, as with fastreid on torch 1.x, which loaded them the same way.
        return torch.load(f, map_location=torch.device("cpu"), weights_only=False)


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
