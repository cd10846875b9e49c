"""Small faces in real group photos (`groups.jsonl`, split test): recall, AP50 and teacher-relative NME by face size,
with the matching rule `polyface eval` uses on these photos (src/eval.rs):

* a prediction is the tight box of its 68 landmarks; it matches a labelled face when the box's centre lies inside the
  face's reference box, one-to-one, greedy by score;
* reference box: MaskON's human box (`annotated_box`); for WebFaces faces with only `points4` (eyes, nose tip, mouth
  centre), a square of side 2.1 x the eye-mouth distance centred 0.62 of that distance from the eye midpoint
  towards the mouth (fitted to the teacher's boxes on the faces that have both: centre along the axis p10-p90
  0.51-0.70, across +-0.24, box height / eye-mouth 2.03, width 2.09);
* teacher-only faces (`annotated: false`) are ignore regions: a prediction whose centre lies in one is neither a hit
  nor a false positive;
* face height (jaw to brows, for the size buckets and the >= 20 px recall): the teacher box's height where there is
  one, else 0.843 x the human box's height (MaskON: forehead to chin; median ratio on faces with both), else 2.03 x
  the eye-mouth distance;
* NME: mean point error against the teacher's 68 points / the teacher's outer-eye distance (36-45), faces with teacher
  labels only; AP50 on `exhaustive` photos only (WebFaces marks only some faces).

    python training/groups/evaluate.py CKPT [--size 640x480] [--limit N]
"""
import argparse
import json
import math
import os
import sys

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages
from detector import data as D  # noqa: E402
from mfn import model as M  # noqa: E402

BUCKETS = [(0, 40), (40, 60), (60, 90), (90, 140), (140, 1e9)]
BUCKET_NAMES = ["<40", "40-60", "60-90", "90-140", ">=140"]
POINTS4_CENTRE, POINTS4_SIDE = 0.62, 2.1
ANN_TO_JAW_BROW, EYE_MOUTH_TO_JAW_BROW = 0.843, 2.03
MIN_RECALL_HEIGHT = 20.0


def reference_box(face):
    """the box a prediction's centre must fall in, and the face's jaw-to-brow height."""
    tb = face.get("box")
    if face.get("annotated_box"):
        a = face["annotated_box"]
        h = (tb[3] - tb[1]) if tb else ANN_TO_JAW_BROW * (a[3] - a[1])
        return np.array(a, np.float64), h
    if face.get("points4"):
        p = np.array(face["points4"], np.float64)
        eyes = (p[0] + p[1]) / 2
        em = np.linalg.norm(p[3] - eyes)
        c = eyes + POINTS4_CENTRE * (p[3] - eyes)
        half = POINTS4_SIDE * em / 2
        h = (tb[3] - tb[1]) if tb else EYE_MOUTH_TO_JAW_BROW * em
        return np.array([c[0] - half, c[1] - half, c[0] + half, c[1] + half]), h
    return np.array(tb, np.float64), tb[3] - tb[1]


def read_groups(path, split="test"):
    base = os.path.dirname(path)
    out = []
    for line in open(path):
        r = json.loads(line)
        if split and r["split"] != split:
            continue
        faces = []
        for f in r["faces"]:
            box, h = reference_box(f)
            lmk = np.array(f["landmarks68"], np.float64) if f.get("landmarks68") else None
            faces.append(dict(box=box, height=h, annotated=f["annotated"], lmk=lmk))
        out.append(dict(path=os.path.join(base, r["image"]), exhaustive=r["exhaustive"], faces=faces))
    return out


def letterbox(img, w, h, max_scale=1.0):
    """as the Rust letterbox: fit into w x h, top-left; enlarged by at most max_scale (1: never enlarged)."""
    s = min(max_scale, w / img.shape[1], h / img.shape[0])
    nw, nh = min(w, int(math.floor(img.shape[1] * s + 0.5))), min(h, int(math.floor(img.shape[0] * s + 0.5)))
    out = np.zeros((h, w, 3), np.uint8)
    interp = cv2.INTER_LINEAR
    out[:nh, :nw] = cv2.resize(img, (nw, nh), interpolation=interp)
    return out, s


def inside(box, p):
    return box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]


