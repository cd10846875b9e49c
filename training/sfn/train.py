#!/usr/bin/env python3
"""Train the single-face network (SFN).

Usage (from the repo root; see training/README.md):
    nice -n 19 python training/sfn/train.py --data training/cache --out training/runs/sfn [--epochs N] [--resume]

--data is the cache folder written by sfn/prepare.py (if it points at the raw shared data folder, i.e. a
folder with README.md + helen/, the cache is built first into training/cache).
Per epoch: every training face once (HELEN train 3x) + 20% confidence negatives, strong augmentation.
Writes to --out: metrics.jsonl + metrics.csv (one row per epoch), last.pt (resumable), best.pt (best
validation NME, EMA weights). Whenever the validation NME improves it also exports
models/sfn.safetensors and tests/fixtures/sfn_parity.safetensors (unless --no-export).
LR schedule: linear warm-up (1 epoch), then cosine cycles with warm restarts of 10, 20, 40, 80 ... epochs
(peak LR x0.7 per restart) so useful weights appear at the end of the first cycle and longer runs keep improving.
"""
import argparse
import csv
import json
import math
import os
import random
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages
from sfn.model import SFN, DEFAULT_CONFIG, rot6d_to_matrix, count_macs  # noqa: E402
from sfn import data as sfn_data  # noqa: E402
from common import worker_init  # noqa: E402
from common.trainer import fit  # noqa: E402
from sfn.data import FaceCache, SFNTrainSet, make_plan, make_val, normalize  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def lr_factor(step, steps_per_epoch, t0=10, tmult=2, warmup_epochs=1, restart_decay=0.7, floor=0.02,
              anneal_by=0, restart_at=0):
    """multiplier of the peak LR at a global optimizer step (pure function: resumable). anneal_by > 0 cuts
    the cycle that contains that epoch short so it ends there (a run that must stop early still anneals).
    restart_at > 0 (with anneal_by > restart_at) starts a new cycle at that epoch, ending at anneal_by: the
    way to continue a run whose last cycle was cut short by anneal_by, without re-annealing its tail."""
    e = step / steps_per_epoch
    if e < warmup_epochs:
        return max(e / warmup_epochs, 0.01)
    cycle_len, start, k = t0, 0.0, 0
    while e >= start + cycle_len:
        start += cycle_len
        cycle_len *= tmult
        k += 1
    if 0 < restart_at <= e and anneal_by > restart_at:
        k = 1 + lr_factor_cycle_index(restart_at - 1e-9, t0, tmult)
        start, cycle_len = restart_at, anneal_by - restart_at
        if e >= anneal_by:
            return floor
        p = (e - start) / cycle_len
        peak = restart_decay ** k
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * p))
    if start < anneal_by < start + cycle_len:
        cycle_len = anneal_by - start
        if e >= anneal_by:
            return floor
    p = (e - start) / cycle_len
    peak = restart_decay ** k
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * p))


def lr_factor_cycle_index(e, t0, tmult):
    """index of the natural cosine cycle (0, 1, 2 ...) that contains epoch e."""
    cycle_len, start, k = t0, 0.0, 0
    while e >= start + cycle_len:
        start += cycle_len
        cycle_len *= tmult
        k += 1
    return k


def wing(x, w=10.0, eps=2.0):
    """wing loss on |x| (x in % of the crop side)."""
    x = x.abs()
    C = w - w * math.log(1 + w / eps)
    return torch.where(x < w, w * torch.log(1 + x / eps), x - C)


def compute_loss(y, lmk, r6, blend, w, args):
    w_lmk, w_pose, w_blend, conf = w[:, 0], w[:, 1], w[:, 2], w[:, 3]
    p_lmk, p_pose, p_blend, p_conf = y[:, :136], y[:, 136:142], y[:, 142:193], y[:, 193]
    n_l = w_lmk.sum().clamp(min=1)
    l_lmk = (wing(100 * (p_lmk - lmk)).mean(1) * w_lmk).sum() / n_l
    R = rot6d_to_matrix(p_pose)
    r_gt = torch.stack([r6[:, 0:3], r6[:, 3:6]], 2)
    # L1 on the raw 6D (keeps it near the manifold) + L1 on the orthonormalised first two columns
    l_pose = (((p_pose - r6).abs().mean(1) + (R[:, :, :2] - r_gt).abs().mean((1, 2))) * w_pose).sum() \
        / w_pose.sum().clamp(min=1) * 100
    l_blend = ((torch.sigmoid(p_blend) - blend).abs().mean(1) * w_blend).sum() / w_blend.sum().clamp(min=1) * 20
    l_conf = F.binary_cross_entropy_with_logits(p_conf, conf)
    total = l_lmk + args.w_pose * l_pose + args.w_blend * l_blend + args.w_conf * l_conf
    return total, {"lmk": l_lmk.detach(), "pose": l_pose.detach(), "blend": l_blend.detach(), "conf": l_conf.detach()}


