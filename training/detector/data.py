"""Detector data: cache loading, letterbox, scene augmentation, on-the-fly face composites, CenterNet targets."""
import math
import os

import cv2
import numpy as np
import torch

cv2.setNumThreads(0)  # no OpenCV thread pool (fork-safe, stays within 2 cores)

IN_W, IN_H = 320, 240
STRIDE = 4
OW, OH = IN_W // STRIDE, IN_H // STRIDE


def set_input_size(w, h):
    """the network input (canvas) size every sample, target and letterbox here uses: the detector's 320x240, or
    640x480 for the room MFN (mfn/room_data.py). Call it before building datasets (DataLoader workers inherit it)."""
    global IN_W, IN_H, OW, OH
    IN_W, IN_H = w, h
    OW, OH = w // STRIDE, h // STRIDE
MAX_OBJ = 48
MIN_FACE = 6.0      # faces whose tight box max side is below this (input px) are ignore regions, not positives
FACE_SIDE = 128     # cached face crop size (crop = 1.6 x max box side, centred on the 68-point box)
SHARP_FROM = FACE_SIDE / 1.6  # pasted larger than this (px, box side), a FACE_SIDE crop would be enlarged

# iBUG-68 horizontal mirror permutation: flipped[k] = original[FLIP_PERM[k]]
FLIP_PERM = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65])


def five_points(lmk):
    """68 points (...,68,2) -> 5 keypoints (...,5,2): right eye, left eye, nose tip, right / left mouth corner."""
    return np.stack([lmk[..., 36:42, :].mean(-2), lmk[..., 42:48, :].mean(-2), lmk[..., 30, :],
                     lmk[..., 48, :], lmk[..., 54, :]], -2)


def box_of(lmk):
    return np.array([lmk[:, 0].min(), lmk[:, 1].min(), lmk[:, 0].max(), lmk[:, 1].max()], np.float32)


def letterbox(img, size=(IN_W, IN_H)):
    """img HxWx3 uint8 (any size) -> (H x W x 3 uint8 for size (W, H), s). Scale s = min(1, W/w, H/h) (never
    enlarged), bilinear, top-left, black."""
    in_w, in_h = size
    h, w = img.shape[:2]
    s = min(1.0, in_w / w, in_h / h)
    nw, nh = min(in_w, int(math.floor(w * s + 0.5))), min(in_h, int(math.floor(h * s + 0.5)))
    out = np.zeros((in_h, in_w, 3), np.uint8)
    out[:nh, :nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, s


def normalize(u8):
    """uint8 N,H,W,3 (numpy or tensor) -> float32 N,3,H,W in [-1,1]."""
    t = torch.as_tensor(u8)
    return (t.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5


def dec_jpeg(buf):
    im = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
    if im.ndim == 2:
        return np.repeat(im[:, :, None], 3, 2)
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)


def enc_jpeg(img, q):
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(q)])
    assert ok
    return buf.tobytes()


def pack(bufs):
    offs = np.zeros(len(bufs) + 1, np.int64)
    offs[1:] = np.cumsum([len(b) for b in bufs])
    return np.frombuffer(b"".join(bufs), np.uint8), offs


def unpack(data, offs):
    return [data[offs[i]:offs[i + 1]].tobytes() for i in range(len(offs) - 1)]


