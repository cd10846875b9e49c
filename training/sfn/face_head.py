"""The SFN's face confidence, retrained on the candidates the room detector proposes in real group photos.

In the SFN pipeline a detector candidate becomes a face only if the SFN's face confidence (output 193, sigmoid) is
at least 0.5. The SFN learnt that confidence from random non-face and misaligned crops; the detector's false alarms
in crowds (hands, patterns, parts of faces, background heads) are harder, and real small faces were often
rejected. This retrains the SFN's two fully connected layers (`fc1`, `out`) on the frozen convolutional features:
the face confidence with a class-balanced cross-entropy, every other output (landmarks, pose, blendshapes) held to
what the shipped SFN gives (squared difference, weight `--keep`) on the same crops and on the HELEN training faces.

Data: `polyface eval --candidates FILE --split train` on `groups.jsonl`, with the detector file's score threshold
at 0.1 (`--models DIR` holding such a copy) so that the candidates include what the app's threshold would drop:
hits are positives; false positives on exhaustively labelled photos are negatives; candidates on ignore regions
and on photos not labelled exhaustively are left out. Each hit also gives a misaligned negative (its crop moved
by 0.6-0.9 of its side, IoU < 0.3), so that a followed face whose crop drifts off it is still dropped. The test
split's candidates are only reported.

    python training/sfn/face_head.py --out models/sfn.safetensors   # also tests/fixtures/sfn_parity.safetensors
"""
import argparse
import copy
import json
import os
import sys

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sfn import data as D  # noqa: E402
from sfn import export as E  # noqa: E402
from sfn.model import SFN  # noqa: E402

FACE = 193


def read_candidates(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def rgb(path):
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"{path}: cannot read")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def candidate_crops(candidates, rng):
    """uint8 crops [N,112,112,3], face labels [N], misaligned flags [N]: the judged candidates, and after each hit
    its crop moved off the face."""
    by_image = {}
    for c in candidates:
        if c["outcome"] in ("hit", "false_positive"):
            by_image.setdefault(c["image"], []).append(c)
    crops, labels, moved = [], [], []
    for image, cands in sorted(by_image.items()):
        img = rgb(image)
        for c in cands:
            cx, cy, side = c["crop"]
            hit = c["outcome"] == "hit"
            crops.append(D.warp(img, D.crop_affine(np.array([cx, cy]), side)))
            labels.append(1.0 if hit else 0.0)
            moved.append(False)
            if hit:
                angle = rng.uniform(0, 2 * np.pi)
                d = np.array([np.cos(angle), np.sin(angle)])
                d = d / np.abs(d).max()  # along the dominant axis the shift alone keeps the IoU under 0.3
                shifted = np.array([cx, cy]) + rng.uniform(0.6, 0.9) * side * d
                crops.append(D.warp(img, D.crop_affine(shifted, side)))
                labels.append(0.0)
                moved.append(True)
    return np.stack(crops), np.array(labels, np.float32), np.array(moved)


def helen_crops(path):
    """the HELEN training faces as the SFN sees them (tight-box crops): outputs to keep."""
    root = os.path.dirname(path)
    crops = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            crops.append(D.val_crop(rgb(os.path.join(root, r["image"])), np.array(r["landmarks68"]))[0])
    return np.stack(crops)


def pooled(model, crops, batch=256):
    """the frozen convolutional features (the input of fc1) of uint8 crops."""
    got = []
    hook = model.fc1.register_forward_hook(lambda m, i, o: got.append(i[0].detach()))
    with torch.no_grad():
        for s in range(0, len(crops), batch):
            x = torch.from_numpy(np.ascontiguousarray(crops[s:s + batch])).permute(0, 3, 1, 2)
            model(D.normalize(x))
    hook.remove()
    return torch.cat(got)


def head(fc1, out, x):
    return out(torch.relu(fc1(x)))


def roc_area(p, labels):
    order = np.argsort(-p)
    lab = labels[order]
    tp, fp = np.cumsum(lab), np.cumsum(1 - lab)
    return float(np.trapezoid(tp / tp[-1], fp / fp[-1]))