PARTS = ["lmk", "pose", "blend", "conf"]


@torch.no_grad()
def evaluate(model, val, bs=110):
    model.eval()
    ys, yn = [], []
    for s in range(0, len(val["img"]), bs):
        ys.append(model(normalize(val["img"][s:s + bs]).contiguous(memory_format=torch.channels_last)))
        yn.append(model(normalize(val["neg_img"][s:s + bs]).contiguous(memory_format=torch.channels_last)))
    y, yn = torch.cat(ys), torch.cat(yn)
    lmk = y[:, :136].reshape(-1, 68, 2)
    gt = val["lmk"]
    iod = (gt[:, 36] - gt[:, 45]).norm(dim=1)
    nme = (lmk - gt).norm(dim=2).mean(1) / iod * 100
    R = rot6d_to_matrix(y[:, 136:142])
    hp = val["has_pose"]
    rel = R[hp].transpose(1, 2) @ val["R"][hp]
    cosang = ((rel.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1)
    ang = torch.rad2deg(torch.acos(cosang))
    bmae = (torch.sigmoid(y[:, 142:193]) - val["blend"]).abs().mean()
    pp, pn = torch.sigmoid(y[:, 193]), torch.sigmoid(yn[:, 193])
    return {
        "nme": nme.mean().item(), "nme_median": nme.median().item(), "fail10": (nme > 10).float().mean().item() * 100,
        "pose_deg": ang.mean().item(), "pose_deg_median": ang.median().item(), "blend_mae": bmae.item(),
        "conf_pos_mean": pp.mean().item(), "conf_neg_mean": pn.mean().item(),
        "conf_acc": ((pp > 0.5).float().sum() + (pn < 0.5).float().sum()).item() / (len(pp) + len(pn)) * 100,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="training/cache", help="cache folder (sfn/prepare.py --out)")
    ap.add_argument("--out", default="training/runs/sfn")
    ap.add_argument("--epochs", type=int, default=150, help="total epochs (cycle ends: 10, 30, 70, 150, 310)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=5e-5)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--w-pose", type=float, default=0.5)
    ap.add_argument("--w-blend", type=float, default=1.0)
    ap.add_argument("--w-conf", type=float, default=1.0)
    ap.add_argument("--t0", type=int, default=10, help="first cosine cycle length (epochs)")
    ap.add_argument("--restart-at", type=int, default=0,
                    help="start a new cosine cycle at this epoch, ending at --anneal-by (continues a cut-short run)")
    ap.add_argument("--anneal-by", type=int, default=0,
                    help="end the cosine cycle that contains this epoch there (0 = full cycles)")
    ap.add_argument("--wide-rotation-prob", type=float, default=0.85,
                    help="share of faces rotated up to +-35 deg (the rest +-8 deg); lower for a final fine-tune")
    ap.add_argument("--occlusion-prob", type=float, default=0.35, help="share of faces given synthetic occluders")
    ap.add_argument("--small-face-prob", type=float, default=0.0,
                    help="share of faces shrunk to 14-100 px tall and enlarged back (faces far from the camera)")
    ap.add_argument("--init", default="", help="start from this checkpoint's EMA weights (a fine-tune; not --resume)")
    ap.add_argument("--subset", type=int, default=0, help="positives per epoch (0 = all); for smoke tests")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--export", default="models/sfn.safetensors", help="export target on improvement ('' = none)")
    ap.add_argument("--fixture", default="tests/fixtures/sfn_parity.safetensors")
    ap.add_argument("--no-export", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    data = args.data
    if os.path.exists(os.path.join(data, "README.md")) and os.path.isdir(os.path.join(data, "helen")):
        cache_dir = os.path.join(REPO, "training", "cache")
        if not os.path.exists(os.path.join(cache_dir, "faces.npz")):
            subprocess.check_call([sys.executable, os.path.join(REPO, "training", "sfn", "prepare.py"),
                                   "--data", data, "--out", cache_dir])
        data = cache_dir
    t0 = time.time()
    cache = FaceCache(data)
    val = make_val(cache)
    print(f"cache loaded in {time.time() - t0:.1f}s: {cache.n} faces, {len(cache.neg)} bg patches, "
          f"val {len(val['img'])}", flush=True)

    model = SFN(DEFAULT_CONFIG)
    tr = np.nonzero(cache.split != 1)[0]
    mean_lmk = np.stack([sfn_data.val_crop_lmk(cache.lmk[i]) for i in tr[::10]]).reshape(-1, 136).mean(0)
    model.init_output_bias(mean_lmk, cache.blend[tr].mean(0))
    model = model.to(memory_format=torch.channels_last)
    print(f"SFN params {sum(p.numel() for p in model.parameters())}, MACs {count_macs(model) / 1e6:.2f}M", flush=True)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0}],
                            lr=args.lr)
    plan0 = make_plan(cache, args.seed, 0, subset=args.subset)
    steps_per_epoch = len(plan0) // args.batch
    last_path = os.path.join(args.out, "last.pt")
    if args.resume and not os.path.exists(last_path):
        print("no checkpoint to resume from; starting fresh", flush=True)
    if args.init and not (args.resume and os.path.exists(last_path)):
        ck = torch.load(args.init, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["ema"])  # the EMA fit builds starts from these weights too
        print(f"initialised from {args.init} (epoch {ck.get('epoch')})", flush=True)

    def batches(epoch):
        plan = make_plan(cache, args.seed, epoch, subset=args.subset)
        ds = SFNTrainSet(cache, plan, args.seed, epoch, wide_rotation_prob=args.wide_rotation_prob,
                          occlusion_prob=args.occlusion_prob, small_face_prob=args.small_face_prob)
        g = torch.Generator()
        g.manual_seed(args.seed * 1000 + epoch)
        dl = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=False, drop_last=True,
                                         num_workers=args.workers, worker_init_fn=worker_init, generator=g,
                                         prefetch_factor=4 if args.workers else None)
        for img, lmk, r6, blend, w in dl:
            yield (normalize(img).contiguous(memory_format=torch.channels_last),
                   {"lmk": lmk, "r6": r6, "blend": blend, "w": w})

    def losses(net, x, t):
        loss, parts = compute_loss(net(x), t["lmk"], t["r6"], t["blend"], t["w"], args)
        return loss, [parts[k] for k in PARTS]

    def on_improve(ema_model, metrics, epoch):
        if args.no_export or not args.export:
            return False
        from sfn import export as export_sfn
        exp = SFN(model.config)
        exp.load_state_dict(ema_model.state_dict())
        export_sfn.export(exp, os.path.join(REPO, args.export) if not os.path.isabs(args.export) else args.export,
                          (os.path.join(REPO, args.fixture) if not os.path.isabs(args.fixture) else
                           args.fixture) if args.fixture else None,
                          {**metrics, "epoch": epoch}, data, {"epoch": epoch})
        return True

    fields = ["epoch", "lr", "train_loss", "train_lmk", "train_pose", "train_blend", "train_conf", "nme",
              "nme_median", "fail10", "pose_deg", "pose_deg_median", "blend_mae", "conf_pos_mean", "conf_neg_mean",
              "conf_acc", "best_nme", "samples", "epoch_s", "exported"]
    csv_path = os.path.join(args.out, "metrics.csv")
    if not os.path.exists(csv_path):
        with open(csv_path, "w", newline="") as f:
            csv.writer(f).writerow(fields)

    def log(info):
        """metrics.csv and metrics.jsonl, one row per epoch (the columns the SFN's logs have always had)."""
        row = {"epoch": info["epoch"], "lr": opt.param_groups[0]["lr"], "samples": info["samples"],
               **{"train_" + k: info[k] for k in PARTS}, "train_loss": info["loss"], **info["metrics"],
               "best_nme": -info["best"], "epoch_s": round(info["time_s"], 1), "exported": bool(info["exported"])}
        with open(os.path.join(args.out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(csv_path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in fields])
        print("EPOCH " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}),
              flush=True)

    # the selection score is -NME (fit keeps the highest); checkpoints also carry best_nme, the SFN's own key,
    # and the SFN's checkpoints from before fit (no step / best) resume from it
    best_nme = {"v": float("inf")}

    def save_extra():
        return {"best_nme": best_nme["v"]}

    def on_resume(ck):
        best_nme["v"] = ck["best_nme"]
        return -ck["best_nme"]

    def select(metrics):
        best_nme["v"] = min(best_nme["v"], metrics["nme"])
        return -metrics["nme"]

    fit(model, None, losses, lambda ema_model: evaluate(ema_model, val), args, parts=PARTS, select=select,
        on_improve=on_improve, log_every=50, optimizer=opt, device=torch.device("cpu"), batches=batches,
        steps_per_epoch=steps_per_epoch,
        lr_lambda=lambda s: lr_factor(s, steps_per_epoch, t0=args.t0, anneal_by=args.anneal_by,
                                      restart_at=args.restart_at),
        clip=5.0, ema_decay=args.ema, ema_own_count=True, metric_digits=None, log=log, save_extra=save_extra,
        on_resume=on_resume)

if __name__ == "__main__":
    main()
