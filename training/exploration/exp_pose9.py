"""Exploration (session 20): the pose fit predicting all nine rotation entries, projected to SO(3) by SVD, against the
shipped 6D fit + Gram-Schmidt. Same rows, folds, weights and features as mfn/pose_fit.py's shipped flags.

    python training/exploration/exp_pose9.py ROWS.npz HEAD.safetensors CHECKPOINT [--test-rows TEST.npz]
"""
import argparse
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages
from mfn import data as MD  # noqa: E402
from mfn import model as M  # noqa: E402
from mfn.pose_fit import ROBUST_FLOOR, collect, ridge, rotation_errors_deg  # noqa: E402
from sfn.data import FaceCache  # noqa: E402
from sfn.model import matrix_to_rot6d, rot6d_to_matrix  # noqa: E402


def geodesic(P, R):
    tr = np.trace(np.einsum("nji,njk->nik", P, R), axis1=1, axis2=2)
    return np.degrees(np.arccos(np.clip((tr - 1) / 2, -1, 1)))


def svd_project(X):
    U, _, Vt = np.linalg.svd(X)
    d = np.sign(np.linalg.det(U @ Vt))
    U[:, :, 2] *= d[:, None]
    return U @ Vt


def r9_of(r6):
    """net's 6D values -> 9 values: the two raw columns and the cross product of their Gram-Schmidt frame"""
    G = rot6d_to_matrix(torch.from_numpy(r6)).numpy()
    return np.concatenate([r6, G[:, :, 2]], 1)


def build(v, weights, plain, shape=None, scale=None, product_scale=None):
    F = M.pose_fit_features(torch.from_numpy(v), True).numpy()
    if scale is None:
        geometry_spread = F[plain, :M.POSE_FIT_INPUTS].std(0).mean()
        scale = np.ones(F.shape[1])
        scale[M.POSE_FIT_INPUTS:] = geometry_spread / F[plain, M.POSE_FIT_INPUTS:].std(0).clip(1e-3)
    F = F * scale
    if shape is None:
        lm, p = F[plain, :2 * M.N_LMK], weights[plain] / weights[plain].sum()
        mean = p @ lm
        spread, U = np.linalg.eigh(((lm - mean) * p[:, None]).T @ (lm - mean))
        top = np.argsort(spread)[::-1][:12]
        shape = (mean, (U[:, top] / np.sqrt(spread[top])).T)
    P = M.pose_fit_shape_products(torch.from_numpy(F), *(torch.from_numpy(t) for t in shape), 4).numpy()
    if product_scale is None:
        geometry_spread = F[plain, :M.POSE_FIT_INPUTS].std(0).mean()
        product_scale = geometry_spread / P[plain].std(0).clip(1e-6)
    return np.hstack([F, P * product_scale]), shape, scale, product_scale


def fit(F, Y, p, lam, robust=3):
    w, b = ridge(F, Y, p, lam)
    for _ in range(robust):
        e = np.linalg.norm(Y - F @ w.T - b, axis=1)
        w, b = ridge(F, Y, p / np.maximum(e, ROBUST_FLOOR), lam)
    return w, b


def predict(kind, F, r6, w, b):
    if kind == "6d":
        return rot6d_to_matrix(torch.from_numpy(r6 + F @ w.T + b)).numpy()
    X = r9_of(r6) + F @ w.T + b
    X = X.reshape(-1, 3, 3).transpose(0, 2, 1)  # columns -> matrix
    if kind == "9d":
        return svd_project(X)
    return rot6d_to_matrix(torch.from_numpy(np.concatenate([X[:, :, 0], X[:, :, 1]], 1))).numpy()  # 9d fit, GS


def target(kind, R, r6):
    if kind == "6d":
        return matrix_to_rot6d(torch.from_numpy(R)).numpy() - r6
    return R.transpose(0, 2, 1).reshape(-1, 9) - r9_of(r6)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rows")
    ap.add_argument("head")
    ap.add_argument("checkpoint")
    ap.add_argument("--test-rows", default="/tmp/rows_test.npz")
    ap.add_argument("--lam", type=float, default=1e-7)
    ap.add_argument("--kinds", nargs="+", default=["6d", "9d", "9d_gs"])
    ap.add_argument("--cv", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    fc = FaceCache("training/cache", decode=False)
    rows = np.load(args.rows)
    v, R, found, kind = rows["values"], rows["rotations"], rows["found"], rows["kind"]
    plain = kind == 0
    weights = MD.face_weights(fc.split[found], fc.gray[found]) * np.where(plain, 1.0, 0.5)
    F, shape, scale, pscale = build(v, weights, plain)
    r6 = v[:, 136:142]
    if not os.path.exists(args.test_rows):
        ck, model = M.load_ema(args.checkpoint, pose_stage=False)
        big = FaceCache("training/cache", faces_file="faces256.npz")
        head = M.exported_head(load_file(args.head), ck["config"], True)
        faces = np.nonzero((fc.split == 1) & fc.has_pose)[0]
        tv, tR, tf = collect(model, big, fc, faces, head)
        np.savez(args.test_rows, values=tv, rotations=tR, found=tf)
    t = np.load(args.test_rows)
    tv, tR = t["values"], t["rotations"]
    tF = build(tv, None, None, shape, scale, pscale)[0]
    tr6 = tv[:, 136:142]
    print(f"{len(F)} views, {len(tF)} HELEN test faces; raw test {rotation_errors_deg(tr6, tR).mean():.4f}")
    folds = (np.random.default_rng(0).permutation(len(fc.split)) % 5)[found]
    helen = (fc.split[found] == 0) & plain
    for k in args.kinds:
        Y = target(k, R, r6)
        if args.cv:
            errs = np.zeros(len(F))
            for f in range(5):
                w, b = fit(F[folds != f], Y[folds != f], weights[folds != f], args.lam)
                te = folds == f
                errs[te] = geodesic(predict(k, F[te], r6[te], w, b), R[te])
            cv = np.average(errs[plain], weights=weights[plain])
            small = np.average(errs[kind == 2], weights=weights[kind == 2])
            cvs = f"cv {cv:.4f} HELEN train {errs[helen].mean():.4f} small {small:.4f}"
        else:
            cvs = ""
        w, b = fit(F, Y, weights, args.lam)
        test = geodesic(predict(k, tF, tr6, w, b), tR)
        print(f"{k}: {cvs} HELEN test {test.mean():.4f}", flush=True)
        if k == "9d":
            proj = geodesic(predict("9d_gs", tF, tr6, w, b), tR)
            print(f"   same 9d fit, Gram-Schmidt instead of SVD: {proj.mean():.4f}")


if __name__ == "__main__":
    main()
