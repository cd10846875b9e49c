#!/usr/bin/env python3
"""Build the face re-identification cache: 64x64 aligned grayscale faces from /work/shared/data/wild.jsonl.

    nice -n 19 python3 training/reid/prepare.py --data /work/shared/data --out training/cache/reid

Output: <out>/faces.npz (git-ignored, ~20-30 MiB) with
    faces      uint8 [N,64,64]   aligned grayscale faces (alignment below)
    identity   int32 [N]         index into `names`
    names      str   [I]         identity names (LFW-style, from the source file names)
    split      uint8 [N]         0 = training identity, 1 = held-out identity (verification only)
    files      str   [N]         image path relative to the data folder
    matrix     float32 [N,2,3]   the alignment matrix used (crop pixel-index coords -> output pixel-index coords)
    lm68       float32 [N,68,2]  the teacher's 68 landmarks (crop pixels, continuous convention)
    valid      uint8 [N,64,64]   1 where the output pixel comes from inside the original photo, 0 where it shows the
                                 black padding of the 1.6x crop (used by training to fill it with random texture)

Identity split (deterministic): the distinct non-null identities are sorted by name, shuffled with
numpy.random.default_rng(20240611) (seed overridable with --seed), and the first 15 % (rounded) are held out.
Kept images: every image of a training identity with >= --min-images images (default 2; 1 makes singletons ArcFace
classes too, which verified worse: 0.884 against 0.894 after 60 epochs), and every image of a held-out identity
(those with >= 2 images give the "same" verification pairs; singletons only serve as extra negatives). Records
without identity are dropped.

ALIGNMENT (what the Rust app must reproduce from 68 iBUG landmarks on a full camera frame)
------------------------------------------------------------------------------------------
1. Grayscale: the image is converted to 8-bit gray BEFORE warping, OpenCV cv2.cvtColor(COLOR_BGR2GRAY):
   gray = (4899*R + 9617*G + 1868*B + 8192) >> 14   (i.e. round(0.299 R + 0.587 G + 0.114 B)).
   (Grayscale source photos have R = G = B, so this is the identity for them.)
2. Five source points from the 68 iBUG landmarks (0-based indices), in this order:
     p0 = mean(points 36..41)   right eye centre (subject's right = image left on a frontal face)
     p1 = mean(points 42..47)   left eye centre
     p2 = point 30              nose tip
     p3 = point 48              right mouth corner
     p4 = point 54              left mouth corner
   Landmarks in the data (and in the app) use the continuous pixel convention (top-left pixel centre at
   (0.5, 0.5)); they are converted to OpenCV's pixel-INDEX convention (pixel centre at integer coordinates)
   by subtracting 0.5 from x and y:  s_i = p_i - (0.5, 0.5).
3. Destination template (64x64 output, pixel-index convention, i.e. column x has its centre at x = 0..63),
   left/right symmetric about x = 31.5:
     t0 = (21.5, 29.5)   t1 = (41.5, 29.5)   t2 = (31.5, 41.0)   t3 = (23.0, 52.5)   t4 = (40.0, 52.5)
   (the ArcFace 112x112 template scaled by 64/112 and made symmetric.)
4. Transform: least-squares 2-D similarity (rotation + uniform scale + translation, no reflection) mapping the
   s_i onto the t_i = Umeyama (1991) with scaling, computed in float64:
     mu_s = mean(s_i), mu_t = mean(t_i), S = s_i - mu_s, T = t_i - mu_t
     var_s = sum |S_i|^2 / 5,  C = sum T_i S_i^T / 5  (2x2),  U D V^T = svd(C)
     d = diag(1, sign(det(U) * det(V)))  (-> 1 when det(U V^T) >= 0);  R = U d V^T
     c = trace(diag(D) d) / var_s;  A = c R (2x2);  b = mu_t - A mu_s;  M = [A | b] (2x3)
   Equivalent closed form (what `similarity_umeyama` computes; identical result):
     a = sum(S_x T_x + S_y T_y) / sum|S|^2,  e = sum(S_x T_y - S_y T_x) / sum|S|^2,
     A = [[a, -e], [e, a]],  b = mu_t - A mu_s.
5. Warp: out = cv2.warpAffine(gray, M, (64, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE):
   for every output pixel (x, y), x, y in 0..63 (integers = pixel centres), the source position is
   (u, v) = A^-1 ((x, y) - b), sampled bilinearly from the 4 neighbouring source pixels floor(u), floor(u)+1,
   floor(v), floor(v)+1, with coordinates outside the image clamped to the nearest edge pixel (replicate), the
   result rounded to the nearest uint8. No anti-aliasing prefilter. (OpenCV quantises the bilinear weights to
   1/32 pixel and uses fixed-point arithmetic; a float implementation matches it to within +-1 grey level.)
6. Network input: x = (u8 / 255 - 0.5) / 0.5, shape [N,1,64,64] float32.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages

import argparse
import json
import os

import cv2
import numpy as np

TEMPLATE_64 = np.array([[21.5, 29.5], [41.5, 29.5], [31.5, 41.0], [23.0, 52.5], [40.0, 52.5]], dtype=np.float64)
OUT_SIZE = 64
TEMPLATE = TEMPLATE_64


def template_for(size):
    """the 64x64 template scaled to a size x size output (same face framing, more pixels): pixel-index
    coordinates scale about the image corner in the continuous convention, t' = (t + 0.5) * size / 64 - 0.5."""
    return (TEMPLATE_64 + 0.5) * (size / 64.0) - 0.5


