"""Pose error of an MFN checkpoint by axis (pitch / yaw / roll) on the HELEN test crops used as the whole frame, the
training validation's protocol (`mfn_train.matched_faces`): mean absolute error, bias, and the slope of predicted on true angle (1 = follows the
truth fully; below 1 = pulled towards the mean).

    python training/mfn/pose_axes.py training/runs/mfn7/best.pt
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages

import argparse
import math

import numpy as np
import torch
from safetensors.torch import load_file

from mfn import data as MD
from mfn import model as M
from mfn import train as T


def euler_deg(R):
    """(pitch about x, yaw about y, roll about z) in degrees, R = Rz Ry Rx."""
    return np.degrees([math.atan2(R[2, 1], R[2, 2]), math.asin(-np.clip(R[2, 0], -1, 1)),
                       math.atan2(R[1, 0], R[0, 0])])


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--det-cache", default="training/cache/det")
    ap.add_argument("--sfn-cache", default="training/cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sharp-faces", action="store_true", help="frames from the 256-px crops, as `polyface eval`")
    ap.add_argument("--as-exported", default="",
                    help="a model file exported from the checkpoint: score its (low-rank) head, as the Rust decode "
                         "computes it; needed for a fit that reads the head's own features")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ck, model = M.load_ema(args.checkpoint)
    fit = ck.get("pose_fit")  # checkpoints written by mfn/pose_fit.py: scored with the fit, as exported
    pose_fit = None if fit is None else M.stored_pose_fit(fit)
    head_features = fit is not None and fit["weight"].shape[1] - M.shape_product_count(pose_fit) > M.POSE_FIT_INPUTS
    assert args.as_exported or not head_features, "this pose fit reads the exported head's features: give --as-exported"
    head = M.exported_head(load_file(args.as_exported), ck["config"], head_features) if args.as_exported else None
    data = MD.MFNData(args.det_cache, args.sfn_cache, sharp_faces=args.sharp_faces)
    pred, true = [], []
    n = len(data.val_imgs)
    for a in range(0, n, 30):
        idx = list(range(a, min(n, a + 30)))
        frames = [MD.val_frame(data.val_imgs[i], data.val_lmk[i]) for i in idx]
        for i, face in zip(idx, T.matched_faces(model, frames, pose_fit=pose_fit, head=head)):
            if face is not None and data.val_has_pose[i]:
                pred.append(euler_deg(face["R"].astype(np.float64)))
                true.append(euler_deg(data.val_R[i]))
    pred, true = np.array(pred), np.array(true)
    err = pred - true
    print(f"{len(pred)} faces")
    for a, name in enumerate(["pitch", "yaw", "roll"]):
        slope = np.polyfit(true[:, a], pred[:, a], 1)[0]
        print(f"{name}: mean abs {np.abs(err[:, a]).mean():.2f} deg, bias {err[:, a].mean():+.2f}, "
              f"predicted-on-true slope {slope:.2f}")


if __name__ == "__main__":
    main()
