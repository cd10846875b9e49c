#!/usr/bin/env python3
"""Build the compact SFN training cache from the shared face data.

Usage:
    nice -n 19 python training/sfn/prepare.py --data /work/shared/data --out training/cache
    nice -n 19 python training/sfn/prepare.py --data /work/shared/data --out training/cache --face-size 256

Writes (faces.npz + neg.npz: well under 60 MiB in all):
  faces.npz  every HELEN train/test crop and every wild crop, downscaled 256 -> 128 px
             (INTER_AREA) and re-encoded as JPEG q90 (1 channel for grayscale sources,
             3 channels BGR otherwise), plus labels in 128-px crop coordinates:
     jpeg      uint8[total_bytes]   concatenated JPEG files
     offsets   int64[N+1]           jpeg[offsets[i]:offsets[i+1]] is image i
     gray      bool[N]              source has no colour
     split     int8[N]              0 = HELEN train, 1 = HELEN test (validation), 2 = wild
     lmk       float32[N,68,2]      landmark labels (human for HELEN, teacher for wild), 128-px
                                    crop pixels, continuous convention (pixel centre = +0.5)
     lmk_teacher float16[N,68,2]    teacher 68 points (same frame, reference only)
     R         float32[N,3,3]       rotation of teacher.matrix (canonical face -> camera)
     has_pose  bool[N]
     blend     float16[N,51]        teacher blendshapes in BLENDSHAPE_NAMES order
     has_blend bool[N]
     names     bytes[N]              image path relative to the data folder
  faces256.npz (--face-size 256 only; ~100 MiB, local only) the same faces and labels at 256 px (labels in 256-px
             crop pixels): the MFN pastes faces larger than 80 px from it (`mfn/train.py --sharp-faces`)
  neg.npz    background patches for confidence negatives: random squares from the HELEN
             *train* scene photos that do not touch any listed face (boxes grown 1.6x),
             resized to 128 px, JPEG q90 (jpeg / offsets as above)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages

import argparse
import json
import os

import cv2
import numpy as np

BLENDSHAPE_NAMES = [
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
]
CACHE_SIZE = 128
SRC_SIZE = 256
JPEG_Q = 90


def encode(img, gray):
    if gray:
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_Q])
    assert ok
    return buf.reshape(-1)


def load_records(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def faces_file(size):
    """the face cache's file name: faces.npz at the default 128 px (SFN, detector), faces{size}.npz otherwise."""
    return "faces.npz" if size == CACHE_SIZE else f"faces{size}.npz"