def set_size(size):
    """use a size x size output (default 64) for everything below (align, valid_mask, ...)."""
    global OUT_SIZE, TEMPLATE
    OUT_SIZE, TEMPLATE = int(size), template_for(size)
SPLIT_SEED = 20240611
HELDOUT_FRACTION = 0.15

ALIGNMENT_TEXT = (
    "Grayscale first: gray = cv2.cvtColor BGR2GRAY = (4899*R + 9617*G + 1868*B + 8192) >> 14. "
    "5 points from the 68 iBUG landmarks (0-based): p0 = mean(36..41) (right eye, image left), p1 = mean(42..47) "
    "(left eye), p2 = 30 (nose tip), p3 = 48 (right mouth corner), p4 = 54 (left mouth corner); convert from the "
    "continuous pixel convention (pixel centre at +0.5) to OpenCV pixel-index coordinates: s_i = p_i - 0.5. "
    "Template (64x64 output, pixel-index coordinates, pixel centres at integers 0..63): "
    "t0 = (21.5, 29.5), t1 = (41.5, 29.5), t2 = (31.5, 41.0), t3 = (23.0, 52.5), t4 = (40.0, 52.5). "
    "Transform: least-squares similarity (rotation + uniform scale + translation, no reflection; Umeyama 1991 with "
    "scaling, float64) mapping s_i -> t_i: S = s - mean(s), T = t - mean(t), a = sum(Sx*Tx + Sy*Ty) / sum|S|^2, "
    "e = sum(Sx*Ty - Sy*Tx) / sum|S|^2, A = [[a, -e], [e, a]], b = mean(t) - A mean(s), M = [A|b] (2x3, maps "
    "source pixel-index coords to output pixel-index coords). Warp: cv2.warpAffine(gray, M, (64, 64), "
    "flags=INTER_LINEAR, borderMode=BORDER_REPLICATE): output pixel (x, y) (integers) samples the source at "
    "A^-1((x, y) - b) bilinearly, out-of-image neighbours clamped to the edge pixel, rounded to uint8; no "
    "anti-aliasing prefilter (OpenCV uses 1/32-px fixed-point weights; float bilinear matches within +-1 level)."
)


def five_points(lm68):
    """68x2 landmarks (continuous convention) -> 5x2 (continuous convention)."""
    lm = np.asarray(lm68, dtype=np.float64)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def similarity_umeyama(src, dst):
    """least-squares similarity src -> dst (both Kx2, float64) -> 2x3 matrix."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    S, T = src - ms, dst - md
    n2 = (S ** 2).sum()
    a = (S[:, 0] * T[:, 0] + S[:, 1] * T[:, 1]).sum() / n2
    e = (S[:, 0] * T[:, 1] - S[:, 1] * T[:, 0]).sum() / n2
    A = np.array([[a, -e], [e, a]])
    b = md - A @ ms
    return np.concatenate([A, b[:, None]], 1)


def _umeyama_svd(src, dst):
    """textbook Umeyama (SVD form), used only to self-check the closed form."""
    ms, md = src.mean(0), dst.mean(0)
    S, T = src - ms, dst - md
    var_s = (S ** 2).sum() / len(S)
    C = T.T @ S / len(S)
    U, D, Vt = np.linalg.svd(C)
    d = np.ones(2)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        d[1] = -1
    R = U @ np.diag(d) @ Vt
    c = (D * d).sum() / var_s
    A = c * R
    return np.concatenate([A, (md - A @ ms)[:, None]], 1)


def alignment_matrix(lm68):
    """68 landmarks (continuous convention, image pixels) -> 2x3 float64 matrix for cv2.warpAffine."""
    return similarity_umeyama(five_points(lm68) - 0.5, TEMPLATE)


def to_gray(img):
    if img.ndim == 2:
        return img
    if img.shape[2] == 1:
        return img[:, :, 0]
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)


def valid_mask(rec, M):
    """1 where the aligned pixel lies inside the original photo (not the crop's black padding)."""
    c = rec["crop"]
    W, H = rec["orig_size"]
    x0 = (0 - c["origin"][0]) * c["scale"]
    y0 = (0 - c["origin"][1]) * c["scale"]
    x1 = (W - c["origin"][0]) * c["scale"]
    y1 = (H - c["origin"][1]) * c["scale"]
    A, b = M[:, :2], M[:, 2]
    Ai = np.linalg.inv(A)
    ys, xs = np.mgrid[0:OUT_SIZE, 0:OUT_SIZE]
    q = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64) - b
    src = q @ Ai.T + 0.5  # continuous convention in crop pixels
    inside = (src[:, 0] >= x0 + 1) & (src[:, 0] <= x1 - 1) & (src[:, 1] >= y0 + 1) & (src[:, 1] <= y1 - 1)
    return inside.reshape(OUT_SIZE, OUT_SIZE).astype(np.uint8)