class DetCache:
    """training/cache/det/*.npz (see detector/prepare.py)."""

    def __init__(self, cache_dir, load=("train", "faces", "test", "valcomp")):
        self.dir = cache_dir
        if "train" in load:
            z = np.load(os.path.join(cache_dir, "scenes_train.npz"))
            self.train_imgs = [dec_jpeg(b) for b in unpack(z["jpeg"], z["offsets"])]
            self.train_faces = self._faces(z)
        if "faces" in load:
            z = np.load(os.path.join(cache_dir, "faces.npz"))
            bufs = unpack(z["jpeg"], z["offsets"])
            first = dec_jpeg(bufs[0])
            self.face_imgs = np.empty((len(bufs),) + first.shape, np.uint8)
            for i, b in enumerate(bufs):  # into one array: see sfn_data.FaceCache
                self.face_imgs[i] = dec_jpeg(b)
            self.face_lmk = z["lmk"].astype(np.float32)
            self.face_gray = z["gray"].astype(bool)
            self.face_src = z["src"]  # 0 helen train, 1 wild colour, 2 wild gray, 3 helen test (validation)
        if "test" in load:
            z = np.load(os.path.join(cache_dir, "scenes_test.npz"))
            self.test_jpeg = unpack(z["jpeg"], z["offsets"])
            self.test_scale = z["scale"]
            self.test_names = [str(n) for n in z["names"]]
            self.test_faces = self._faces(z)
        if "valcomp" in load:
            z = np.load(os.path.join(cache_dir, "valcomp.npz"))
            self.vc_jpeg = unpack(z["jpeg"], z["offsets"])
            self.vc_faces = self._faces(z)

    @staticmethod
    def _faces(z):
        """per image: dict box (n,4), lmk (n,68,2), confirmed (n,), annotated (n,)."""
        fo = z["face_offsets"]
        out = []
        for i in range(len(fo) - 1):
            a, b = fo[i], fo[i + 1]
            out.append({"box": z["box"][a:b].astype(np.float32), "lmk": z["lmk68"][a:b].astype(np.float32),
                        "confirmed": z["confirmed"][a:b].astype(bool), "annotated": z["annotated"][a:b].astype(bool)})
        return out


# ---------------------------------------------------------------- image helpers

def random_texture(rng, w=None, h=None):
    w, h = w or IN_W, h or IN_H
    kind = rng.integers(0, 5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # gradient
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        a = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a))
        t = (t - t.min()) / max(1e-6, t.max() - t.min())
        img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    elif kind == 1:  # smooth noise (clouds)
        sc = int(rng.integers(2, 24))
        small = rng.uniform(0, 255, (max(2, h // sc), max(2, w // sc), 3)).astype(np.float32)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    elif kind == 2:  # stripes / checker
        f = rng.uniform(0.02, 0.3)
        a = rng.uniform(0, math.pi)
        v = np.sin((xx * math.cos(a) + yy * math.sin(a)) * f)
        if rng.random() < 0.5:
            v = v * np.sin((-xx * math.sin(a) + yy * math.cos(a)) * f)
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (v[..., None] + 1) / 2
        img = c0 * (1 - t) + c1 * t
    elif kind == 3:  # random shapes
        img = np.full((h, w, 3), rng.uniform(0, 255, 3), np.float32)
        for _ in range(int(rng.integers(5, 40))):
            col = tuple(float(c) for c in rng.uniform(0, 255, 3))
            p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            if rng.random() < 0.5:
                cv2.circle(img, p, int(rng.integers(3, 60)), col, -1)
            else:
                q = (int(rng.integers(0, w)), int(rng.integers(0, h)))
                cv2.rectangle(img, p, q, col, -1) if rng.random() < 0.5 else cv2.line(img, p, q, col,
                                                                                      int(rng.integers(1, 8)))
    else:  # white noise + blur
        img = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 4)))
    return np.clip(img, 0, 255).astype(np.uint8)


def color_jitter(img, rng, strength=1.0):
    x = img.astype(np.float32) / 255.0
    if rng.random() < 0.1 * strength:
        g = x.mean(2, keepdims=True)
        x = np.repeat(g, 3, 2)
    else:
        g = x.mean(2, keepdims=True)
        x = g + (x - g) * rng.uniform(0.5, 1.4)  # saturation
        x = x * rng.uniform(0.85, 1.15, 3)  # white balance
    x = (x - 0.5) * rng.uniform(0.6, 1.3) + 0.5  # contrast
    x = x * rng.uniform(0.6, 1.35)  # brightness
    x = np.clip(x, 0, 1) ** rng.uniform(0.65, 1.6)  # gamma
    if rng.random() < 0.12 * strength:  # low light
        x = x * rng.uniform(0.12, 0.4)
    return np.clip(x * 255, 0, 255).astype(np.uint8)


