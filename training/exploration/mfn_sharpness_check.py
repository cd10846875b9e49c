"""HELEN-as-frame landmark NME of MFN checkpoints on sharp and on soft input: the shared 256-pixel test crops scaled to
the 240-pixel frame height as `polyface eval` sees them (sharp), and the same crops first reduced to 128 pixels, as
the training cache stores faces, then enlarged (soft, what training and its validation see). A net that scores much
better on soft input has learnt the cache's blur.

    python training/exploration/mfn_sharpness_check.py training/runs/mfn7/best.pt [more checkpoints] [--data ../shared/data]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages

import argparse
import json
import os

import cv2
import numpy as np
import torch

from mfn import data as MD
from mfn import model as M
from mfn import train as T


def frame(img, lmk, soft):
    """crop (H=W) -> 320x240 frame with the crop top-left at 240 pixels, landmarks scaled alike."""
    if soft:
        lmk = lmk * (128 / img.shape[0])
        img = cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA)
    return MD.val_frame(img, lmk)


def nme(model, rows, root, soft, batch=30):
    out = []
    for a in range(0, len(rows), batch):
        frames = []
        for r in rows[a:a + batch]:
            img = cv2.cvtColor(cv2.imread(os.path.join(root, r["image"])), cv2.COLOR_BGR2RGB)
            frames.append(frame(img, np.array(r["landmarks68"], np.float32), soft))
        for (_, gt), face in zip(frames, T.matched_faces(model, frames)):
            if face is not None:
                iod = np.linalg.norm(gt[36] - gt[45])
                out.append(np.linalg.norm(face["lmk"] - gt, axis=1).mean() / iod * 100)
    return float(np.mean(out)), len(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = os.path.join(args.data, "helen")
    rows = [json.loads(line) for line in open(os.path.join(root, "test.jsonl"))]
    for path in args.checkpoints:
        _, model = M.load_ema(path)
        (sharp, n), (soft, _) = nme(model, rows, root, False), nme(model, rows, root, True)
        print(f"{path}: {n} faces, NME sharp {sharp:.3f} %, soft {soft:.3f} %")


if __name__ == "__main__":
    main()