def align(gray, lm68):
    """uint8 gray image + 68 landmarks -> (uint8 [64,64], 2x3 matrix)."""
    M = alignment_matrix(lm68)
    out = cv2.warpAffine(gray, M, (OUT_SIZE, OUT_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out, M


def split_identities(names, seed=SPLIT_SEED, frac=HELDOUT_FRACTION):
    """sorted names -> set of held-out names."""
    names = sorted(names)
    perm = np.random.default_rng(seed).permutation(len(names))
    n_held = int(round(frac * len(names)))
    return {names[i] for i in perm[:n_held]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--out", default="training/cache/reid")
    ap.add_argument("--seed", type=int, default=SPLIT_SEED)
    ap.add_argument("--min-images", type=int, default=2,
                    help="keep training identities with at least this many images (1: singletons become classes "
                         "too; that run verified worse, 0.884 vs 0.894)")
    ap.add_argument("--size", type=int, default=64,
                    help="output side in pixels; the template is the 64 px one scaled (same framing)")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    set_size(args.size)

    rng = np.random.default_rng(0)
    for _ in range(5):  # closed form == SVD Umeyama
        s = rng.normal(size=(5, 2)) * 50 + 100
        assert np.allclose(similarity_umeyama(s, TEMPLATE), _umeyama_svd(s, TEMPLATE), atol=1e-9)

    recs = [json.loads(l) for l in open(os.path.join(args.data, "wild.jsonl"))]
    recs = [r for r in recs if r.get("identity")]
    count = {}
    for r in recs:
        count[r["identity"]] = count.get(r["identity"], 0) + 1
    held = split_identities(count.keys(), args.seed)
    keep = [r for r in recs if r["identity"] in held or count[r["identity"]] >= args.min_images]
    keep.sort(key=lambda r: (r["identity"], r["image"]))
    names = sorted({r["identity"] for r in keep})
    idx = {n: i for i, n in enumerate(names)}

    faces = np.zeros((len(keep), OUT_SIZE, OUT_SIZE), np.uint8)
    mats = np.zeros((len(keep), 2, 3), np.float32)
    valid = np.zeros((len(keep), OUT_SIZE, OUT_SIZE), np.uint8)
    for i, r in enumerate(keep):
        img = cv2.imread(os.path.join(args.data, r["image"]), cv2.IMREAD_COLOR)
        assert img is not None, r["image"]
        faces[i], M = align(to_gray(img), r["landmarks68"])
        mats[i] = M
        valid[i] = valid_mask(r, M)
    ident = np.array([idx[r["identity"]] for r in keep], np.int32)
    split = np.array([1 if r["identity"] in held else 0 for r in keep], np.uint8)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "faces.npz")
    np.savez_compressed(path + ".tmp.npz", faces=faces, identity=ident, names=np.array(names), split=split,
                        files=np.array([r["image"] for r in keep]), matrix=mats, valid=valid,
                        lm68=np.array([r["landmarks68"] for r in keep], np.float32), seed=np.int64(args.seed),
                        min_images=np.int64(args.min_images), size=np.int64(OUT_SIZE), template=TEMPLATE)
    os.replace(path + ".tmp.npz", path)
    tr = split == 0
    n_tr_id = len(set(ident[tr].tolist()))
    held_ids, held_counts = np.unique(ident[~tr], return_counts=True)
    print(f"identities total {len(count)}, held out {len(held)}; kept images {len(keep)}: "
          f"train {tr.sum()} ({n_tr_id} identities >= {args.min_images} images), held-out {(~tr).sum()} "
          f"({len(held_ids)} identities, {(held_counts >= 2).sum()} with >= 2 images)")
    print(f"wrote {path} ({os.path.getsize(path) / 2 ** 20:.1f} MiB)")


if __name__ == "__main__":
    main()
