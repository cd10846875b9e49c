"""Training data for the MFN that sees a room: 640x480 input (a webcam's frame, not halved), faces from 12 px up.

Sample mix (per sample, deterministic per seed / epoch / index):
* real group photos (`groups` cache, train split; `groups/prepare.py`): scaled around the letterbox scale, flipped,
  sometimes turned. Faces with teacher labels are fully supervised; faces with only a human box or points supervise
  detection alone (their template points give the box, not landmark targets, and no keypoint loss); faces only the
  teacher found are ignore regions; masked faces keep landmarks at a reduced weight (the teacher guesses the mouth
  under the mask) and no blendshape target.
* HELEN training scenes, alone or with pasted faces (landmark supervision only for the scene's own faces).
* composites: 1-20 labelled face crops pasted at 12-460 px on face-free backgrounds, so landmark, pose and
  blendshape supervision exists at every size.
Every sample then may get webcam-like damage: motion blur, a lower-resolution sensor (down- then up-scaled), low
light with sensor noise, partial occlusion of faces, and the detector's blur / noise / JPEG.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages

import math

import cv2
import numpy as np
import torch

from detector import data as D
from mfn import data as MD

ROOM_W, ROOM_H = 640, 480
MASKED_LMK_WEIGHT = 0.3


class GroupsCache:
    """training/cache/groups.npz (groups/prepare.py): photos as stored + per-face labels."""

    def __init__(self, path):
        z = np.load(path)
        self.jpeg = D.unpack(z["jpeg"], z["offsets"])
        fo = z["face_offsets"]
        # each z[key] reads the whole array again: read once, then slice (views of one array per key)
        arrays = {k: z[k] for k in ("lmk68", "kind", "masked", "R", "has_R", "blend", "has_blend")}
        self.faces = [{k: v[fo[i]:fo[i + 1]] for k, v in arrays.items()} for i in range(len(fo) - 1)]
        names = [str(n) for n in z["blendshape_names"]]
        self.blend_names = names

    def __len__(self):
        return len(self.jpeg)


class RoomData(MD.MFNData):
    """the MFN's data (face crops, HELEN scenes, validation crops) + the real group photos."""

    def __init__(self, det_cache_dir, sfn_cache_dir, groups_path, sharp_faces=True):
        D.set_input_size(ROOM_W, ROOM_H)
        super().__init__(det_cache_dir, sfn_cache_dir, sharp_faces=sharp_faces)
        self.groups = GroupsCache(groups_path)
        assert self.groups.blend_names == list(self.blend_names), "groups cache blendshape order differs"


def motion_blur(img, rng):
    n = int(rng.integers(3, 10))
    k = np.zeros((n, n), np.float32)
    k[n // 2] = 1.0
    rot = cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), float(rng.uniform(0, 180)), 1.0)
    k = cv2.warpAffine(k, rot, (n, n))
    return cv2.filter2D(img, -1, k / max(k.sum(), 1e-6))