def degrade(img, rng):
    if rng.random() < 0.25:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.3, 1.6)))
    if rng.random() < 0.3:
        n = rng.normal(0, rng.uniform(2, 12), img.shape)
        img = np.clip(img.astype(np.float32) + n, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        img = dec_jpeg(enc_jpeg(img, rng.integers(25, 90)))
    return img


def aff_apply(A, pts):
    return pts @ A[:, :2].T + A[:, 2]


def to_index(A):
    """affine in continuous coords (pixel centres at +0.5) -> cv2.warpAffine matrix (centres at integers)."""
    M = A.astype(np.float64).copy()
    M[:, 2] = A[:, 2] + A[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return M


# ---------------------------------------------------------------- face pasting

def _face_mask(lmk, rng, side=FACE_SIDE):
    """soft elliptical mask (float32 side^2, 0..1) around the face, incl. some forehead."""
    b = box_of(lmk)
    w, h = b[2] - b[0], b[3] - b[1]
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2 - h * rng.uniform(0.02, 0.15)
    f = rng.uniform(0.95, 1.35)
    ax, ay = 0.5 * w * f * rng.uniform(1.05, 1.25), 0.5 * h * f * rng.uniform(1.1, 1.35)
    m = np.zeros((side, side), np.float32)
    cv2.ellipse(m, (int(round(cx * 4)), int(round(cy * 4))), (int(ax * 4), int(ay * 4)), 0, 0, 360, 1.0, -1,
                lineType=cv2.LINE_AA, shift=2)
    k = max(w, h) * rng.uniform(0.04, 0.15)
    m = cv2.GaussianBlur(m, (0, 0), float(k))
    return m


def paste_face(canvas, face, lmk, rng, size, center, angle, flip, color_strength=1.0):
    """Paste a square face crop (any side; lmk in crop px) so that the tight box max side becomes `size` px,
    centred at `center`, rotated by `angle` degrees. Modifies canvas (HxWx3 uint8) in place; returns the new 68 points."""
    side = face.shape[0]
    if flip:
        face = face[:, ::-1]
        lmk = lmk.copy()
        lmk[:, 0] = side - lmk[:, 0]
        lmk = lmk[FLIP_PERM]
    face = color_jitter(np.ascontiguousarray(face), rng, 0.5 * color_strength)
    b = box_of(lmk)
    sc = size / max(b[2] - b[0], b[3] - b[1])
    c0 = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
    a = math.radians(angle)
    R = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]) * sc
    A = np.zeros((2, 3))
    A[:, :2] = R
    A[:, 2] = np.asarray(center) - R @ c0
    H, W = canvas.shape[:2]
    mask = _face_mask(lmk, rng, side)
    # warp only the bounding region of the destination
    corners = aff_apply(A, np.array([[0, 0], [side, 0], [0, side], [side, side]], np.float64))
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
    if x1 <= x0 or y1 <= y0:
        return aff_apply(A, lmk)
    A2 = A.copy()
    A2[:, 2] -= [x0, y0]
    interp = cv2.INTER_AREA if sc < 0.7 else cv2.INTER_LINEAR
    if sc < 0.5:  # pre-shrink for proper antialiasing
        ps = max(sc * 1.5, 0.05)
        n = max(8, int(round(side * ps)))
        fs = n / side
        face_s = cv2.resize(face, (n, n), interpolation=cv2.INTER_AREA)
        mask_s = cv2.resize(mask, (n, n), interpolation=cv2.INTER_AREA)
        S = np.diag([1 / fs, 1 / fs, 1.0])
        A2s = to_index((np.vstack([A2, [0, 0, 1]]) @ S)[:2])
        fw = cv2.warpAffine(face_s, A2s, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        mw = cv2.warpAffine(mask_s, A2s, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderValue=0)
    else:
        fw = cv2.warpAffine(face, to_index(A2), (x1 - x0, y1 - y0), flags=interp, borderMode=cv2.BORDER_REFLECT)
        mw = cv2.warpAffine(mask, to_index(A2), (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderValue=0)
    reg = canvas[y0:y1, x0:x1].astype(np.float32)
    m = mw[..., None]
    canvas[y0:y1, x0:x1] = np.clip(reg * (1 - m) + fw.astype(np.float32) * m, 0, 255).astype(np.uint8)
    return aff_apply(A, lmk)


def face_free_background(img, faces, rng, tries=12):
    """random crop of a scene that avoids every face box expanded x1.6 (None if not found)."""
    H, W = img.shape[:2]
    exp = []
    for b in faces["box"]:
        cx, cy, w, h = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, (b[2] - b[0]) * 0.8, (b[3] - b[1]) * 0.8
        exp.append((cx - w, cy - h * 1.2, cx + w, cy + h))
    for _ in range(tries):
        cw = int(rng.uniform(0.2, 0.8) * W)
        ch = int(min(H, cw * rng.uniform(0.6, 0.9)))
        if cw < 48 or ch < 36:
            continue
        x = int(rng.integers(0, W - cw + 1))
        y = int(rng.integers(0, H - ch + 1))
        ok = all(x1 <= x or x0 >= x + cw or y1 <= y or y0 >= y + ch for x0, y0, x1, y1 in exp)
        if ok:
            return img[y:y + ch, x:x + cw]
    return None


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(ua, 1e-6), inter


def composite(rng, backgrounds, bg_faces, face_imgs, face_lmk, face_pick, n_faces, size_range=(10, 220),
              existing=None, canvas=None, content=None, meta=None, sharp=None):
    """Build a composite. backgrounds / bg_faces: scene images + their faces (for face-free crops).
    face_pick(): index of a face crop. Returns (uint8 HxWx3, list of (lmk68, confirmed)).
    sharp: optional (images, lmk) of the same faces at a larger crop size; faces pasted larger than SHARP_FROM px
    come from it, so they are not enlarged (soft) 128-px crops. The random stream does not depend on it.
    meta: optional list; gets (face index, angle deg, flipped) per pasted face (the MFN needs them to carry
    pose and blendshape labels through the paste). The random stream is the same with or without it."""
    cw, ch = content or (IN_W, IN_H)
    if canvas is None:
        bg = None
        if backgrounds is not None and rng.random() < 0.7:
            for _ in range(4):
                i = int(rng.integers(0, len(backgrounds)))
                bg = face_free_background(backgrounds[i], bg_faces[i], rng)
                if bg is not None:
                    break
        if bg is None:
            bg = random_texture(rng, cw, ch)
        else:
            bg = cv2.resize(bg, (cw, ch), interpolation=cv2.INTER_LINEAR)
            if rng.random() < 0.5:
                bg = bg[:, ::-1]
            bg = color_jitter(bg, rng, 0.7)
        canvas = np.ascontiguousarray(bg)
    objs = list(existing or [])
    boxes = [box_of(l) for l, _ in objs]
    lo, hi = math.log(size_range[0]), math.log(min(size_range[1], 0.95 * max(cw, ch)))
    placed = 0
    for _ in range(n_faces * 6):
        if placed >= n_faces:
            break
        size = math.exp(rng.uniform(lo, hi))
        # centre: mostly inside, sometimes partly cut by the border
        m = -0.2 * size if rng.random() < 0.15 else 0.5 * size
        cxr = (m, cw - m) if cw - 2 * m > 1 else (cw / 2, cw / 2 + 1)
        cyr = (m, ch - m) if ch - 2 * m > 1 else (ch / 2, ch / 2 + 1)
        c = (rng.uniform(*cxr), rng.uniform(*cyr))
        nb = np.array([c[0] - size / 2, c[1] - size / 2, c[0] + size / 2, c[1] + size / 2])
        ok = True
        for b in boxes:
            iou, inter = _iou(nb, b)
            if iou > 0.25 or inter > 0.4 * (b[2] - b[0]) * (b[3] - b[1]):
                ok = False
                break
        if not ok:
            continue
        k = face_pick()
        angle = rng.uniform(-30, 30) if rng.random() < 0.5 else rng.normal(0, 5)
        flip = rng.random() < 0.5
        imgs, lmks = sharp if sharp is not None and size > SHARP_FROM else (face_imgs, face_lmk)
        lmk = paste_face(canvas, imgs[k], lmks[k], rng, size, c, angle, flip)
        objs.append((lmk, True))
        if meta is not None:
            meta.append((k, angle, flip))
        boxes.append(box_of(lmk))
        placed += 1
    return canvas, objs


# ---------------------------------------------------------------- targets

def gaussian_radius(h, w, min_overlap=0.7):
    """CenterNet radius rule (sizes in output cells)."""
    a1, b1, c1 = 1, (h + w), w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4, 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def is_positive(lmk, pos, content):
    """a face the detector must find: confirmed, not tiny, mostly visible, centre inside the content area."""
    b = box_of(lmk)
    w, h = b[2] - b[0], b[3] - b[1]
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    cw, ch = content
    # visible fraction of the box inside the content area
    vx = max(0.0, min(b[2], cw) - max(b[0], 0.0))
    vy = max(0.0, min(b[3], ch) - max(b[1], 0.0))
    vis = vx * vy / max(w * h, 1e-6)
    inside = 0 <= cx < cw and 0 <= cy < ch
    return bool(pos) and max(w, h) >= MIN_FACE and vis >= 0.5 and inside


def make_targets(objs, content=None):
    """objs: list of (lmk68 in input px, positive flag). -> dict of numpy targets."""
    content = content or (IN_W, IN_H)
    hm = np.zeros((OH, OW), np.float32)
    ign = np.zeros((OH, OW), np.float32)
    ind = np.zeros(MAX_OBJ, np.int64)
    msk = np.zeros(MAX_OBJ, np.float32)
    reg = np.zeros((MAX_OBJ, 14), np.float32)  # off(2), logsize(2), kps(10)
    cw, ch = content
    n = 0
    yy, xx = np.mgrid[0:OH, 0:OW].astype(np.float32)
    for lmk, pos in objs:
        b = box_of(lmk)
        w, h = b[2] - b[0], b[3] - b[1]
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        if not is_positive(lmk, pos, content) or n >= MAX_OBJ:
            # ignore region: no heatmap penalty inside the (clipped) box
            x0, y0 = int(max(0, math.floor(b[0] / STRIDE))), int(max(0, math.floor(b[1] / STRIDE)))
            x1, y1 = int(min(OW, math.ceil(b[2] / STRIDE))), int(min(OH, math.ceil(b[3] / STRIDE)))
            if x1 > x0 and y1 > y0:
                ign[y0:y1, x0:x1] = 1
            continue
        ix, iy = int(cx / STRIDE), int(cy / STRIDE)
        ix, iy = min(max(ix, 0), OW - 1), min(max(iy, 0), OH - 1)
        r = max(0.0, gaussian_radius(h / STRIDE, w / STRIDE))
        sigma = (2 * int(r) + 1) / 6.0
        g = np.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sigma * sigma))
        np.maximum(hm, g, out=hm)
        hm[iy, ix] = 1.0
        kp = five_points(lmk)
        ind[n] = iy * OW + ix
        msk[n] = 1
        reg[n, 0] = cx / STRIDE - ix - 0.5
        reg[n, 1] = cy / STRIDE - iy - 0.5
        reg[n, 2] = math.log(max(w, 1.0) / STRIDE)
        reg[n, 3] = math.log(max(h, 1.0) / STRIDE)
        reg[n, 4:14:2] = (kp[:, 0] - cx) / max(w, 1.0)
        reg[n, 5:14:2] = (kp[:, 1] - cy) / max(h, 1.0)
        n += 1
    ign[hm >= 0.999] = 0
    return {"hm": hm, "ign": ign, "ind": ind, "msk": msk, "reg": reg}


