"""SFN data: cache loading, crop rule, augmentation, confidence negatives."""
import math
import os

import cv2
import numpy as np
import torch

# no OpenCV thread pool: it does not survive the DataLoader fork (deadlock) and we stay within 2 cores
cv2.setNumThreads(0)

OUT = 112          # network input size
CROP_SCALE = 1.4   # crop side = CROP_SCALE * max(tight box w, h)

# iBUG-68 horizontal mirror permutation: flipped[k] = original[FLIP_PERM[k]]
FLIP_PERM = np.array(
    list(range(16, -1, -1))                       # jaw 0-16
    + list(range(26, 16, -1))                     # brows 17-21 <-> 26-22
    + [27, 28, 29, 30]                            # nose bridge
    + [35, 34, 33, 32, 31]                        # nostrils
    + [45, 44, 43, 42, 47, 46]                    # right eye 36-41 <- left eye
    + [39, 38, 37, 36, 41, 40]                    # left eye 42-47 <- right eye
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65]            # inner lips
)
assert sorted(FLIP_PERM.tolist()) == list(range(68))
assert all(FLIP_PERM[FLIP_PERM[k]] == k for k in range(68))
S_FLIP = np.diag([-1.0, 1.0, 1.0])


def blend_flip_perm(names):
    idx = {n: i for i, n in enumerate(names)}
    perm = []
    for n in names:
        if "Left" in n:
            perm.append(idx[n.replace("Left", "Right")])
        elif "Right" in n:
            perm.append(idx[n.replace("Right", "Left")])
        else:
            perm.append(idx[n])
    return np.array(perm)


def rot_z(deg):
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class FaceCache:
    def __init__(self, cache_dir, decode=True, faces_file="faces.npz"):
        z = np.load(os.path.join(cache_dir, faces_file))
        self.jpeg, self.offsets = z["jpeg"], z["offsets"]
        self.gray, self.split = z["gray"], z["split"]
        self.lmk = z["lmk"].astype(np.float32)
        self.R = z["R"].astype(np.float64)
        self.has_pose, self.has_blend = z["has_pose"], z["has_blend"]
        self.blend = z["blend"].astype(np.float32)
        self.names = [n.decode() for n in z["names"]]
        self.blend_names = [str(n) for n in z["blendshape_names"]]
        self.n = len(self.gray)
        # per-face landmark weight (groups/prepare.py --sfn-out: masked faces 0.3); 1 elsewhere
        self.lmk_weight = z["lmk_weight"] if "lmk_weight" in z else np.ones(self.n, np.float32)
        self.images = None
        if decode:
            # decoded straight into one array: a list of per-image arrays, stacked, leaves gigabytes of
            # fragmented heap behind (glibc raises its mmap threshold after the first big free)
            first = self._dec(self.jpeg[self.offsets[0]:self.offsets[1]])
            self.images = np.empty((self.n,) + first.shape, np.uint8)
            for i in range(self.n):
                self.images[i] = self._dec(self.jpeg[self.offsets[i]:self.offsets[i + 1]])
        zn = np.load(os.path.join(cache_dir, "neg.npz"))
        self.neg = np.stack([self._dec(zn["jpeg"][zn["offsets"][i]:zn["offsets"][i + 1]])
                             for i in range(len(zn["offsets"]) - 1)])

    @staticmethod
    def _dec(buf):
        im = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if im.ndim == 2:
            return np.repeat(im[:, :, None], 3, 2)
        return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)

    def decode(self, i):
        if self.images is not None:
            return self.images[i]
        return self._dec(self.jpeg[self.offsets[i]:self.offsets[i + 1]])


def box_of(lmk):
    x0, y0 = lmk.min(0)
    x1, y1 = lmk.max(0)
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2]), CROP_SCALE * max(x1 - x0, y1 - y0)


def crop_affine(center, side, angle_deg=0.0, flip=False, out=OUT):
    """2x3 affine A (continuous coords) mapping source -> crop pixels: q = (out/side) Rot(angle) (p - c) + out/2,
    angle>0 rotates the image content counter-clockwise; then optional horizontal flip q_x -> out - q_x."""
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    k = out / side
    L = k * np.array([[c, s], [-s, c]])
    b = out / 2 - L @ center
    A = np.concatenate([L, b[:, None]], 1)
    if flip:
        A = np.array([[-1.0, 0, out], [0, 1, 0]]) @ np.vstack([A, [0, 0, 1]])
    return A