def webcam_degrade(img, rng):
    """the ways a webcam in a room differs from a photo; then the detector's blur / noise / JPEG."""
    h, w = img.shape[:2]
    if rng.random() < 0.2:
        img = motion_blur(img, rng)
    if rng.random() < 0.25:  # a lower-resolution sensor or digital zoom
        f = rng.uniform(0.35, 0.8)
        small = cv2.resize(img, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.15:  # low light: dark, then amplified sensor noise
        x = img.astype(np.float32) * rng.uniform(0.15, 0.45)
        x += rng.normal(0, rng.uniform(2, 8), img.shape)
        gain = rng.uniform(1.0, 2.2)
        img = np.clip(x * gain, 0, 255).astype(np.uint8)
    return D.degrade(img, rng)


def occlude(img, objs, rng, p=0.12):
    """covers part of some faces (a hand, a cup, a microphone, another head) with a textured blob; labels stay."""
    for lmk, pos in objs:
        if not pos or rng.random() >= p:
            continue
        b = D.box_of(lmk)
        s = max(b[2] - b[0], b[3] - b[1])
        if s < 16:
            continue
        cx = rng.uniform(b[0], b[2])
        cy = rng.uniform(b[1] + 0.3 * (b[3] - b[1]), b[3])
        ax, ay = s * rng.uniform(0.12, 0.3), s * rng.uniform(0.12, 0.35)
        x0, y0 = int(max(0, cx - ax)), int(max(0, cy - ay))
        x1, y1 = int(min(img.shape[1], cx + ax + 1)), int(min(img.shape[0], cy + ay + 1))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        tex = D.random_texture(rng, x1 - x0, y1 - y0)
        m = np.zeros((y1 - y0, x1 - x0), np.float32)
        cv2.ellipse(m, (int(cx - x0), int(cy - y0)), (int(ax), int(ay)), float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        m = cv2.GaussianBlur(m, (0, 0), 1.0)[..., None]
        reg = img[y0:y1, x0:x1].astype(np.float32)
        img[y0:y1, x0:x1] = (reg * (1 - m) + tex.astype(np.float32) * m).astype(np.uint8)
    return img


def rotated_label(R, angle, flip):
    if flip:
        R = MD.S_FLIP @ R @ MD.S_FLIP
    return MD.rot_z(angle) @ R


class FaceInfo:
    """what a face supervises besides detection: rotation / blendshapes (None = no target), a multiplier of its
    landmark weight, and whether its 5 detector keypoints are real."""
    __slots__ = ("R", "blend", "lmk_w", "kps")

    def __init__(self, R=None, blend=None, lmk_w=1.0, kps=True):
        self.R, self.blend, self.lmk_w, self.kps = R, blend, lmk_w, kps


def room_targets(objs, infos, content, rng, box_jitter):
    """D.make_targets + the MFN's face targets + a per-object keypoint mask, all in make_targets' object order."""
    t = D.make_targets(objs, content)
    labels = [(i.R, i.blend) for i in infos]
    cen, size, tgt, wts = MD.face_targets(objs, labels, content, rng, box_jitter)
    kmsk = np.zeros(D.MAX_OBJ, np.float32)
    n = 0
    for (lmk, pos), info in zip(objs, infos):
        if n >= D.MAX_OBJ:
            break
        if not D.is_positive(lmk, pos, content):
            continue
        kmsk[n] = float(info.kps)
        wts[n, 0] *= info.lmk_w
        n += 1
    t.update(fcen=cen, fsize=size, ftgt=tgt, fw=wts, kmsk=kmsk)
    return t


class RoomTrainSet(torch.utils.data.Dataset):
    def __init__(self, data, n, seed, epoch, box_jitter=0.03, p_groups=0.36, p_scene=0.12, p_mixed=0.12, p_many=0.5):
        self.d, self.n, self.seed, self.epoch = data, n, seed, epoch
        self.p_many = p_many
        self.box_jitter = box_jitter
        self.p_groups, self.p_scene, self.p_mixed = p_groups, p_scene, p_mixed

    def __len__(self):
        return self.n

    def group_sample(self, rng):
        g = self.d.groups
        k = int(rng.integers(0, len(g)))
        img = D.dec_jpeg(g.jpeg[k])
        f = g.faces[k]
        info = []
        faces = {"lmk": f["lmk68"], "confirmed": f["kind"] != 2}
        out, objs, content = D.scene_sample(img, faces, rng, scale_range=(0.6, 1.7), info=info)
        angle, flip = info[0]
        infos = []
        for j in range(len(objs)):
            if f["kind"][j] != 0:
                infos.append(FaceInfo(lmk_w=0.0, kps=False))
                continue
            R = rotated_label(f["R"][j].astype(np.float64), angle, flip) if f["has_R"][j] else None
            masked = bool(f["masked"][j])
            blend = None
            if f["has_blend"][j] and not masked:
                blend = f["blend"][j].astype(np.float32)
                if flip:
                    blend = blend[self.d.bperm]
            infos.append(FaceInfo(R, blend, MASKED_LMK_WEIGHT if masked else 1.0, True))
        return D.color_jitter(out, rng), objs, infos, content

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.epoch, i, 640])
        d, c = self.d, self.d.det
        pick = lambda: int(rng.choice(len(d.face_p), p=d.face_p))  # noqa: E731
        u = rng.random()
        content = (ROOM_W, ROOM_H)
        meta = []
        if u < self.p_groups:
            img, objs, infos, content = self.group_sample(rng)
        elif u < self.p_groups + self.p_scene + self.p_mixed:
            k = int(rng.integers(0, len(c.train_imgs)))
            img, objs, content = D.scene_sample(c.train_imgs[k], c.train_faces[k], rng)
            img = D.color_jitter(img, rng)
            infos = [FaceInfo() for _ in objs]
            if u >= self.p_groups + self.p_scene:
                cwi, chi = int(content[0]), int(content[1])
                sub = np.ascontiguousarray(img[:chi, :cwi])
                sub, objs = D.composite(rng, None, None, d.face_imgs, d.face_lmk, pick, int(rng.integers(1, 9)),
                                        size_range=(12, 260), existing=objs, canvas=sub, content=(cwi, chi),
                                        meta=meta, sharp=d.sharp)
                img[:chi, :cwi] = sub
                infos += [FaceInfo(*d.pasted_label(*m)) for m in meta]
        else:
            if rng.random() < 0.75:
                content = (ROOM_W, ROOM_H)
            else:
                content = [(640, 360), (480, 480), (360, 480), (270, 480), (640, 400)][int(rng.integers(0, 5))]
            many = rng.random() < self.p_many
            nf = int(rng.integers(4, 21)) if many else int(rng.integers(1, 4))
            # crowds of small faces, or a few larger ones (landmark detail), up to a face close to the camera
            size_range = (12, 200) if many else (60, 460)
            sub, objs = D.composite(rng, c.train_imgs, c.train_faces, d.face_imgs, d.face_lmk, pick, nf,
                                    size_range=size_range, content=content, meta=meta, sharp=d.sharp)
            img = np.zeros((ROOM_H, ROOM_W, 3), np.uint8)
            img[:content[1], :content[0]] = D.color_jitter(sub, rng, 0.6)
            infos = [FaceInfo(*d.pasted_label(*m)) for m in meta]
        img = occlude(img, objs, rng)
        img = webcam_degrade(img, rng)
        t = room_targets(objs, infos, content, rng, self.box_jitter)
        x = (torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0 - 0.5) / 0.5
        return x, {k: torch.from_numpy(v) for k, v in t.items()}