# ---------------------------------------------------------------- training dataset

def scene_sample(img, faces, rng, scale_range=(0.55, 2.4), info=None):
    """random scale (x the letterbox scale, log-uniform in scale_range) / crop / rotation / flip of a scene into the
    input canvas (content may be letterboxed). info: optional list; gets (angle deg, flipped), which the MFN needs
    to carry rotation labels through the warp. The random stream is the same with or without it."""
    H, W = img.shape[:2]
    s0 = min(IN_W / W, IN_H / H)
    s = s0 * math.exp(rng.uniform(math.log(scale_range[0]), math.log(scale_range[1])))
    ang = rng.uniform(-20, 20) if rng.random() < 0.3 else 0.0
    flip = rng.random() < 0.5
    a = math.radians(ang)
    R = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]) * s
    if flip:
        R = R @ np.array([[-1, 0], [0, 1]])
    c = np.array([W / 2, H / 2])
    sw, sh = W * s, H * s
    # destination of the image centre
    if sw <= IN_W and sh <= IN_H and rng.random() < 0.5:
        d = np.array([sw / 2, sh / 2])  # letterbox style, top-left
    else:
        dx = rng.uniform(min(sw / 2, IN_W - sw / 2), max(sw / 2, IN_W - sw / 2))
        dy = rng.uniform(min(sh / 2, IN_H - sh / 2), max(sh / 2, IN_H - sh / 2))
        d = np.array([dx, dy])
    A = np.zeros((2, 3))
    A[:, :2] = R
    A[:, 2] = d - R @ c
    interp = cv2.INTER_AREA if s < 0.8 else cv2.INTER_LINEAR
    if s < 0.8:
        small = cv2.resize(img, (max(1, int(round(W * s))), max(1, int(round(H * s)))), interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / W, small.shape[0] / H
        S = np.diag([1 / fx, 1 / fy, 1.0])
        A2 = to_index((np.vstack([A, [0, 0, 1]]) @ S)[:2])
        out = cv2.warpAffine(small, A2, (IN_W, IN_H), flags=cv2.INTER_LINEAR, borderValue=0)
    else:
        out = cv2.warpAffine(img, to_index(A), (IN_W, IN_H), flags=interp, borderValue=0)
    objs = []
    for lmk, conf in zip(faces["lmk"], faces["confirmed"]):
        l2 = aff_apply(A, lmk.astype(np.float64))
        if flip:
            l2 = l2[FLIP_PERM]
        objs.append((l2, bool(conf)))
    if info is not None:
        info.append((ang, flip))
    # content extent (for the visibility rule): the bounding box of the warped image
    cor = aff_apply(A, np.array([[0, 0], [W, 0], [0, H], [W, H]], np.float64))
    content = (min(IN_W, cor[:, 0].max()), min(IN_H, cor[:, 1].max()))
    return out, objs, content


class TrainSet(torch.utils.data.Dataset):
    """mode mix per sample: real scene (p_scene), composite on a face-free background, scene + pasted faces."""

    def __init__(self, cache, n, seed, epoch, p_scene=0.3, p_mixed=0.15):
        self.c, self.n, self.seed, self.epoch = cache, n, seed, epoch
        self.p_scene, self.p_mixed = p_scene, p_mixed
        src = cache.face_src
        w = np.where(src == 0, 2.0, np.where(src == 1, 1.5, np.where(src == 2, 0.4, 0.0)))
        self.face_p = w / w.sum()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.epoch, i])
        c = self.c
        pick = lambda: int(rng.choice(len(self.face_p), p=self.face_p))
        u = rng.random()
        content = (IN_W, IN_H)
        if u < self.p_scene + self.p_mixed:
            k = int(rng.integers(0, len(c.train_imgs)))
            img, objs, content = scene_sample(c.train_imgs[k], c.train_faces[k], rng)
            img = color_jitter(img, rng)
            if u >= self.p_scene:
                cwi, chi = int(content[0]), int(content[1])
                sub = np.ascontiguousarray(img[:chi, :cwi])
                sub, objs = composite(rng, None, None, c.face_imgs, c.face_lmk, pick, int(rng.integers(1, 7)),
                                      existing=objs, canvas=sub, content=(cwi, chi))
                img[:chi, :cwi] = sub
        else:
            r = rng.random()
            if r < 0.7:
                content = (IN_W, IN_H)
            else:
                content = [(320, 180), (240, 240), (180, 240), (135, 240), (320, 200)][int(rng.integers(0, 5))]
            nf = int(rng.integers(1, 21)) if rng.random() < 0.7 else int(rng.integers(1, 5))
            sub, objs = composite(rng, c.train_imgs, c.train_faces, c.face_imgs, c.face_lmk, pick, nf,
                                  content=content)
            img = np.zeros((IN_H, IN_W, 3), np.uint8)
            img[:content[1], :content[0]] = color_jitter(sub, rng, 0.6)
        img = degrade(img, rng)
        t = make_targets(objs, content)
        x = (torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0 - 0.5) / 0.5
        return x, {k: torch.from_numpy(v) for k, v in t.items()}
