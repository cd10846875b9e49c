"""MFN training data: the detector's scenes and composites, with per-face landmark, pose and blendshape labels.

Face crops come from the SFN cache (training/cache/faces.npz: 128-px crops with human landmarks for HELEN,
teacher landmarks elsewhere, and the teacher's rotation and blendshapes), so every pasted face carries full
labels through the paste (in-plane rotation and flip). Real scene faces carry landmarks only.
HELEN test faces (split 1) are never pasted: they are the validation set.
With sharp_faces (training/cache/faces256.npz, `sfn/prepare.py --face-size 256`), faces pasted larger than
D.SHARP_FROM px come from the 256-px crops, and validation frames are made from them too: that is what
`polyface eval` and a camera show (a 128-px crop enlarged to 240 px is soft).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages

import math

import numpy as np
import torch

from detector import data as D
from sfn.data import FaceCache, S_FLIP, blend_flip_perm, rot_z

FACE_DIM = 136 + 6 + 51


def face_label_weight(lmk):
    """landmark loss weight by face size: tiny faces carry little landmark information."""
    b = D.box_of(lmk)
    size = max(b[2] - b[0], b[3] - b[1])
    return float(np.clip((size - 8.0) / 32.0, 0.0, 1.0))


def face_targets(objs, labels, content, rng=None, box_jitter=0.0):
    """objs as for D.make_targets, labels[i] = (R 3x3 or None, blend (51,) or None) per obj.
    -> centre (MAX_OBJ,2), size (MAX_OBJ,), target (MAX_OBJ,193), weights (MAX_OBJ,3) in make_targets' order.
    box_jitter > 0: the grid is read around a perturbed centre (std box_jitter x size per axis) and size (log-normal,
    std 1.3 x box_jitter, biased 0.7 x box_jitter small), and the landmark targets are relative to that box, as
    inference reads around the detector's box, which is off by about that much (HELEN-as-frame: centre 3.7 % of
    the size, size -3 %)."""
    cen = np.zeros((D.MAX_OBJ, 2), np.float32)
    size = np.ones(D.MAX_OBJ, np.float32)
    tgt = np.zeros((D.MAX_OBJ, FACE_DIM), np.float32)
    wts = np.zeros((D.MAX_OBJ, 3), np.float32)
    n = 0
    for (lmk, pos), (R, blend) in zip(objs, labels):
        if n >= D.MAX_OBJ:
            break
        if not D.is_positive(lmk, pos, content):
            continue
        b = D.box_of(lmk)
        c = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
        s = max(b[2] - b[0], b[3] - b[1], 1.0)
        if box_jitter > 0 and rng is not None and rng.random() < 0.8:
            c = c + rng.normal(0.0, box_jitter, 2) * s
            s = s * float(np.exp(rng.normal(-0.7 * box_jitter, 1.3 * box_jitter)))
        cen[n], size[n] = c, s
        tgt[n, :136] = ((lmk - c) / s).reshape(-1)
        wts[n, 0] = face_label_weight(lmk)
        if R is not None:
            tgt[n, 136:142] = np.concatenate([R[:, 0], R[:, 1]])
            wts[n, 1] = 1.0
        if blend is not None:
            tgt[n, 142:] = blend
            wts[n, 2] = 1.0
        n += 1
    return cen, size, tgt, wts


def face_weights(split, gray):
    """how often each training face is pasted, relatively: HELEN train (split 0, human landmarks) 2, wild colour
    faces 1.5, wild grey ones 0.25 (most wild faces are grey)."""
    return np.where(split == 0, 2.0, np.where(gray, 0.25, 1.5))


class MFNData:
    """scenes from the detector cache + labelled face crops from the SFN cache."""

    def __init__(self, det_cache_dir, sfn_cache_dir, sharp_faces=False):
        self.det = D.DetCache(det_cache_dir)
        fc = FaceCache(sfn_cache_dir)
        keep = np.nonzero(fc.split != 1)[0]
        self.sharp = None
        if sharp_faces:
            big = FaceCache(sfn_cache_dir, faces_file="faces256.npz")
            assert big.names == fc.names, "faces256.npz does not hold the faces of faces.npz, in order"
            self.sharp = (big.images[keep], big.lmk[keep])
        self.face_imgs = fc.images[keep]
        self.face_lmk = fc.lmk[keep]
        self.face_R = fc.R[keep]
        self.face_has_pose = fc.has_pose[keep]
        self.face_blend = fc.blend[keep]
        self.face_has_blend = fc.has_blend[keep]
        w = face_weights(fc.split[keep], fc.gray[keep])
        self.face_p = w / w.sum()
        self.bperm = blend_flip_perm(fc.blend_names)
        # validation faces: HELEN test crops (human landmarks, teacher pose/blend)
        v = np.nonzero(fc.split == 1)[0]
        self.val_imgs, self.val_lmk = (big.images[v], big.lmk[v]) if sharp_faces else (fc.images[v], fc.lmk[v])
        self.val_R, self.val_blend = fc.R[v], fc.blend[v]
        self.val_has_pose, self.val_has_blend = fc.has_pose[v], fc.has_blend[v]
        self.blend_names = fc.blend_names

    def pasted_label(self, k, angle, flip):
        R = self.face_R[k] if self.face_has_pose[k] else None
        b = self.face_blend[k] if self.face_has_blend[k] else None
        if R is not None:
            R = S_FLIP @ R @ S_FLIP if flip else R
            R = rot_z(angle) @ R
        if b is not None and flip:
            b = b[self.bperm]
        return R, b


class MFNTrainSet(torch.utils.data.Dataset):
    """same sample mix as the detector's TrainSet: real scene, composite, scene + pasted faces."""

    def __init__(self, data, n, seed, epoch, p_scene=0.25, p_mixed=0.2, box_jitter=0.0):
        self.d, self.n, self.seed, self.epoch = data, n, seed, epoch
        self.box_jitter = box_jitter
        self.p_scene, self.p_mixed = p_scene, p_mixed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.epoch, i, 77])
        d, c = self.d, self.d.det
        pick = lambda: int(rng.choice(len(d.face_p), p=d.face_p))  # noqa: E731
        u = rng.random()
        content = (D.IN_W, D.IN_H)
        meta = []
        if u < self.p_scene + self.p_mixed:
            k = int(rng.integers(0, len(c.train_imgs)))
            img, objs, content = D.scene_sample(c.train_imgs[k], c.train_faces[k], rng)
            img = D.color_jitter(img, rng)
            labels = [(None, None)] * len(objs)
            if u >= self.p_scene:
                cwi, chi = int(content[0]), int(content[1])
                sub = np.ascontiguousarray(img[:chi, :cwi])
                sub, objs = D.composite(rng, None, None, d.face_imgs, d.face_lmk, pick, int(rng.integers(1, 7)),
                                        existing=objs, canvas=sub, content=(cwi, chi), meta=meta,
                                        sharp=d.sharp)
                img[:chi, :cwi] = sub
                labels = labels + [d.pasted_label(*m) for m in meta]
        else:
            r = rng.random()
            if r < 0.7:
                content = (D.IN_W, D.IN_H)
            else:
                content = [(320, 180), (240, 240), (180, 240), (135, 240), (320, 200)][int(rng.integers(0, 5))]
            nf = int(rng.integers(1, 21)) if rng.random() < 0.6 else int(rng.integers(1, 4))
            # few-face images use larger faces: that is where landmark detail is learnt
            size_range = (10, 220) if nf > 3 else (40, 230)
            sub, objs = D.composite(rng, c.train_imgs, c.train_faces, d.face_imgs, d.face_lmk, pick, nf,
                                    size_range=size_range, content=content, meta=meta, sharp=d.sharp)
            img = np.zeros((D.IN_H, D.IN_W, 3), np.uint8)
            img[:content[1], :content[0]] = D.color_jitter(sub, rng, 0.6)
            labels = [d.pasted_label(*m) for m in meta]
        img = D.degrade(img, rng)
        t = D.make_targets(objs, content)
        cen, size, tgt, wts = face_targets(objs, labels, content, rng, self.box_jitter)
        t.update(fcen=cen, fsize=size, ftgt=tgt, fw=wts)
        x = (torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0 - 0.5) / 0.5
        return x, {k: torch.from_numpy(v) for k, v in t.items()}


