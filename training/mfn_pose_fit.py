"""Fits the MFN's pose fit: a linear correction of its rotation values from its own landmarks and rotation
(`mfn_model.pose_fit_features`: the landmarks centred and scaled, the 6 rotation values, and their products), by
ridge least squares against the teacher's rotation on training faces only (HELEN train and the wild faces, each crop
used as the whole frame, as `polyface eval` reads the HELEN test crops), each weighted as often as training pastes
it (`mfn_data.face_weights`). The ridge weight is picked by 5-fold cross-validation on those faces. Writes the
checkpoint again with a "pose_fit" entry, which `mfn_train.py --export-from` stores in the model file
(face_pose_fit.*). With --as-exported FILE (a file exported from the same checkpoint with the shipped ranks) it fits
to the values the exported low-rank head gives, which the Rust decode computes.

Why: the net places the landmarks well (HELEN-as-frame NME 4.5 %, as the SFN) but its rotation output does not use
their geometry fully (pose 3.4 deg against the SFN's 2.1); the geometry, read around the net's own rotation, tells
much of what is missing. One 6 x 958 product per face.

    python training/mfn_pose_fit.py training/runs/mfn12a/last.pt training/runs/mfn12a/last_posefit.pt
"""
import argparse

import numpy as np
import torch
from safetensors.torch import load_file

import mfn_data as MD
import mfn_model as M
import mfn_train as T
from sfn_data import FaceCache
from sfn_model import matrix_to_rot6d, rot6d_to_matrix

RIDGE_GRID = (3e-6, 1e-5, 3e-5, 1e-4, 3e-4)


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


def collect(model, big, fc, faces, head=None, batch=30):
    """the net's raw values for each face (its crop as the whole frame; faces it misses are left out) -> (values
    (n,193), teacher R (n,3,3), the faces' indices)."""
    values, rotations, found = [], [], []
    for a in range(0, len(faces), batch):
        idx = faces[a:a + batch]
        frames = [MD.val_frame(big.images[i], big.lmk[i]) for i in idx]
        for i, f in zip(idx, T.matched_faces(model, frames, head=head)):
            if f is not None:
                values.append(f["values"])
                rotations.append(fc.R[i])
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
    ap.add_argument("--limit", type=int, default=None, help="fit on the first N training faces only (smoke)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ck, model = M.load_ema(args.checkpoint)
    big = FaceCache(args.sfn_cache, faces_file="faces256.npz")
    fc = FaceCache(args.sfn_cache, decode=False)
    assert big.names == fc.names, "faces256.npz does not hold the faces of faces.npz, in order"
    faces = np.nonzero((fc.split != 1) & fc.has_pose)[0][:args.limit]  # never the HELEN test faces (split 1)
    head = M.exported_head(load_file(args.as_exported), ck["config"]) if args.as_exported else None
    v, R, found = collect(model, big, fc, faces, head)
    # each face counts as often as training pastes it, so the many grey wild faces do not outweigh the rest
    weights = MD.face_weights(fc.split[found], fc.gray[found])
    helen = fc.split[found] == 0
    F = M.pose_fit_features(torch.from_numpy(v)).numpy()
    r6 = v[:, 136:142]
    Y = matrix_to_rot6d(torch.from_numpy(R)).numpy() - r6
    before = np.average(rotation_errors_deg(r6, R), weights=weights)
    folds = np.random.default_rng(0).permutation(len(F)) % 5
    cv = {}
    for lam in RIDGE_GRID:
        errs = np.zeros(len(F))
        for k in range(5):
            w, b = ridge(F[folds != k], Y[folds != k], weights[folds != k], lam)
            test = folds == k
            errs[test] = rotation_errors_deg(r6[test] + F[test] @ w.T + b, R[test])
        cv[lam] = np.average(errs, weights=weights)
        print(f"ridge {lam}: cross-validated pose error {cv[lam]:.3f} deg (weighted), HELEN train "
              f"{errs[helen].mean():.3f}", flush=True)
    lam = min(cv, key=cv.get)
    w, b = ridge(F, Y, weights, lam)
    assert np.isfinite(w).all() and np.isfinite(b).all(), "the fit is not finite"
    after = np.average(rotation_errors_deg(r6 + F @ w.T + b, R), weights=weights)
    print(f"{len(F)} training faces ({len(faces) - len(F)} missed): weighted pose error {before:.3f} deg without the "
          f"fit, {cv[lam]:.3f} cross-validated with it (ridge {lam}), {after:.3f} fitted on all")
    ck["pose_fit"] = {"weight": torch.tensor(w, dtype=torch.float32), "bias": torch.tensor(b, dtype=torch.float32),
                      "features": M.POSE_FIT_FEATURES, "ridge": lam, "faces": len(F),
                      "train_deg_before": float(before), "cv_deg": float(cv[lam])}
    torch.save(ck, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