def report(fc1, out, x, labels, moved, reference):
    """face confidence on the candidates (ROC area of hits against the detector's false alarms, shares kept at 0.5)
    and how far the other outputs moved on the hits (landmark RMS in crop units, blendshape MAE)."""
    with torch.no_grad():
        y = head(fc1, out, x)
    p = torch.sigmoid(y[:, FACE]).numpy()
    lab, mov = labels.numpy(), moved.numpy()
    hits = lab > 0.5
    alarms = (lab < 0.5) & ~mov
    pos = torch.from_numpy(hits)
    return {
        "roc_area_hits_vs_false_alarms": round(roc_area(p[~mov], lab[~mov]), 4),
        "hits_kept": round(float((p[hits] >= 0.5).mean()), 4),
        "false_alarms_kept": round(float((p[alarms] >= 0.5).mean()), 4),
        "moved_crops_kept": round(float((p[mov] >= 0.5).mean()), 4),
        "landmark_rms_change": round(float((y[pos, :136] - reference[pos, :136]).pow(2).mean().sqrt()), 5),
        "blendshape_mae_change": round(float((torch.sigmoid(y[pos, 142:193]) -
                                              torch.sigmoid(reference[pos, 142:193])).abs().mean()), 5),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="models/checkpoints/sfn_last.pt", help="the shipped SFN")
    ap.add_argument("--train", default="training/cache/face_head/groups_train.jsonl")
    ap.add_argument("--test", default="training/cache/face_head/groups_test.jsonl")
    ap.add_argument("--helen", default="../shared/data/helen/train.jsonl")
    ap.add_argument("--keep", type=float, default=300.0, help="weight of holding the other outputs")
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--save", default="models/checkpoints/sfn_face_head.pt", help="the retrained layers")
    ap.add_argument("--out", default="models/sfn.safetensors")
    ap.add_argument("--fixture", default="tests/fixtures/sfn_parity.safetensors")
    ap.add_argument("--cache", default="training/cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    ck = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    model = SFN(ck["config"])
    model.load_state_dict(ck["ema"] if "ema" in ck else ck["model"])
    model.eval()

    crops, labels, moved = candidate_crops(read_candidates(args.train), rng)
    x = pooled(model, crops)
    labels, moved = torch.from_numpy(labels), torch.from_numpy(moved)
    test_crops, test_labels, test_moved = candidate_crops(read_candidates(args.test), rng)
    tx = pooled(model, test_crops)
    test_labels, test_moved = torch.from_numpy(test_labels), torch.from_numpy(test_moved)
    hx = pooled(model, helen_crops(args.helen))
    print(f"train {len(x)} crops ({int(labels.sum())} hits), test {len(tx)}, HELEN train {len(hx)}", flush=True)
    with torch.no_grad():
        reference = head(model.fc1, model.out, x)
        test_reference = head(model.fc1, model.out, tx)
        helen_reference = head(model.fc1, model.out, hx)

    fc1, out = copy.deepcopy(model.fc1), copy.deepcopy(model.out)
    before = {"train": report(fc1, out, x, labels, moved, reference),
              "test": report(fc1, out, tx, test_labels, test_moved, test_reference)}
    opt = torch.optim.Adam(list(fc1.parameters()) + list(out.parameters()), lr=args.lr)
    balance = torch.where(labels > 0.5, 0.5 / labels.sum(), 0.5 / (1 - labels).sum()) * len(labels)
    keep_x = torch.cat([x, hx])
    keep_ref = torch.cat([reference, helen_reference])
    for step in range(args.steps):
        i = torch.randint(0, len(x), (args.batch,))
        j = torch.randint(0, len(keep_x), (args.batch,))
        face = head(fc1, out, x[i])[:, FACE]
        bce = (balance[i] * torch.nn.functional.binary_cross_entropy_with_logits(face, labels[i],
                                                                                  reduction="none")).mean()
        keep = (head(fc1, out, keep_x[j])[:, :FACE] - keep_ref[j, :FACE]).pow(2).mean()
        loss = bce + args.keep * keep
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 1000 == 0:
            print(f"step {step + 1} face {bce.item():.4f} keep {keep.item():.6f}", flush=True)
    after = {"train": report(fc1, out, x, labels, moved, reference),
             "test": report(fc1, out, tx, test_labels, test_moved, test_reference)}
    with torch.no_grad():
        helen_change = (head(fc1, out, hx)[:, :136] - helen_reference[:, :136]).pow(2).mean().sqrt().item()
    metrics = {"before": before, "after": after, "helen_train_landmark_rms_change": round(helen_change, 5),
               "keep": args.keep, "steps": args.steps, "lr": args.lr, "seed": args.seed}
    print(json.dumps(metrics, indent=1), flush=True)

    model.fc1.load_state_dict(fc1.state_dict())
    model.out.load_state_dict(out.state_dict())
    if args.save:
        torch.save({"fc1": fc1.state_dict(), "out": out.state_dict(), "metrics": metrics, "ckpt": args.ckpt},
                   args.save)
    md = E.export(model, args.out, args.fixture or None, ck.get("metrics"), args.cache,
                  {"epoch": ck.get("epoch", "?"),
                   "face_confidence": "training/sfn/face_head.py: fc1 and out retrained on the room detector's "
                                      "candidates in the groups train split " + json.dumps(metrics)})
    print("exported", args.out, md["exported_at"])


if __name__ == "__main__":
    main()
