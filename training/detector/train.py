#!/usr/bin/env python3
"""Train the face detector (CenterNet-style, stride 4) on CPU or GPU.

    nice -n 19 python training/detector/train.py --cache training/cache/det --out training/runs/det [--epochs N] [--resume]

Per epoch: `--samples` freshly generated training images (scenes + composites, deterministic per seed/epoch),
then validation on the 330 HELEN-test scenes and 300 fixed composites. Logs to <out>/log.csv, checkpoints
<out>/last.pt (every epoch, resumable: model, EMA, optimizer, scheduler, epoch, RNG) and <out>/best.pt; whenever the
validation score (mean of scene AP50 and composite AP50) improves, the EMA weights are exported to --export
(models/detector.safetensors) and --fixture (tests/fixtures/detector_parity.safetensors), atomically.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages
from detector import data as D  # noqa: E402
from detector import model as M  # noqa: E402
from detector.model import Detector, decode  # noqa: E402
from detector import export as det_export  # noqa: E402
from common.trainer import fit, seed_everything  # noqa: E402


# ---------------------------------------------------------------- losses

def focal_loss(logit, gt, ign):
    """CenterNet penalty-reduced focal loss; logit/gt/ign (B,H,W); ign = 1 -> no negative penalty."""
    logp = F.logsigmoid(logit)
    log1mp = F.logsigmoid(-logit)
    p = torch.sigmoid(logit)
    pos = (gt >= 0.999).float()
    npos = pos.sum()
    pos_loss = -(logp * (1 - p) ** 2 * pos).sum()
    neg_loss = -(log1mp * p ** 2 * (1 - gt) ** 4 * (1 - pos) * (1 - ign)).sum()
    return (pos_loss + neg_loss) / npos.clamp(min=1.0)


def reg_losses(out, ind, msk, reg):
    B, C, H, W = out.shape
    pred = out[:, 1:].reshape(B, C - 1, H * W).gather(2, ind[:, None, :].expand(B, C - 1, ind.shape[1]))
    pred = pred.permute(0, 2, 1)  # B,MAX_OBJ,14
    m = msk[..., None]
    n = msk.sum().clamp(min=1.0)
    l1 = (pred - reg).abs() * m
    return l1[..., 0:2].sum() / n, l1[..., 2:4].sum() / n, l1[..., 4:14].sum() / n / 5


W_HM, W_OFF, W_SIZE, W_KPS = 1.0, 1.0, 1.0, 1.0


# ---------------------------------------------------------------- evaluation

def match_image(dets, gt_boxes, gt_conf, min_pred_h, iou_thr=0.5):
    """dets: list of (score, box) for one image, gt_boxes (G,4), gt_conf (G,) bool.
    -> list of (score, label) with label 1 = TP, 0 = FP (ignored predictions left out), and matched gt flags."""
    order = sorted(range(len(dets)), key=lambda k: -dets[k][0])
    matched = np.zeros(len(gt_boxes), bool)
    out = []
    for k in order:
        s, b = dets[k]
        best, bi = 0.0, -1
        ious = _ious(b, gt_boxes)
        for g in range(len(gt_boxes)):
            if gt_conf[g] and not matched[g] and ious[g] >= iou_thr and ious[g] > best:
                best, bi = ious[g], g
        if bi >= 0:
            matched[bi] = True
            out.append((s, 1, bi))
            continue
        if any((not gt_conf[g]) and ious[g] >= 0.3 for g in range(len(gt_boxes))):
            continue  # matches an unconfirmed face: ignore
        if any(gt_conf[g] and matched[g] and ious[g] >= iou_thr for g in range(len(gt_boxes))):
            out.append((s, 0, -1))  # duplicate of a matched face: FP
            continue
        if b[3] - b[1] < min_pred_h:
            continue  # small unlabelled faces are not labelled in the data: ignore
        out.append((s, 0, -1))
    return out


def _ious(b, gts):
    if len(gts) == 0:
        return np.zeros(0)
    ix = np.clip(np.minimum(b[2], gts[:, 2]) - np.maximum(b[0], gts[:, 0]), 0, None)
    iy = np.clip(np.minimum(b[3], gts[:, 3]) - np.maximum(b[1], gts[:, 1]), 0, None)
    inter = ix * iy
    ua = (b[2] - b[0]) * (b[3] - b[1]) + (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1]) - inter
    return inter / np.maximum(ua, 1e-9)


def ap_from(records, n_gt):
    if n_gt == 0:
        return 0.0
    recs = sorted(records, key=lambda r: -r[0])
    tp = np.cumsum([r[1] for r in recs])
    fp = np.cumsum([1 - r[1] for r in recs])
    rec = tp / n_gt
    prec = tp / np.maximum(tp + fp, 1e-9)
    mrec = np.concatenate([[0], rec, [rec[-1] if len(rec) else 0]])
    mpre = np.concatenate([[1], prec, [0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]).sum())


@torch.no_grad()
def evaluate(model, images_jpeg, faces, scales, min_pred_h, thr, batch=32, device="cpu", limit=None):
    """-> dict recall / precision at thr, AP50 (over detections >= 0.05), recall of annotated faces."""
    model.eval()
    n = len(images_jpeg) if limit is None else min(limit, len(images_jpeg))
    all_rec = []
    n_gt = 0
    ann_total = ann_hit = 0
    tp_thr = fp_thr = 0
    for a in range(0, n, batch):
        idx = list(range(a, min(n, a + batch)))
        u8 = np.stack([D.dec_jpeg(images_jpeg[i]) for i in idx])
        out = model(D.normalize(u8).to(device)).float().cpu()
        dets = decode(out, threshold=0.05)
        for k, i in enumerate(idx):
            s = scales[i]
            f = faces[i]
            d = [(float(sc), (bx / s).numpy()) for sc, bx in zip(dets[k]["scores"], dets[k]["boxes"])]
            recs = match_image(d, f["box"], f["confirmed"], min_pred_h)
            all_rec += [(r[0], r[1]) for r in recs]
            n_gt += int(f["confirmed"].sum())
            hit = set(r[2] for r in recs if r[1] == 1 and r[0] >= thr)
            tp_thr += len(hit)
            fp_thr += sum(1 for r in recs if r[1] == 0 and r[0] >= thr)
            for g in np.nonzero(f["annotated"])[0]:
                ann_total += 1
                ann_hit += int(g in hit)
    res = {"recall": tp_thr / max(n_gt, 1), "precision": tp_thr / max(tp_thr + fp_thr, 1),
           "ap50": ap_from(all_rec, n_gt), "n_gt": n_gt}
    if ann_total:
        res["recall_annotated"] = ann_hit / ann_total
    return res


def validate(model, cache, device, limit=None):
    thr = M.DEFAULT_SCORE_THRESHOLD
    sc = evaluate(model, cache.test_jpeg, cache.test_faces, cache.test_scale, 30.0, thr, device=device, limit=limit)
    vc = evaluate(model, cache.vc_jpeg, cache.vc_faces, np.ones(len(cache.vc_jpeg)), 12.0, thr, device=device,
                  limit=limit)
    m = {"scene_recall": sc["recall"], "scene_precision": sc["precision"], "scene_ap50": sc["ap50"],
         "helen_recall": sc.get("recall_annotated", 0.0), "comp_recall": vc["recall"],
         "comp_precision": vc["precision"], "comp_ap50": vc["ap50"]}
    m["score"] = 0.5 * (m["scene_ap50"] + m["comp_ap50"])
    return {k: round(float(v), 5) for k, v in m.items()}


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="training/cache/det")
    ap.add_argument("--out", default="training/runs/det")
    ap.add_argument("--epochs", type=int, default=60, help="total epochs (cosine LR schedule spans them)")
    ap.add_argument("--samples", type=int, default=4800, help="training images per epoch")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--wd", type=float, default=5e-5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--val-limit", type=int, default=None, help="validate on the first N images only (smoke)")
    ap.add_argument("--export", default="models/detector.safetensors", help="'' to skip")
    ap.add_argument("--fixture", default="tests/fixtures/detector_parity.safetensors", help="'' to skip")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    dev = torch.device(args.device)
    cache = D.DetCache(args.cache)
    model = Detector()
    print(f"params {M.count_params(model)}, MACs {M.count_macs(model.program) / 1e6:.2f} M", flush=True)

    def losses(model, x, t):
        out = model(x)
        l_hm = focal_loss(out[:, 0], t["hm"], t["ign"])
        l_off, l_size, l_kps = reg_losses(out, t["ind"], t["msk"], t["reg"])
        return W_HM * l_hm + W_OFF * l_off + W_SIZE * l_size + W_KPS * l_kps, (l_hm, l_off, l_size, l_kps)

    def export(ema_model, metrics, epoch):
        if args.export:
            em = Detector(model.config)
            em.load_state_dict(ema_model.state_dict())
            det_export.export(em, args.export, args.fixture or None, dict(metrics, epoch=epoch), args.cache,
                              {"epoch": epoch})
            print(f"exported {args.export}" + (f" + {args.fixture}" if args.fixture else ""), flush=True)

    fit(model, lambda epoch: D.TrainSet(cache, args.samples, args.seed, epoch), losses,
        lambda ema: validate(ema, cache, dev, args.val_limit), args, parts=("hm", "off", "size", "kps"),
        select=lambda m: m["score"], on_improve=export, log_every=50, warm_max=300, device=dev)

if __name__ == "__main__":
    main()
