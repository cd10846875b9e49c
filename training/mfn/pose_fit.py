"""Fits the MFN's pose fit: a linear correction of its rotation values from its own landmarks and rotation
(`mfn_model.pose_fit_features`: the landmarks centred and scaled, the 6 rotation values, and their products), by
ridge least squares against the teacher's rotation on training faces only (HELEN train and the wild faces, each crop
used as the whole frame, as `polyface eval` reads the HELEN test crops), each weighted as often as training pastes
it (`mfn_data.face_weights`); with --mirror / --turned / --small also on views of each face (mirrored; turned
in-plane; turned and shrunk in the frame), labelled as training pastes faces. The ridge weight is picked by 5-fold
cross-validation on the faces as they are (all views of a face share its fold). Writes the
checkpoint again with a "pose_fit" entry, which `mfn/train.py --export-from` stores in the model file
(face_pose_fit.*). With --as-exported FILE (a file exported from the same checkpoint with the shipped ranks) it fits
to the values the exported low-rank head gives, which the Rust decode computes; with --head-features as well, it
also reads the per-face values that head computes on the way (mfn_model.HEAD_FEATURES_LAYOUT: its projections and
the MLP's hidden values), which see the face's appearance where the landmarks give only its geometry.

Why: the net places the landmarks well (HELEN-as-frame NME 4.5 %, as the SFN) but its rotation output does not use
their geometry fully (pose 3.4 deg against the SFN's 2.1); the geometry, read around the net's own rotation, tells
much of what is missing. With --shape-products K it also reads the products of the landmarks' first K principal
shape values: a rotation changes the projected shape through cosines as well as sines, which a linear read of the
landmarks misses. One 6 x 958 product per face (6 x 1,534 with the head's features, plus K(K+1)/2 with the shape).

    python training/mfn/pose_fit.py training/runs/mfn11/last.pt training/runs/mfn11/last_posefit_robust.pt \
        --as-exported HEAD.safetensors --head-features --mirror --turned 1 --small 1 --robust 3 [--rows ROWS.npz] \
        [--shape-products 12 --shape-cubic 4 --view-weight 0.5]
(HEAD.safetensors: `mfn/train.py --export-from training/runs/mfn11/last.pt` with the shipped ranks, see mfn/MFN.md.)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages

import argparse
import os

import numpy as np
import torch
from safetensors.torch import load_file

from mfn import data as MD
from mfn import model as M
from mfn import train as T
from sfn.data import FLIP_PERM, S_FLIP, FaceCache, apply_affine, crop_affine, rot_z, warp
from sfn.model import matrix_to_rot6d, rot6d_to_matrix

RIDGE_GRID = (1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4)
ROBUST_FLOOR = np.radians(0.1)  # rows closer than this are not weighted up further (6D units ~ radians)


def rotation_errors_deg(r6, R):
    """geodesic angle (degrees) between the rotation of each row of r6 (n,6, the net's rotation values) and each R
    (n,3,3)."""
    P = rot6d_to_matrix(torch.from_numpy(r6)).numpy()
    tr = np.trace(np.einsum("nji,njk->nik", P, R), axis1=1, axis2=2)
    return np.degrees(np.arccos(np.clip((tr - 1) / 2, -1, 1)))


def ridge(F, Y, weights, lam):
    """(weight [6, f], bias [6]) minimising the weighted mean of |Y - F w^T - b|^2 + lam |w|^2 (the bias not
    penalised)."""
    p = weights / weights.sum()
    mu_f, mu_y = p @ F, p @ Y
    Fc = F - mu_f
    Fp = Fc * p[:, None]
    w = np.linalg.solve(Fp.T @ Fc + lam * np.eye(F.shape[1]), Fp.T @ (Y - mu_y)).T
    return w, mu_y - w @ mu_f


def view(img, lmk, R, angle, mirror, scale=1.0, place=(0.0, 0.0)):
    """a face crop turned by angle degrees (counter-clockwise) about its centre, then mirrored if asked, with its
    landmarks and teacher rotation turned and mirrored alike (as training pastes faces); with scale < 1 it is then
    put into a black square scale times as large, at `place` (0..1 of the free room in x and y), so the face comes
    out smaller in the frame."""
    side = img.shape[0]
    A = crop_affine(np.array([side / 2, side / 2]), side, angle, mirror, out=side)
    img, lmk, R = warp(img, A, out=side), apply_affine(A, lmk), rot_z(angle) @ R
    if mirror:
        lmk, R = lmk[FLIP_PERM], S_FLIP @ R @ S_FLIP
    if scale < 1.0:
        frame = int(round(side / scale))
        x, y = (np.asarray(place) * (frame - side)).astype(int)
        canvas = np.zeros((frame, frame, 3), np.uint8)
        canvas[y:y + side, x:x + side] = img
        img, lmk = canvas, lmk + (x, y)
    return img, lmk, R


def collect(model, big, fc, faces, head=None, views=None, batch=30):
    """the net's raw values for each face (its crop as the whole frame, or view(crop, ...views[k]) if given; faces
    it misses are left out) -> (values (n,193), teacher R (n,3,3), the faces' indices)."""
    values, rotations, found = [], [], []
    for a in range(0, len(faces), batch):
        views_now = []
        for k in range(a, min(a + batch, len(faces))):
            i = faces[k]
            if views is None:
                views_now.append((big.images[i], big.lmk[i], fc.R[i]))
            else:
                views_now.append(view(big.images[i], big.lmk[i], fc.R[i], *views[k]))
        frames = [MD.val_frame(img, lmk) for img, lmk, _ in views_now]
        for i, (_, _, R), f in zip(faces[a:a + batch], views_now, T.matched_faces(model, frames, head=head)):
            if f is not None:
                values.append(f["values"])
                rotations.append(R)
                found.append(i)
    return np.array(values, np.float64), np.array(rotations), np.array(found)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("out", help="the checkpoint written again with the fit")
    ap.add_argument("--sfn-cache", default="training/cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--as-exported", default="",
                    help="a model file exported from this checkpoint: fit to the values its (low-rank) face head "
                         "gives, as the Rust decode computes them, instead of the checkpoint's full-rank head")
    ap.add_argument("--head-features", action="store_true",
                    help="with --as-exported: the fit also reads the exported head's own per-face features "
                         "(mfn_model.HEAD_FEATURES_LAYOUT), which the decode computes anyway")
    ap.add_argument("--mirror", action="store_true", help="also fit to every face mirrored")
    ap.add_argument("--turned", type=int, default=0,
                    help="also fit to this many views of every face turned in-plane (uniform within --max-angle, "
                         "each mirrored with probability 1/2)")
    ap.add_argument("--small", type=int, default=0,
                    help="also fit to this many views of every face turned and mirrored as --turned and shrunk to a "
                         "share of the frame's height uniform in --small-range, at a random place")
    ap.add_argument("--max-angle", type=float, default=15.0)
    ap.add_argument("--small-range", type=float, nargs=2, default=(0.2, 0.7))
    ap.add_argument("--limit", type=int, default=None, help="fit on the first N training faces only (smoke)")
    ap.add_argument("--rows", default="",
                    help="an .npz of the net's values on the views: read from it when it exists (same checkpoint, "
                         "head and view flags), else collected and written there (the slow part, ~6 min per view on one thread)")
    ap.add_argument("--ridge", type=float, nargs="+", default=RIDGE_GRID, help="the ridge weights to cross-validate")
    ap.add_argument("--shape-products", type=int, default=0, metavar="K",
                    help="with --head-features: the fit also reads the K(K+1)/2 products of the landmarks' first K "
                         "principal shape values (mfn_model.pose_fit_shape_products; PCA of the training faces' "
                         "scaled landmarks), the geometry to second order")
    ap.add_argument("--shape-cubic", type=int, default=0, metavar="C",
                    help="with --shape-products: also the C(C+1)(C+2)/6 cubic products of the first C shape values "
                         "and the 21 products of the rotation values (pairs)")
    ap.add_argument("--view-weight", type=float, default=1.0,
                    help="each mirrored, turned or small view weighs this much against its face as it is")
    ap.add_argument("--robust", type=int, default=0,
                    help="this many reweighted refits (IRLS) after the ridge, each row weighted by 1 / its error, "
                         "so the fit minimises the mean error (what eval reports) rather than the mean square")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # a trained pose stage (mfn/train.py --pose-stage) is left out: this fit replaces it
    ck, model = M.load_ema(args.checkpoint, pose_stage=False)
    # the frames the views are letterboxed into: the net's own input (320x240, or 640x480 for the room net)
    from detector import data as D
    D.set_input_size(*ck["config"]["input_size"])
    big = FaceCache(args.sfn_cache, faces_file="faces256.npz")
    fc = FaceCache(args.sfn_cache, decode=False)
    assert big.names == fc.names, "faces256.npz does not hold the faces of faces.npz, in order"
    faces = np.nonzero((fc.split != 1) & fc.has_pose)[0][:args.limit]  # never the HELEN test faces (split 1)
    assert args.as_exported or not args.head_features, "--head-features reads an exported head: give --as-exported"
    head = M.exported_head(load_file(args.as_exported), ck["config"], args.head_features) if args.as_exported else None
    # views: each face as it is, then mirrored, then turned; all views of a face share its cross-validation fold
    rng = np.random.default_rng(1)
    n = len(faces)

    def turned(scale=(1.0, 1.0)):
        return list(zip(rng.uniform(-args.max_angle, args.max_angle, n), rng.random(n) < 0.5,
                        rng.uniform(*scale, n), rng.random((n, 2))))
    PLAIN, OTHER, SMALL = range(3)  # kinds of view
    views = [(PLAIN, None)] + ([(OTHER, [(0.0, True)] * n)] if args.mirror else []) + [
        (OTHER, turned()) for _ in range(args.turned)] + [(SMALL, turned(args.small_range)) for _ in range(args.small)]
    # what the cached values depend on: a cache made for other flags is refused, not silently fitted
    rows_key = repr((args.checkpoint, args.as_exported, args.head_features, args.mirror, args.turned, args.small,
                     args.max_angle, tuple(args.small_range), args.limit))
    if args.rows and os.path.exists(args.rows):
        rows = np.load(args.rows)
        if "key" not in rows or str(rows["key"]) != rows_key:
            raise SystemExit(f"{args.rows} holds values for other flags ({rows['key'] if 'key' in rows else 'unknown'}"
                             f"), not {rows_key}: give another --rows file or remove it")
        v, R, found, kind = rows["values"], rows["rotations"], rows["found"], rows["kind"]
        print(f"{len(v)} views' values from {args.rows}")
    else:
        parts = [collect(model, big, fc, faces, head, vs) for _, vs in views]
        v, R, found = (np.concatenate(x) for x in zip(*parts))
        kind = np.concatenate([np.full(len(p[2]), k) for (k, _), p in zip(views, parts)])
        if args.rows:
            np.savez(args.rows, values=v, rotations=R, found=found, kind=kind, key=rows_key)
    plain = kind == PLAIN  # the faces as they are: what the ridge weight is chosen on
    # each face counts as often as training pastes it, so the many grey wild faces do not outweigh the rest
    weights = MD.face_weights(fc.split[found], fc.gray[found])
    weights = weights * np.where(kind == PLAIN, 1.0, args.view_weight)
    helen = (fc.split[found] == 0) & plain
    F = M.pose_fit_features(torch.from_numpy(v), args.head_features).numpy()
    # the head features (and shape products below), scaled to the geometry's typical spread, so one ridge weight
    # suits all; folded back below
    geometry_spread = F[plain, :M.POSE_FIT_INPUTS].std(0).mean()
    scale = np.ones(F.shape[1])
    scale[M.POSE_FIT_INPUTS:] = geometry_spread / F[plain, M.POSE_FIT_INPUTS:].std(0).clip(1e-3)
    F *= scale
    shape = None
    if args.shape_products:
        assert args.head_features, "--shape-products follows the head features: give --head-features"
        # principal directions of the scaled landmarks over the training faces as they are, each weighted as in the
        # fit, divided by their spread so the K shape values are of unit variance
        lm, p = F[plain, :2 * M.N_LMK], weights[plain] / weights[plain].sum()
        mean = p @ lm
        spread, U = np.linalg.eigh(((lm - mean) * p[:, None]).T @ (lm - mean))
        top = np.argsort(spread)[::-1][:args.shape_products]
        shape = (mean, (U[:, top] / np.sqrt(spread[top])).T)
        P = M.pose_fit_shape_products(torch.from_numpy(F), *(torch.from_numpy(t) for t in shape),
                                      args.shape_cubic or None).numpy()
        product_scale = geometry_spread / P[plain].std(0).clip(1e-6)
        F, scale = np.hstack([F, P * product_scale]), np.concatenate([scale, product_scale])
    r6 = v[:, 136:142]
    Y = matrix_to_rot6d(torch.from_numpy(R)).numpy() - r6
    before = np.average(rotation_errors_deg(r6[plain], R[plain]), weights=weights[plain])
    folds = (np.random.default_rng(0).permutation(len(fc.split)) % 5)[found]

    def fit(rows, lam):
        Fr, Yr, pr = F[rows], Y[rows], weights[rows]  # copied once, not once per refit
        w, b = ridge(Fr, Yr, pr, lam)
        for _ in range(args.robust):
            # IRLS for the weighted mean of |residual|: each row at weight / max(|residual|, 0.1 deg in 6D units)
            e = np.linalg.norm(Yr - Fr @ w.T - b, axis=1)
            w, b = ridge(Fr, Yr, pr / np.maximum(e, ROBUST_FLOOR), lam)
        return w, b

    cv = {}
    for lam in args.ridge:
        errs = np.zeros(len(F))
        for k in range(5):
            w, b = fit(folds != k, lam)
            test = folds == k
            errs[test] = rotation_errors_deg(r6[test] + F[test] @ w.T + b, R[test])
        cv[lam] = np.average(errs[plain], weights=weights[plain])
        small = f", small views {np.average(errs[kind == SMALL], weights=weights[kind == SMALL]):.3f}" if args.small else ""
        print(f"ridge {lam}: cross-validated pose error {cv[lam]:.3f} deg (weighted), HELEN train "
              f"{errs[helen].mean():.3f}{small}", flush=True)
    lam = min(cv, key=cv.get)
    w, b = fit(np.ones(len(F), bool), lam)
    assert np.isfinite(w).all() and np.isfinite(b).all(), "the fit is not finite"
    after = np.average(rotation_errors_deg(r6[plain] + F[plain] @ w.T + b, R[plain]), weights=weights[plain])
    w = w * scale  # for the unscaled features
    print(f"{plain.sum()} training faces ({len(faces) - plain.sum()} missed), {len(F)} views: weighted pose error "
          f"{before:.3f} deg without the fit, {cv[lam]:.3f} cross-validated with it (ridge {lam}), {after:.3f} "
          f"fitted on all")
    ck["pose_fit"] = {"weight": torch.tensor(w, dtype=torch.float32), "bias": torch.tensor(b, dtype=torch.float32),
                      "features": (M.POSE_FIT_SHAPE3_FEATURES if args.shape_cubic else M.POSE_FIT_SHAPE_FEATURES)
                      if shape else M.POSE_FIT_HEAD_FEATURES
                      if args.head_features else M.POSE_FIT_FEATURES,
                      "head_features": F.shape[1] - M.POSE_FIT_INPUTS - (0 if shape is None else P.shape[1]),
                      "ridge": lam, "faces": int(plain.sum()), "views": len(F),
                      "mirror": args.mirror, "turned": args.turned, "small": args.small,
                      "max_angle": args.max_angle, "view_weight": args.view_weight, "small_range": list(args.small_range),
                      "train_deg_before": float(before), "cv_deg": float(cv[lam]), "robust": args.robust}
    if shape is not None:
        ck["pose_fit"].update(shape_mean=torch.tensor(shape[0], dtype=torch.float32),
                              shape_basis=torch.tensor(shape[1], dtype=torch.float32))
        if args.shape_cubic:
            ck["pose_fit"]["shape_cubic"] = args.shape_cubic
    torch.save(ck, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