def warp(img, A, out=OUT):
    """apply continuous-coordinate affine A with cv2 (integer-centred indices)."""
    Ai = A.copy()
    Ai[:, 2] = A[:, :2] @ np.array([0.5, 0.5]) + A[:, 2] - 0.5
    return cv2.warpAffine(img, Ai, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def apply_affine(A, pts):
    return pts @ A[:, :2].T + A[:, 2]


def val_crop_lmk(lmk):
    """landmarks in [0,1] coords of their own tight-box crop."""
    c, s = box_of(lmk)
    return apply_affine(crop_affine(c, s), lmk) / OUT


def val_crop(img, lmk):
    """validation / inference crop: GT tight box, no augmentation. Returns (uint8 112x112x3, lmk in [0,1])."""
    c, s = box_of(lmk)
    A = crop_affine(c, s)
    return warp(img, A), apply_affine(A, lmk) / OUT


# ---------------------------------------------------------------- photometric / occlusion augmentation
def random_texture(rng, size=OUT):
    kind = rng.integers(0, 5)
    if kind == 0:  # flat colour (incl. black)
        col = rng.integers(0, 256, 3) if rng.random() < 0.7 else np.zeros(3)
        img = np.ones((size, size, 3)) * col
    elif kind == 1:  # smooth noise
        g = rng.integers(2, 16)
        img = cv2.resize(rng.uniform(0, 255, (g, g, 3)), (size, size), interpolation=cv2.INTER_CUBIC)
    elif kind == 2:  # gradient
        yy, xx = np.mgrid[0:size, 0:size] / size
        a, b = rng.normal(size=2)
        base = (a * xx + b * yy)[:, :, None] * rng.uniform(-255, 255, 3) + rng.uniform(0, 255, 3)
        img = base
    elif kind == 3:  # white-ish noise
        img = rng.normal(rng.uniform(30, 220), rng.uniform(10, 80), (size, size, 3))
    else:  # random shapes
        img = np.ones((size, size, 3)) * rng.integers(0, 256, 3)
        for _ in range(rng.integers(3, 12)):
            draw_shape(img, rng, size)
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_shape(img, rng, size, fill=None):
    col = tuple(int(v) for v in (rng.integers(0, 256, 3) if fill is None else fill))
    w, h = rng.uniform(0.1, 0.5, 2) * size
    cx, cy = rng.uniform(0, size, 2)
    if rng.random() < 0.5:
        cv2.rectangle(img, (int(cx - w / 2), int(cy - h / 2)), (int(cx + w / 2), int(cy + h / 2)), col, -1)
    else:
        cv2.ellipse(img, (int(cx), int(cy)), (int(w / 2), int(h / 2)), float(rng.uniform(0, 180)), 0, 360, col, -1)


def occlude(img, rng, neg_pool):
    size = img.shape[0]
    for _ in range(rng.integers(1, 3)):
        m = np.zeros((size, size, 3), np.uint8)
        w, h = rng.uniform(0.12, 0.5, 2) * size
        cx, cy = rng.uniform(0.1, 0.9, 2) * size
        if rng.random() < 0.5:
            cv2.rectangle(m, (int(cx - w / 2), int(cy - h / 2)), (int(cx + w / 2), int(cy + h / 2)), (1, 1, 1), -1)
        else:
            cv2.ellipse(m, (int(cx), int(cy)), (int(w / 2), int(h / 2)), float(rng.uniform(0, 180)), 0, 360,
                        (1, 1, 1), -1)
        r = rng.random()
        if r < 0.4:
            fill = np.ones_like(img) * rng.integers(0, 256, 3).astype(np.uint8)
        elif r < 0.7 and neg_pool is not None:
            fill = cv2.resize(neg_pool[rng.integers(len(neg_pool))], (size, size))
        else:
            fill = random_texture(rng, size)
        img = np.where(m > 0, fill, img)
    return img


def photometric(img, rng, gray_src, neg_pool=None, occlusion_prob=0.35):
    img = img.astype(np.float32)
    if not gray_src and rng.random() < 0.2:
        g = img @ np.array([0.299, 0.587, 0.114], np.float32)
        img = np.repeat(g[:, :, None], 3, 2)
    if not gray_src and rng.random() < 0.8:  # saturation + white balance
        g = (img @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
        img = g + (img - g) * rng.uniform(0.5, 1.5)
        img = img * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    if rng.random() < 0.8:  # brightness / contrast
        m = img.mean()
        img = (img - m) * rng.uniform(0.6, 1.4) + m * rng.uniform(0.6, 1.4)
    img = np.clip(img, 0, 255)
    if rng.random() < 0.4:  # gamma
        img = 255.0 * (img / 255.0) ** rng.uniform(0.6, 1.7)
    if rng.random() < 0.12:  # low light
        img = img * rng.uniform(0.12, 0.45)
        img = img + rng.normal(0, rng.uniform(1, 6), img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < occlusion_prob:
        img = occlude(img, rng, neg_pool)
    r = rng.random()
    if r < 0.2:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.8))
    elif r < 0.27:  # motion blur
        k = int(rng.integers(3, 8))
        ker = np.zeros((k, k), np.float32)
        ker[k // 2, :] = 1.0 / k
        M = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        ker = cv2.warpAffine(ker, M, (k, k))
        img = cv2.filter2D(img, -1, ker / max(ker.sum(), 1e-6))
    elif r < 0.37:  # low resolution
        s = int(rng.integers(32, 80))
        img = cv2.resize(cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA), (OUT, OUT),
                         interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.3:
        sig = rng.uniform(2, 12)
        n = rng.normal(0, sig, img.shape[:2] + ((1,) if rng.random() < 0.5 else (3,)))
        img = np.clip(img + n, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 85))])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if gray_src:
        img = np.repeat(img.mean(2, keepdims=True), 3, 2).astype(np.uint8)
    return img


