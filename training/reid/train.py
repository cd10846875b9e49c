#!/usr/bin/env python3
"""Train the face re-identification embedding (ArcFace / additive angular margin) on CPU.

    nice -n 19 python3 training/reid/train.py --cache training/cache/reid --out training/runs/reid --epochs 60
    nice -n 19 python3 training/reid/train.py ... --resume            # continue from <out>/last.pt
    nice -n 19 python3 training/reid/train.py --export-only training/runs/reid/best.pt   # re-export a checkpoint

Data: training/cache/reid/faces.npz from reid/prepare.py (64x64 aligned gray faces; identity split 85/15).
Classes = training identities with >= --min-images (reid/prepare.py) images. Per epoch every training image once (shuffled, seeded by
(seed, epoch)), with augmentation; then LFW-style verification on the held-out identities: fixed pairs (seeded,
up to 3000 same + as many different), cosine similarity of L2-normalised embeddings (flip-averaged: embedding =
L2norm(f(x) + f(hflip(x)))), 10-fold accuracy (threshold chosen on 9 folds, tested on the 10th), mean +- std.
Logs <out>/log.csv; checkpoints <out>/last.pt (every epoch; model, ArcFace head, optimizer, scheduler, epoch, RNG)
and <out>/best.pt; whenever the mean verification accuracy improves, the BN-folded network is exported to
--export (models/reid.safetensors) and --fixture (tests/fixtures/reid_parity.safetensors), atomically.
"""
import argparse
import csv
import datetime
import json
import math
import os
import random
import sys

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages
from reid import model as RM  # noqa: E402
from reid.model import ReidNet  # noqa: E402
from detector.model import folded_tensors, folded_forward, count_macs, count_params  # noqa: E402
from reid import prepare as RP  # noqa: E402
from common.trainer import fit  # noqa: E402

PAIR_SEED = 1234
N_PAIRS = 3000
NORMALIZATION = "grayscale, NCHW float32 [N,1,S,S] (S = input_size), x = (u8/255 - 0.5)/0.5 (i.e. [-1,1]) of the aligned face"


# ---------------------------------------------------------------- data

class Data:
    def __init__(self, cache, subset_ids=0):
        d = np.load(os.path.join(cache, "faces.npz"))
        RP.set_size(int(d["size"]) if "size" in d else 64)
        self.size = RP.OUT_SIZE
        self.faces, self.valid, self.lm68 = d["faces"], d["valid"], d["lm68"]
        ident, split = d["identity"], d["split"]
        self.names, self.files = d["names"], d["files"]
        self.min_images = int(d["min_images"]) if "min_images" in d else 2
        tr = np.nonzero(split == 0)[0]
        ids = np.unique(ident[tr])
        if subset_ids:
            ids = ids[:subset_ids]
            tr = tr[np.isin(ident[tr], ids)]
        remap = {int(v): i for i, v in enumerate(ids)}
        self.train_idx = tr
        self.train_label = np.array([remap[int(v)] for v in ident[tr]], np.int64)
        self.n_classes = len(ids)
        self.held_idx = np.nonzero(split == 1)[0]
        self.held_ident = ident[self.held_idx]
        self.pairs = make_pairs(self.held_ident, PAIR_SEED, N_PAIRS)


def make_pairs(ident, seed, n):
    """-> int array [P,3] (i, j, same) of indices into the held-out list: up to n same pairs (identity drawn
    uniformly among identities with >= 2 images, then a random unused pair of it) and as many different pairs
    (two random images of different identities, incl. singletons), shuffled."""
    rng = np.random.default_rng(seed)
    by_id = {}
    for k, v in enumerate(ident.tolist()):
        by_id.setdefault(v, []).append(k)
    multi = sorted(v for v, ks in by_id.items() if len(ks) >= 2)
    avail = {v: [(a, b) for ai, a in enumerate(by_id[v]) for b in by_id[v][ai + 1:]] for v in multi}
    for v in multi:
        rng.shuffle(avail[v])
    same = []
    total = sum(len(p) for p in avail.values())
    while len(same) < min(n, total):
        v = multi[rng.integers(len(multi))]
        if avail[v]:
            same.append(avail[v].pop())
    diff, seen = [], set()
    N = len(ident)
    while len(diff) < len(same):
        a, b = rng.integers(N), rng.integers(N)
        if ident[a] == ident[b]:
            continue
        key = (min(a, b), max(a, b))
        if key in seen:
            continue
        seen.add(key)
        diff.append(key)
    P = np.array([(a, b, 1) for a, b in same] + [(a, b, 0) for a, b in diff], np.int64)
    return P[rng.permutation(len(P))]