def prepare_faces(data, out, size=CACHE_SIZE):
    groups = [
        (0, os.path.join(data, "helen", "train.jsonl"), "helen"),
        (1, os.path.join(data, "helen", "test.jsonl"), "helen"),
        (2, os.path.join(data, "wild.jsonl"), ""),
    ]
    k = size / SRC_SIZE
    bufs, gray, split, lmk, lmk_t, R, has_pose, blend, has_blend, names = ([] for _ in range(10))
    for split_id, path, prefix in groups:
        recs = load_records(path)
        for r in recs:
            rel = os.path.join(prefix, r["image"]) if prefix else r["image"]
            img = cv2.imread(os.path.join(data, rel), cv2.IMREAD_COLOR)
            assert img is not None and img.shape[:2] == (SRC_SIZE, SRC_SIZE), rel
            small = img if size == SRC_SIZE else cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            g = bool(r.get("grayscale", False))
            bufs.append(encode(small, g))
            gray.append(g)
            split.append(split_id)
            # continuous pixel convention: scaling about the origin is exact
            lmk.append(np.asarray(r["landmarks68"], np.float32) * k)
            t = r.get("teacher") or {}
            tl = t.get("landmarks68") or (r["landmarks68"] if r.get("landmarks_source") == "teacher" else None)
            lmk_t.append(np.asarray(tl, np.float32) * k if tl is not None else np.full((68, 2), np.nan, np.float32))
            m = t.get("matrix")
            if m is not None:
                M = np.asarray(m, np.float64).reshape(4, 4)
                Rm = M[:3, :3]
                # re-orthonormalise (stored with 6 decimals)
                u, _, vt = np.linalg.svd(Rm)
                Rm = u @ vt
                R.append(Rm.astype(np.float32))
                has_pose.append(True)
            else:
                R.append(np.eye(3, dtype=np.float32))
                has_pose.append(False)
            b = t.get("blendshapes")
            if b is not None:
                blend.append(np.asarray([b[n] for n in BLENDSHAPE_NAMES], np.float32))
                has_blend.append(True)
            else:
                blend.append(np.zeros(51, np.float32))
                has_blend.append(False)
            names.append(rel)
        print(f"{path}: {len(recs)} records", flush=True)
    offsets = np.zeros(len(bufs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in bufs])
    np.savez(
        os.path.join(out, faces_file(size)),
        jpeg=np.concatenate(bufs), offsets=offsets, gray=np.asarray(gray), split=np.asarray(split, np.int8),
        lmk=np.stack(lmk), lmk_teacher=np.stack(lmk_t).astype(np.float16), R=np.stack(R), has_pose=np.asarray(has_pose),
        blend=np.stack(blend).astype(np.float16), has_blend=np.asarray(has_blend), names=np.asarray(names, dtype=np.bytes_),
        blendshape_names=np.asarray(BLENDSHAPE_NAMES), cache_size=np.int32(size),
    )
    print(f"faces: {len(bufs)} images, {offsets[-1] / 2**20:.1f} MiB jpeg", flush=True)


def prepare_negatives(data, out, per_photo=2, seed=0):
    rng = np.random.default_rng(seed)
    recs = load_records(os.path.join(data, "scenes.jsonl"))
    bufs = []
    for r in recs:
        if r.get("split") != "train":
            continue
        img = cv2.imread(os.path.join(data, r["image"]), cv2.IMREAD_COLOR)
        if img is None:
            continue
        h, w = img.shape[:2]
        boxes = []
        for f in r["faces"]:
            x0, y0, x1, y1 = f["box"]
            cx, cy, s = (x0 + x1) / 2, (y0 + y1) / 2, 1.6 * max(x1 - x0, y1 - y0)
            boxes.append((cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2))
        got = 0
        for _ in range(40):
            if got >= per_photo:
                break
            s = rng.uniform(40, min(h, w, 260))
            x, y = rng.uniform(0, w - s), rng.uniform(0, h - s)
            if any(not (x + s <= b[0] or x >= b[2] or y + s <= b[1] or y >= b[3]) for b in boxes):
                continue
            patch = img[int(y):int(y + s), int(x):int(x + s)]
            patch = cv2.resize(patch, (CACHE_SIZE, CACHE_SIZE),
                               interpolation=cv2.INTER_AREA if s > CACHE_SIZE else cv2.INTER_LINEAR)
            bufs.append(encode(patch, False))
            got += 1
    offsets = np.zeros(len(bufs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in bufs])
    np.savez(os.path.join(out, "neg.npz"), jpeg=np.concatenate(bufs), offsets=offsets)
    print(f"negatives: {len(bufs)} patches, {offsets[-1] / 2**20:.1f} MiB jpeg", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="shared data folder (README.md, helen/, wild.jsonl, scenes.jsonl)")
    ap.add_argument("--out", default="training/cache")
    ap.add_argument("--face-size", type=int, default=CACHE_SIZE, choices=[CACHE_SIZE, SRC_SIZE],
                    help="crop size; 256 writes faces256.npz only (sharp large faces for the MFN's composites)")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    os.makedirs(args.out, exist_ok=True)
    prepare_faces(args.data, args.out, args.face_size)
    if args.face_size == CACHE_SIZE:
        prepare_negatives(args.data, args.out)


if __name__ == "__main__":
    main()