def small_face(img, rng):
    """the crop as a face 14-100 px tall would give it: shrunk to that (the crop is CROP_SCALE x the face),
    sometimes JPEG-compressed at that size, then enlarged back to the input size."""
    side = int(round(math.exp(rng.uniform(math.log(14), math.log(100))) * CROP_SCALE))
    small = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.4:
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 90))])
        small = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return cv2.resize(small, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------- samples
KIND_POS, KIND_PART, KIND_SHIFT, KIND_BG, KIND_SYN = 0, 1, 2, 3, 4


def iou_sq(c1, s1, c2, s2):
    ix = max(0.0, min(c1[0] + s1 / 2, c2[0] + s2 / 2) - max(c1[0] - s1 / 2, c2[0] - s2 / 2))
    iy = max(0.0, min(c1[1] + s1 / 2, c2[1] + s2 / 2) - max(c1[1] - s1 / 2, c2[1] - s2 / 2))
    inter = ix * iy
    return inter / (s1 * s1 + s2 * s2 - inter)


class SFNTrainSet(torch.utils.data.Dataset):
    """plan: int array (M,2) of (kind, index). Sample m uses rng seeded by (seed, epoch, m): deterministic."""

    def __init__(self, cache, plan, seed, epoch, aug=True, wide_rotation_prob=0.85, occlusion_prob=0.35,
                 small_face_prob=0.0):
        self.c, self.plan, self.seed, self.epoch, self.aug = cache, plan, seed, epoch, aug
        # share of crops shrunk to what a face 14-100 px tall gives (then enlarged to the input): small faces
        self.small_face_prob = small_face_prob
        # a late fine-tuning phase lowers both (sfn/train.py --wide-rotation-prob / --occlusion-prob)
        self.wide_rotation_prob, self.occlusion_prob = wide_rotation_prob, occlusion_prob
        self.bperm = blend_flip_perm(cache.blend_names)

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, m):
        kind, i = int(self.plan[m, 0]), int(self.plan[m, 1])
        rng = np.random.default_rng([self.seed, self.epoch, m])
        c = self.c
        lmk_t = np.zeros((68, 2), np.float32)
        R = np.eye(3)
        blend = np.zeros(51, np.float32)
        w_lmk = w_pose = w_blend = 0.0
        gray = False
        if kind in (KIND_POS, KIND_PART, KIND_SHIFT):
            img = c.decode(i)
            gray = bool(c.gray[i])
            center, side = box_of(c.lmk[i])
            ang = float(rng.uniform(-35, 35)) if rng.random() < self.wide_rotation_prob else float(rng.uniform(-8, 8))
            flip = bool(rng.random() < 0.5)
            if kind == KIND_POS:
                side2 = side * float(np.exp(rng.uniform(np.log(0.8), np.log(1.2))))
                cen2 = center + rng.uniform(-0.1, 0.1, 2) * side
            elif kind == KIND_PART:
                side2 = side * rng.uniform(0.2, 0.45)
                cen2 = center + rng.uniform(-0.35, 0.35, 2) * side
            else:
                side2 = side * rng.uniform(0.8, 1.3)
                while True:
                    cen2 = center + rng.uniform(-1.2, 1.2, 2) * side
                    if iou_sq(center, side, cen2, side2) < 0.25:
                        break
            A = crop_affine(cen2, side2, ang, flip)
            img = warp(img, A)
            if self.small_face_prob and rng.random() < self.small_face_prob:
                img = small_face(img, rng)
            if kind == KIND_POS:
                p = apply_affine(A, c.lmk[i]) / OUT
                Rl = rot_z(ang) @ c.R[i]
                b = c.blend[i]
                if flip:
                    p = p[FLIP_PERM]
                    Rl = S_FLIP @ Rl @ S_FLIP
                    b = b[self.bperm]
                lmk_t, R, blend = p.astype(np.float32), Rl, b
                w_lmk = float(c.lmk_weight[i])
                w_pose = float(c.has_pose[i])
                w_blend = float(c.has_blend[i])
        elif kind == KIND_BG:
            src = c.neg[i]
            side = rng.uniform(0.5, 1.0) * src.shape[0]
            cen = rng.uniform(side / 2, src.shape[0] - side / 2, 2)
            img = warp(src, crop_affine(cen, side, float(rng.uniform(-30, 30)), bool(rng.random() < 0.5)))
        else:
            img = random_texture(rng)
        if self.aug:
            img = photometric(img, rng, gray, c.neg, self.occlusion_prob)
        conf = 1.0 if kind == KIND_POS else 0.0
        R6 = np.concatenate([R[:, 0], R[:, 1]]).astype(np.float32)
        return (torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                torch.from_numpy(lmk_t.reshape(-1)), torch.from_numpy(R6), torch.from_numpy(blend),
                torch.tensor([w_lmk, w_pose, w_blend, conf], dtype=torch.float32))


