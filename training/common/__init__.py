"""Pieces every trainer and exporter shares: the weight EMA, atomic saves, DataLoader worker setup, the
training code's git commit (recorded in every exported model's metadata)."""
import copy
import os
import subprocess

import torch
from safetensors.torch import save_file


class EMA:
    """exponential moving average of a model's weights (what is validated and exported). The decay warms up as
    (1 + n) / (10 + n) over the first updates so the average is not dominated by the initialisation; n is the
    global step when the caller passes it, else this object's own update count (restore `updates` on resume)."""

    def __init__(self, model, decay=0.998):
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model, step=None):
        self.updates += 1
        n = self.updates if step is None else step
        d = min(self.decay, (1 + n) / (10 + n))
        msd = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


def atomic_torch_save(obj, path):
    """a checkpoint is never half-written: save beside it, then rename."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_save_safetensors(tensors, path, metadata=None):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def worker_init(_):
    """DataLoader workers: one thread each (the main process holds the cores it was given)."""
    import cv2
    cv2.setNumThreads(0)
    torch.set_num_threads(1)


def git_commit():
    try:
        r = subprocess.run(["git", "-C", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
                            "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip()
    except Exception:
        pass
    return "uncommitted"