def val_frame(crop, lmk, max_scale=1.0):
    """a HELEN test crop (any size) used as the whole frame: letterboxed (top-left) into the input, shrunk to fit
    or enlarged by at most max_scale (as the app's letterbox; 1: never enlarged) -> (u8, lmk in input px)."""
    import cv2
    s = min(max_scale, D.IN_H / crop.shape[0])
    n = int(math.floor(crop.shape[0] * s + 0.5))
    canvas = np.zeros((D.IN_H, D.IN_W, 3), np.uint8)
    interp = cv2.INTER_AREA if n < crop.shape[0] else cv2.INTER_LINEAR
    canvas[:n, :n] = cv2.resize(crop, (n, n), interpolation=interp)
    return canvas, lmk * (n / crop.shape[0])


if __name__ == "__main__":
    # Self-check of the sharp faces (needs training/cache/faces256.npz): the same random stream gives the same
    # composite with either cache (same faces, same landmarks), and large faces carry more detail from the 256-px
    # crops (variance of the Laplacian inside the landmarks' box).
    import cv2
    data = MFNData("training/cache/det", "training/cache", sharp_faces=True)
    detail = []
    for seed in range(20):
        out = []
        for sharp in (None, data.sharp):
            rng = np.random.default_rng(seed)
            pick = lambda: int(rng.choice(len(data.face_p), p=data.face_p))  # noqa: E731
            out.append(D.composite(rng, None, None, data.face_imgs, data.face_lmk, pick, 2, size_range=(120, 230),
                                   sharp=sharp))
        (soft, soft_objs), (sharp, sharp_objs) = out
        assert len(soft_objs) == len(sharp_objs)
        for (a, _), (b, _) in zip(soft_objs, sharp_objs):
            assert np.abs(a - b).max() < 1e-3, "the sharp cache moved the landmarks"
            x0, y0 = np.maximum(b.min(0).astype(int), 0)
            x1, y1 = b.max(0).astype(int)
            lap = [cv2.Laplacian(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)[y0:y1, x0:x1], cv2.CV_32F).var()
                   for im in (soft, sharp)]
            detail.append(lap[1] / max(lap[0], 1e-6))
    print(f"{len(detail)} large pasted faces: detail sharp / soft median {np.median(detail):.2f}, "
          f"min {np.min(detail):.2f}")
    assert np.median(detail) > 1.5, "the 256-px crops should show more detail when pasted large"