AUG = {  # probabilities / ranges of the training augmentation (--aug-scale scales all probabilities)
    "p_bg": 0.4,        # replace the crops' black padding by a random background
    "p_flip": 0.5,
    "p_geo": 0.7,       # similarity jitter: rotation +-10 deg, scale x0.9..1.1, shift +-2.5 px
    "p_lowres": 0.15,   # down to 24..47 px (INTER_AREA) and back up (INTER_LINEAR)
    "p_blur": 0.15,     # Gaussian, sigma 0.4..1.3
    "p_photo": 0.8,     # brightness +-40, contrast x0.6..1.4
    "p_gamma": 0.3,     # gamma 0.6..1.6
    "p_noise": 0.2,     # Gaussian noise, sigma 1..8 grey levels
}


def augment(img, valid, rng, scale=1.0):
    """uint8 [S,S] aligned face + validity mask -> float32 [S,S] in [0,255]. Pixel ranges are given for 64 px
    and scale with S."""
    S = RP.OUT_SIZE
    k = S / 64.0
    p = {k: min(1.0, v * scale) for k, v in AUG.items()}
    p["p_flip"] = AUG["p_flip"]
    x = img.astype(np.float32)
    if valid.min() == 0 and rng.random() < p["p_bg"]:
        level = rng.uniform(0, 255)
        bg = rng.normal(0, rng.uniform(0, 40), (S // 4, S // 4)).astype(np.float32)
        bg = cv2.resize(bg, (S, S), interpolation=cv2.INTER_LINEAR) + level
        if rng.random() < 0.5:  # linear gradient
            g = np.linspace(-1, 1, S, dtype=np.float32) * rng.uniform(-60, 60)
            bg = bg + (g[None, :] if rng.random() < 0.5 else g[:, None])
        m = cv2.GaussianBlur(valid.astype(np.float32), (3, 3), 0.8)
        x = np.clip(x * m + bg * (1 - m), 0, 255)
    if rng.random() < p["p_flip"]:
        x = x[:, ::-1]
    if rng.random() < p["p_geo"]:  # small similarity jitter about the centre (alignment noise)
        ang = rng.uniform(-10, 10)
        sc = math.exp(rng.uniform(math.log(0.9), math.log(1.1)))
        M = cv2.getRotationMatrix2D((S / 2 - 0.5, S / 2 - 0.5), ang, sc)
        M[:, 2] += rng.uniform(-2.5, 2.5, 2) * k
        x = cv2.warpAffine(np.ascontiguousarray(x), M, (S, S), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    r = rng.random()
    if r < p["p_lowres"]:
        s = int(rng.integers(round(24 * k), round(48 * k)))
        x = cv2.resize(cv2.resize(np.ascontiguousarray(x), (s, s), interpolation=cv2.INTER_AREA), (S, S),
                       interpolation=cv2.INTER_LINEAR)
    elif r < p["p_lowres"] + p["p_blur"]:
        x = cv2.GaussianBlur(np.ascontiguousarray(x), (0, 0), rng.uniform(0.4, 1.3))
    if rng.random() < p["p_photo"]:
        mean = x.mean()
        x = np.clip((x - mean) * rng.uniform(0.6, 1.4) + mean + rng.uniform(-40, 40), 0, 255)
    if rng.random() < p["p_gamma"]:
        x = 255.0 * (x / 255.0) ** rng.uniform(0.6, 1.6)
    if rng.random() < p["p_noise"]:
        x = x + rng.normal(0, rng.uniform(1, 8), x.shape).astype(np.float32)
    return np.clip(x, 0, 255)


def to_input(u8_or_f32):
    """[N,S,S] 0..255 -> [N,1,S,S] float tensor, (x/255 - 0.5)/0.5."""
    x = torch.from_numpy(np.ascontiguousarray(u8_or_f32, dtype=np.float32))[:, None]
    return (x / 255.0 - 0.5) / 0.5


# ---------------------------------------------------------------- ArcFace

class ArcFace(nn.Module):
    """cos(theta + m) for the target class, scaled by s (Deng et al. 2019), with the usual fallback
    cos(theta) - m sin(m) when theta + m > pi."""

    def __init__(self, dim, n_classes, s=32.0, m=0.4):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        # rows of norm ~1.1: with Adam (per-element steps ~lr) a much smaller norm makes the class centres rotate
        # by a large angle every step, a much larger one freezes them
        nn.init.normal_(self.weight, std=0.1)
        self.s, self.m = s, m

    def forward(self, emb, label, m=None):
        m = self.m if m is None else m
        cos = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        tgt = cos.gather(1, label[:, None])
        sin = torch.sqrt(1 - tgt * tgt)
        phi = tgt * math.cos(m) - sin * math.sin(m)
        phi = torch.where(tgt > math.cos(math.pi - m), phi, tgt - math.sin(math.pi - m) * m)
        logits = cos.scatter(1, label[:, None], phi) * self.s
        return F.cross_entropy(logits, label), cos


# ---------------------------------------------------------------- verification

@torch.no_grad()
def embed(model, faces_u8, flip=True, bs=256):
    model.eval()
    out = []
    for i in range(0, len(faces_u8), bs):
        x = to_input(faces_u8[i:i + bs])
        e = model(x).flatten(1)
        if flip:
            e = e + model(torch.flip(x, dims=[3])).flatten(1)
        out.append(F.normalize(e, dim=1))
    return torch.cat(out)


def best_threshold(sim, same):
    """threshold maximising accuracy of (sim > thr) == same; candidates = midpoints of sorted scores."""
    o = np.argsort(sim)
    s, y = sim[o], same[o].astype(np.int64)
    n = len(s)
    # predicting 'same' for indices >= k: correct = (#diff below k) + (#same at/after k)
    diff_below = np.concatenate([[0], np.cumsum(1 - y)])
    same_after = np.concatenate([np.cumsum(y[::-1])[::-1], [0]])
    acc = (diff_below + same_after) / n
    k = int(np.argmax(acc))
    if k == 0:
        thr = s[0] - 1e-6
    elif k == n:
        thr = s[-1] + 1e-6
    else:
        thr = 0.5 * (s[k - 1] + s[k])
    return float(thr), float(acc[k])


def verify(model, data, flip=True, folds=10):
    E = embed(model, data.faces[data.held_idx], flip)
    P = data.pairs
    sim = (E[P[:, 0]] * E[P[:, 1]]).sum(1).numpy().astype(np.float64)
    same = P[:, 2].astype(bool)
    idx = np.arange(len(P))
    accs = []
    for f in range(folds):
        te = idx % folds == f
        thr, _ = best_threshold(sim[~te], same[~te])
        accs.append(float(((sim[te] > thr) == same[te]).mean()))
    thr_all, acc_all = best_threshold(sim, same)
    # TAR at FAR = 1e-2 / 1e-3 (info)
    neg = np.sort(sim[~same])[::-1]
    tar, thr_far = {}, {}
    for far in (1e-2, 1e-3):
        t = neg[max(int(far * len(neg)) - 1, 0)]
        tar[far] = float((sim[same] > t).mean())
        thr_far[far] = float(t)
    return {"acc": float(np.mean(accs)), "std": float(np.std(accs)), "thr": thr_all, "acc_all": acc_all,
            "tar1e-2": tar[1e-2], "tar1e-3": tar[1e-3], "thr_far1e-2": thr_far[1e-2],
            "n_same": int(same.sum()), "n_diff": int((~same).sum()),
            "same_mean": float(sim[same].mean()), "diff_mean": float(sim[~same].mean())}


# ---------------------------------------------------------------- export

from common import atomic_save_safetensors as _atomic_save, git_commit  # noqa: E402


def alignment_fixture(data):
    """synthetic source image + real landmark geometry -> tensors checking the Rust alignment."""
    H, W = 150, 200
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = 128 + 60 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + 40 * np.sin((xx + 2 * yy) / 3.1) + 0.3 * (xx - yy)
    src = np.clip(np.round(img), 0, 255).astype(np.uint8)
    # landmark geometry of a real face, rotated 17 deg, scaled 0.55 and moved into the synthetic frame
    lm = data.lm68[data.held_idx[0]].astype(np.float64)
    a = math.radians(17)
    R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * 0.55
    lm2 = (lm - 128) @ R.T + np.array([W * 0.55, H * 0.5])
    lm2 = lm2.astype(np.float32)
    M = RP.alignment_matrix(lm2.astype(np.float64))
    out, _ = RP.align(src, lm2.astype(np.float64))
    return {"align_src_u8": torch.from_numpy(src), "align_landmarks68": torch.from_numpy(lm2),
            "align_matrix": torch.from_numpy(M.astype(np.float64)), "align_out_u8": torch.from_numpy(out)}


def build_metadata(model, metrics, data, extra=None):
    md = {
        "format": "polyface-reid",
        "format_version": "1",
        "input_size": json.dumps([1, 1, RP.OUT_SIZE, RP.OUT_SIZE]),
        "input_layout": "NCHW, 1 channel (grayscale)",
        "normalization": NORMALIZATION,
        "alignment": RP.ALIGNMENT_TEXT,
        "alignment_template": json.dumps(RP.TEMPLATE.tolist()),
        "alignment_template_convention": f"{RP.OUT_SIZE}x{RP.OUT_SIZE} output, OpenCV pixel-index coordinates (pixel centres at integers); "
                                         "the 64 px template scaled: t = (t64 + 0.5) * S / 64 - 0.5",
        "embedding_dim": str(model.config["embedding_dim"]),
        "output_shape": json.dumps([1, model.config["embedding_dim"], 1, 1]),
        "embedding_postprocess": "the network output [N,D,1,1] is a raw (unnormalised) embedding; the consumer "
                                 "L2-normalises it. With flip_average=true: e = L2norm(f(x) + f(hflip(x))) where "
                                 "hflip mirrors the aligned SxS input left-right (column j <-> S-1-j); compare "
                                 "faces by cosine similarity (dot product of normalised embeddings): same person "
                                 "if cos > threshold.",
        "flip_average": "true",
        "similarity": "cosine",
        "verification_accuracy": f"{metrics['acc']:.4f}",
        "verification_std": f"{metrics['std']:.4f}",
        "threshold": f"{metrics['thr']:.4f}",
        # re-identification merges two tracks only above this: a false merge (two people sharing an ID and
        # an avatar) is worse than a returning person getting a new ID
        "match_threshold": f"{metrics.get('thr_far1e-2', metrics['thr']):.4f}",
        "match_threshold_note": "cosine at a false-accept rate of 1e-2 on the held-out pairs",
        "verification_metrics": json.dumps(metrics),
        "verification_protocol": "held-out identities (15% of LFW-style names, never trained on), fixed seeded "
                                 "pairs (up to 3000 same + equal number different), flip-averaged cosine, 10-fold "
                                 "accuracy (threshold chosen on 9 folds, tested on the 10th), mean +- std; "
                                 "threshold = best over all pairs",
        "activation": "relu",
        "batchnorm": "folded into the preceding conv (weight, bias); every conv has a bias",
        "architecture": json.dumps(model.config),
        "layers": json.dumps(model.program),
        "layers_note": "evaluate `layers` in order; tensor 'input' is the normalised image; each layer writes the "
                       "tensor named by its 'name'; conv ops read 'input' (a tensor name), use "
                       "'<name>.weight' [out, in/groups, k, k] and '<name>.bias' [out], zero padding 'pad'; "
                       "'add' sums its two inputs; 'gap' = mean over H and W -> [N,C,1,1]; 'act' relu is applied "
                       "after the op; the network output is the last layer (emb)",
        "params": str(count_params(model)),
        "macs": str(count_macs(model.program)),
        "loss": "ArcFace (additive angular margin)",
        "training_data": "wild.jsonl of the shared face data (mostly LFW face crops, grayscale), identities with "
                         f">= {data.min_images} images of the 85% training identity split; research-use data",
        "git_commit": git_commit(),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        md.update({k: str(v) for k, v in extra.items()})
    return md


def export(model, out_path, fixture_path, metrics, data, extra=None):
    model = model.eval()
    tensors = folded_tensors(model)
    md = build_metadata(model, metrics, data, extra)
    _atomic_save(tensors, out_path, md)
    if fixture_path:
        # 4 held-out faces: the first two pairs of 'same' identity in the pair list, first elements
        P = data.pairs
        sp = P[P[:, 2] == 1][:2]
        sel = [int(sp[0, 0]), int(sp[0, 1]), int(sp[1, 0]), int(P[P[:, 2] == 0][0, 0])]
        u8 = data.faces[data.held_idx[sel]]
        inp = torch.from_numpy(np.ascontiguousarray(u8))[:, None].contiguous()  # K,1,S,S
        x = (inp.float() / 255.0 - 0.5) / 0.5
        with torch.no_grad():
            y = folded_forward(tensors, model.program, x)
            yf = folded_forward(tensors, model.program, torch.flip(x, dims=[3]))
            y_ref = model(x)
        err = (y - y_ref).abs().max().item()
        assert err < 1e-3, f"folded/unfolded mismatch {err}"
        e = F.normalize((y + yf).flatten(1), dim=1)
        fix = {"input_u8": inp, "output": y.contiguous(), "output_flip": yf.contiguous(),
               "embedding": e.contiguous(), "cosine": (e @ e.T).contiguous()}
        fix.update(alignment_fixture(data))
        _atomic_save(fix, fixture_path, {
            "description": "Re-id parity fixture: input_u8 [K,1,S,S] aligned gray faces (uint8); network input "
                           "= (input_u8/255-0.5)/0.5 as float32; output = raw [K,D,1,1] of the folded weights in "
                           "the reid.safetensors exported together with this file; output_flip = raw output for "
                           "the left-right mirrored input; embedding [K,D] = L2norm(output + output_flip); cosine "
                           "[K,K] = embedding @ embedding^T (faces 0,1 are the same person). Tolerance 1e-3 abs. "
                           "Alignment check: align_src_u8 [H,W] synthetic gray frame, align_landmarks68 [68,2] "
                           "(continuous pixel convention, float32), align_matrix [2,3] float64 (the similarity, "
                           "pixel-index coordinates), align_out_u8 [S,S] = cv2.warpAffine INTER_LINEAR "
                           "BORDER_REPLICATE (tolerance: matrix 1e-6, pixels +-1 grey level).",
            "input_files": json.dumps([str(data.files[data.held_idx[i]]) for i in sel]),
            "model_exported_at": md["exported_at"], "folded_vs_bn_max_abs_diff": f"{err:.3e}"})
    return md


# ---------------------------------------------------------------- training

def margin_at(epoch, m, start, warmup):
    """0 for the first `start` epochs (normalised softmax, lets the features form), then linear up to m."""
    if epoch < start:
        return 0.0
    return min(m, m * (epoch - start + 1) / max(1, warmup))


def param_groups(model, head, wd):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    # no decay on BN / biases, nor on the ArcFace centres (only their direction matters; shrinking them would
    # raise their effective learning rate)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay + [head.weight], "weight_decay": 0.0}]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="training/cache/reid")
    ap.add_argument("--out", default="training/runs/reid")
    ap.add_argument("--export", default="models/reid.safetensors")
    ap.add_argument("--fixture", default="tests/fixtures/reid_parity.safetensors", help="'' to skip")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--wd", type=float, default=5e-2)
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up epochs (linear), then cosine to 0")
    ap.add_argument("--s", type=float, default=32.0, help="ArcFace scale")
    ap.add_argument("--m", type=float, default=0.35, help="ArcFace margin (radians)")
    ap.add_argument("--m-start", type=int, default=6, help="epochs of plain normalised softmax (margin 0) first")
    ap.add_argument("--m-warmup", type=int, default=10, help="then epochs to ramp the margin linearly up to --m")
    ap.add_argument("--aug-scale", type=float, default=0.7, help="multiplies the augmentation probabilities (AUG)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--subset-ids", type=int, default=0, help="smoke test: only the first N training identities")
    ap.add_argument("--max-steps", type=int, default=0, help="smoke test: steps per epoch cap")
    ap.add_argument("--verify-every", type=int, default=1, help="verify every N epochs ...")
    ap.add_argument("--verify-last", type=int, default=10, help="... and every one of the last N epochs")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--export-only", default="", help="export this checkpoint and exit")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    data = Data(args.cache, args.subset_ids)
    config = dict(RM.DEFAULT_CONFIG, input_size=[data.size, data.size])
    model = ReidNet(config)
    if args.export_only:
        ck = torch.load(args.export_only, map_location="cpu", weights_only=False)
        model = ReidNet(ck["config"])
        model.load_state_dict(ck["model"])
        met = verify(model, data)
        md = export(model, args.export, args.fixture or None, met, data, {"epoch": ck["epoch"]})
        print(json.dumps({k: md[k] for k in ("verification_accuracy", "verification_std", "threshold", "params",
                                             "macs", "exported_at")}))
        return

    head = ArcFace(model.config["embedding_dim"], data.n_classes, args.s, args.m)
    opt = torch.optim.AdamW(param_groups(model, head, args.wd), lr=args.lr, betas=(0.9, 0.999))
    steps_per_epoch = math.ceil(len(data.train_idx) / args.batch)
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    total = steps_per_epoch * args.epochs
    warm = max(1, int(args.warmup * steps_per_epoch))

    def lr_lambda(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    os.makedirs(args.out, exist_ok=True)
    last = os.path.join(args.out, "last.pt")
    fresh = not (args.resume and os.path.exists(last))

    print(f"train images {len(data.train_idx)}, classes {data.n_classes}, held-out images {len(data.held_idx)}, "
          f"pairs {len(data.pairs)} ({int(data.pairs[:, 2].sum())} same); MACs {count_macs(model.program) / 1e6:.2f} M, "
          f"params {count_params(model)}; {steps_per_epoch} steps/epoch x {args.epochs} epochs", flush=True)
    log_path = os.path.join(args.out, "log.csv")
    fields = ["epoch", "lr", "margin", "loss", "train_acc", "ver_acc", "ver_std", "thr", "acc_all", "tar1e-2",
              "tar1e-3", "same_mean", "diff_mean", "epoch_s", "exported", "time"]
    if not os.path.exists(log_path) or fresh:
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(fields)

    now = {"epoch": 0, "margin": 0.0}

    def on_epoch_start(epoch):
        now["epoch"], now["margin"] = epoch, margin_at(epoch, args.m, args.m_start, args.m_warmup)

    def batches(epoch):
        rng = np.random.default_rng([args.seed, epoch])
        order = rng.permutation(len(data.train_idx))
        for step in range(steps_per_epoch):
            b = order[step * args.batch:(step + 1) * args.batch]
            if len(b) < 2:
                continue
            gi = data.train_idx[b]
            imgs = np.stack([augment(data.faces[i], data.valid[i], rng, args.aug_scale) for i in gi])
            yield to_input(imgs), {"y": torch.from_numpy(data.train_label[b])}

    def losses(net, x, t):
        emb = net(x).flatten(1)
        loss, cos = head(emb, t["y"], now["margin"])
        if not math.isfinite(loss.item()):
            raise SystemExit("loss is not finite")
        return loss, [(cos.argmax(1) == t["y"]).float().mean().detach()]

    def validate(net):
        # verification costs ~a fifth of an epoch: skip it early on with --verify-every (the best net is
        # near the end of the cosine schedule anyway)
        if (now["epoch"] + 1) % args.verify_every and now["epoch"] < args.epochs - args.verify_last:
            return {k: float("nan") for k in ("acc", "std", "thr", "acc_all", "tar1e-2", "tar1e-3", "same_mean",
                                              "diff_mean")}
        return verify(net, data)

    def on_improve(net, met, epoch):
        if args.no_export:
            return False
        export(net, args.export, args.fixture or None, met, data,
               {"epoch": epoch, "arcface": json.dumps({"s": args.s, "m": args.m}),
                "training_args": json.dumps(vars(args))})
        return True

    def log(info):
        met = info["metrics"]
        row = [info["epoch"], f"{info['lr']:.6g}", f"{now['margin']:.3f}", f"{info['loss']:.4f}",
               f"{info['train_acc']:.4f}", f"{met['acc']:.4f}", f"{met['std']:.4f}", f"{met['thr']:.4f}",
               f"{met['acc_all']:.4f}", f"{met['tar1e-2']:.4f}", f"{met['tar1e-3']:.4f}", f"{met['same_mean']:.4f}",
               f"{met['diff_mean']:.4f}", f"{info['time_s']:.1f}", int(bool(info["exported"])),
               datetime.datetime.now().isoformat(timespec="seconds")]
        with open(log_path, "a", newline="") as f:
            csv.writer(f).writerow(row)
        print(" ".join(f"{k}={v}" for k, v in zip(fields, row)), flush=True)

    def on_resume(ck):
        head.load_state_dict(ck["head"])  # best: the checkpoint's own `best`, old checkpoints included

    # no EMA (the trained net is verified, saved and exported); the ArcFace head rides in the checkpoints as
    # `head`; best.pt is a full checkpoint (model, config, epoch, metrics as before, and the rest)
    fit(model, None, losses, validate, args, parts=["train_acc"], select=lambda met: met["acc"],
        on_improve=on_improve, optimizer=opt, device=torch.device("cpu"), batches=batches,
        steps_per_epoch=steps_per_epoch, lr_lambda=lr_lambda, clip=5.0,
        clip_params=list(model.parameters()) + [head.weight], ema_decay=None, on_epoch_start=on_epoch_start,
        metric_digits=None, log=log, save_extra=lambda: {"head": head.state_dict()},
        on_resume=on_resume)

if __name__ == "__main__":
    main()