def make_plan(cache, seed, epoch, helen_weight=3, neg_frac=0.2, subset=None):
    """one epoch: every training face once (HELEN train helen_weight times) + neg_frac negatives, shuffled."""
    rng = np.random.default_rng([seed, epoch, 999])
    helen = np.nonzero(cache.split == 0)[0]
    wild = np.nonzero(cache.split == 2)[0]
    pos = np.concatenate([np.tile(helen, helen_weight), wild])
    if subset:
        pos = rng.choice(pos, size=min(subset, len(pos)), replace=False)
    n_neg = int(round(len(pos) * neg_frac / (1 - neg_frac)))
    train_faces = np.concatenate([helen, wild])
    kinds = rng.choice([KIND_PART, KIND_SHIFT, KIND_BG, KIND_SYN], size=n_neg, p=[0.25, 0.2, 0.35, 0.2])
    idx = np.where(kinds == KIND_BG, rng.integers(0, len(cache.neg), n_neg), rng.choice(train_faces, n_neg))
    plan = np.concatenate([np.stack([np.zeros_like(pos), pos], 1), np.stack([kinds, idx], 1)])
    return plan[rng.permutation(len(plan))].astype(np.int64)


def make_val(cache, seed=7):
    """validation tensors: HELEN test crops (GT tight box) + fixed negatives for the confidence head."""
    test = np.nonzero(cache.split == 1)[0]
    imgs, lmks = [], []
    for i in test:
        im, p = val_crop(cache.decode(i), cache.lmk[i])
        imgs.append(im)
        lmks.append(p)
    R6 = np.stack([np.concatenate([cache.R[i][:, 0], cache.R[i][:, 1]]) for i in test]).astype(np.float32)
    plan = np.stack([np.random.default_rng(seed).choice([KIND_PART, KIND_SHIFT, KIND_BG, KIND_SYN], len(test)),
                     test], 1)
    bg = np.random.default_rng(seed + 1).integers(0, len(cache.neg), len(test))
    plan[plan[:, 0] == KIND_BG, 1] = bg[plan[:, 0] == KIND_BG]
    ds = SFNTrainSet(cache, plan, seed, 0, aug=False)
    neg = np.stack([ds[m][0].numpy().transpose(1, 2, 0) for m in range(len(plan))])
    return {
        "img": torch.from_numpy(np.stack(imgs).transpose(0, 3, 1, 2).copy()),
        "lmk": torch.from_numpy(np.stack(lmks).astype(np.float32)),
        "R": torch.from_numpy(cache.R[test].astype(np.float32)),
        "R6": torch.from_numpy(R6),
        "blend": torch.from_numpy(cache.blend[test]),
        "has_pose": torch.from_numpy(cache.has_pose[test]),
        "neg_img": torch.from_numpy(neg.transpose(0, 3, 1, 2).copy()),
        "teacher_lmk": None,
    }


def normalize(u8):
    return (u8.float() / 255.0 - 0.5) / 0.5