def val_frame(crop, lmk):
    """a HELEN test crop used as the whole 640x480 frame (letterboxed top-left, as the Rust letterbox)."""
    return MD.val_frame(crop, lmk)


if __name__ == "__main__":
    # a look at the samples: writes /tmp/room_samples.jpg (a 3x3 mosaic with the positive boxes) and checks
    # that targets and inputs have the 640x480 shapes
    import time
    data = RoomData("training/cache/det", "training/cache", "training/cache/groups.npz")
    ds = RoomTrainSet(data, 64, 1, 0)
    t0 = time.time()
    tiles = []
    for i in range(9):
        x, t = ds[i]
        assert x.shape == (3, ROOM_H, ROOM_W), x.shape
        assert t["hm"].shape == (ROOM_H // 4, ROOM_W // 4)
        img = ((x.permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255).astype(np.uint8).copy()
        for n in range(int(t["msk"].sum())):
            c, s = t["fcen"][n].numpy(), float(t["fsize"][n])
            col = (0, 255, 0) if t["fw"][n, 0] > 0 else (255, 0, 0)
            cv2.rectangle(img, (int(c[0] - s / 2), int(c[1] - s / 2)), (int(c[0] + s / 2), int(c[1] + s / 2)), col, 1)
        tiles.append(cv2.resize(img, (320, 240), interpolation=cv2.INTER_AREA))
    print(f"{(time.time() - t0) / 9 * 1000:.0f} ms per sample")
    rows = [np.hstack(tiles[r * 3:r * 3 + 3]) for r in range(3)]
    cv2.imwrite("/tmp/room_samples.jpg", cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