def judge(preds, faces, stats, exhaustive):
    """preds: list of (score, lmk (68,2)) in photo pixels, any order."""
    preds = sorted(preds, key=lambda p: -p[0])
    taken = [False] * len(faces)
    for score, lmk in preds:
        c = (lmk.min(0) + lmk.max(0)) / 2
        hit = None
        best = 1e18
        for i, f in enumerate(faces):
            if taken[i] or not f["annotated"] or not inside(f["box"], c):
                continue
            bc = (f["box"][:2] + f["box"][2:]) / 2
            d = np.sum((bc - c) ** 2)
            if d < best:
                best, hit = d, i
        if hit is None:
            if any(not f["annotated"] and inside(f["box"], c) for f in faces):
                continue
            if exhaustive:
                stats["scored"].append((score, False))
            continue
        taken[hit] = True
        f = faces[hit]
        if exhaustive:
            stats["scored"].append((score, True))
        b = bucket(f["height"])
        stats["found"][b] += 1
        if f["height"] >= MIN_RECALL_HEIGHT:
            stats["found20"] += 1
        if f["lmk"] is not None:
            iod = np.linalg.norm(f["lmk"][36] - f["lmk"][45])
            stats["nme"][b].append(np.linalg.norm(lmk - f["lmk"], axis=1).mean() / max(iod, 1e-6) * 100)
    for f in faces:
        if not f["annotated"]:
            continue
        stats["total"][bucket(f["height"])] += 1
        stats["total20"] += f["height"] >= MIN_RECALL_HEIGHT
        if exhaustive:
            stats["truths_exh"] += 1


def bucket(h):
    return next(i for i, (lo, hi) in enumerate(BUCKETS) if lo <= h < hi)


def ap(scored, truths):
    scored = sorted(scored, key=lambda s: -s[0])
    tp = fp = 0
    pts = []
    for _, hit in scored:
        tp += hit
        fp += not hit
        pts.append((tp / max(truths, 1), tp / (tp + fp)))
    out, prev = 0.0, 0.0
    for i in range(len(pts)):
        out += (pts[i][0] - prev) * max(p[1] for p in pts[i:])
        prev = pts[i][0]
    return out


def new_stats():
    return dict(found=[0] * 5, total=[0] * 5, nme=[[] for _ in BUCKETS], scored=[], truths_exh=0, found20=0,
                total20=0)


def summary(stats):
    nm = [x for b in stats["nme"] for x in b]
    return {
        "recall20": stats["found20"] / max(stats["total20"], 1),
        "ap50_exhaustive": ap(stats["scored"], stats["truths_exh"]),
        "nme": float(np.mean(nm)) if nm else float("nan"),
        "nme_40_90": float(np.mean(stats["nme"][1] + stats["nme"][2])) if stats["nme"][1] + stats["nme"][2] else
        float("nan"),
        "by_size": {n: {"recall": stats["found"][i] / max(stats["total"][i], 1), "faces": stats["total"][i],
                        "nme": float(np.mean(stats["nme"][i])) if stats["nme"][i] else None}
                    for i, n in enumerate(BUCKET_NAMES)},
    }


@torch.no_grad()
def run_model(model, photos, size, threshold=0.3, limit=None, max_scale=1.0):
    stats = new_stats()
    W, H = size
    for k, p in enumerate(photos[:limit]):
        img = cv2.cvtColor(cv2.imread(p["path"]), cv2.COLOR_BGR2RGB)
        x, s = letterbox(img, W, H, max_scale)
        det, feat = model(D.normalize(x[None]))
        r = M.decode_faces(det, feat, model.face_values, threshold=threshold)[0]
        preds = [(float(sc), l.numpy().astype(np.float64) / s) for sc, l in zip(r["scores"], r["lmk"])]
        judge(preds, p["faces"], stats, p["exhaustive"])
    return summary(stats)


def main():
    ap_ = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap_.add_argument("checkpoint")
    ap_.add_argument("--data", default="../shared/data/groups.jsonl")
    ap_.add_argument("--size", default="320x240")
    ap_.add_argument("--threshold", type=float, default=0.3)
    ap_.add_argument("--limit", type=int, default=None)
    ap_.add_argument("--threads", type=int, default=1)
    a = ap_.parse_args()
    torch.set_num_threads(a.threads)
    _, model = M.load_ema(a.checkpoint)
    size = tuple(int(v) for v in a.size.split("x"))
    print(json.dumps(run_model(model, read_groups(a.data), size, a.threshold, a.limit), indent=1))


if __name__ == "__main__":
    main()
