#!/usr/bin/env python3
"""Cache of the real group photos (`groups.jsonl`, split train only) for MFN / detector training.

    nice -n 19 python training/groups/prepare.py --data /work/shared/data [--out training/cache/groups.npz]
    nice -n 19 python training/groups/prepare.py --data /work/shared/data --sfn-cache training/cache \
        --sfn-out training/cache/sfn_room          # the SFN's face cache + the groups' labelled faces

Every photo keeps its stored pixels (JPEG bytes as stored, no re-encoding). Per face:
  kind    0 = teacher labels (68 points, rotation, blendshapes): full supervision
          1 = human box or points only (the teacher could not read the face): detection only; its 68 points are
              a template placed on the human annotation (below), so boxes, keypoints and every augmentation work
              as for labelled faces
          2 = found by the teacher only (`annotated: false`): an ignore region (no loss either way)
  masked  a mask covers mouth and nose: the teacher's mouth points and blendshapes are guesses
  lmk68, R (3x3, canonical face -> camera of the teacher's square frame, as the face crops' labels), blend (51)

Template for kind 1: the mean of the teacher's 68 points over this split's labelled faces, in a frame where the eye
midpoint is the origin and the eye-to-mouth-centre vector is (0, 1). WebFaces faces (`points4`: eyes, nose tip,
mouth centre) get it by the similarity that maps the template's eye midpoint and mouth centre onto theirs; MaskON
faces (human box, forehead to chin) get it scaled into the box by the mean teacher-box / human-box relation measured
on the faces that have both (centre and size per axis).
"""
import argparse
import json
import os

import numpy as np

BLENDSHAPE_NAMES = None  # filled from prepare_data to keep one order


def load(path, split):
    return [r for r in (json.loads(l) for l in open(path)) if r["split"] == split]


def eye_mouth_frame(l):
    """(origin, x axis, y axis, scale) with the eye midpoint at the origin and eye->mouth centre = (0, 1)."""
    eyes = (l[36:42].mean(0) + l[42:48].mean(0)) / 2
    mouth = (l[48] + l[54] + l[51] + l[57]) / 4
    d = mouth - eyes
    return eyes, d


def template_from(records):
    rows = []
    for r in records:
        for f in r["faces"]:
            if f.get("landmarks68") and f.get("mask") in (None, "none"):
                l = np.asarray(f["landmarks68"], np.float64)
                eyes, d = eye_mouth_frame(l)
                n = np.linalg.norm(d)
                u = d / n
                v = np.array([u[1], -u[0]])  # image +x for an upright face
                q = l - eyes
                rows.append(np.stack([q @ v, q @ u], 1) / n)
    return np.mean(rows, 0)


def box_relation(records):
    """mean (teacher box centre - human box centre) / human box size, and teacher / human size, per axis."""
    off, scale = [], []
    for r in records:
        for f in r["faces"]:
            if f.get("box") and f.get("annotated_box"):
                a, b = np.asarray(f["annotated_box"]), np.asarray(f["box"])
                sa = a[2:] - a[:2]
                off.append(((b[:2] + b[2:]) / 2 - (a[:2] + a[2:]) / 2) / sa)
                scale.append((b[2:] - b[:2]) / sa)
    return np.median(off, 0), np.median(scale, 0)


def place_on_points4(tpl, p):
    eyes = (p[0] + p[1]) / 2
    d = p[3] - eyes
    n = np.linalg.norm(d)
    u = d / n
    v = np.array([u[1], -u[0]])
    return eyes + np.outer(tpl[:, 0], v) * n + np.outer(tpl[:, 1], u) * n


def place_in_box(tpl, a, rel):
    off, scale = rel
    a = np.asarray(a, np.float64)
    sa = a[2:] - a[:2]
    centre = (a[:2] + a[2:]) / 2 + off * sa
    size = scale * sa
    lo, hi = tpl.min(0), tpl.max(0)
    return centre + (tpl - (lo + hi) / 2) / (hi - lo) * size


def sfn_faces(records, data, base_dir, out_dir, size=128):
    """the SFN's face cache (base_dir/faces.npz, neg.npz) plus every teacher-labelled training face of the group
    photos as a 1.6x crop at `size` px (most are enlarged: that is how a small face reaches the SFN), split 2
    (training), with a landmark weight (masked faces 0.3) and no blendshape target on masked faces."""
    import cv2
    import shutil
    from sfn.prepare import BLENDSHAPE_NAMES as names
    base = dict(np.load(os.path.join(base_dir, "faces.npz")))
    n0 = len(base["gray"])
    bufs, lmk, R, has_pose, blend, has_blend, weight, rel = [], [], [], [], [], [], [], []
    for r in records:
        img = cv2.imread(os.path.join(data, r["image"]), cv2.IMREAD_COLOR)
        for j, f in enumerate(r["faces"]):
            if not f.get("landmarks68") or not f["annotated"]:
                continue
            l = np.asarray(f["landmarks68"], np.float64)
            lo, hi = l.min(0), l.max(0)
            side = int(round(1.6 * max(hi - lo)))
            if side < 8:
                continue
            c = (lo + hi) / 2
            x0, y0 = int(round(c[0] - side / 2)), int(round(c[1] - side / 2))
            crop = np.zeros((side, side, 3), np.uint8)
            sx0, sy0 = max(0, x0), max(0, y0)
            sx1, sy1 = min(img.shape[1], x0 + side), min(img.shape[0], y0 + side)
            if sx1 <= sx0 or sy1 <= sy0:
                continue
            crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
            k = size / side
            crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
            ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
            bufs.append(buf.reshape(-1))
            lmk.append(((l - [x0, y0]) * k).astype(np.float32))
            masked = f.get("mask") not in (None, "none")
            u, _, vt = np.linalg.svd(np.asarray(f["matrix"], np.float64).reshape(4, 4)[:3, :3])
            R.append((u @ vt).astype(np.float32))
            has_pose.append(True)
            blend.append(np.asarray([f["blendshapes"][n] for n in names], np.float32))
            has_blend.append(not masked)
            weight.append(0.3 if masked else 1.0)
            rel.append(f"{r['image']}#{j}")
    jpeg = np.concatenate([base["jpeg"]] + bufs)
    offsets = np.concatenate([base["offsets"], base["offsets"][-1] + np.cumsum([len(b) for b in bufs])])
    n = len(bufs)
    out = dict(base, jpeg=jpeg, offsets=offsets,
               gray=np.concatenate([base["gray"], np.zeros(n, bool)]),
               split=np.concatenate([base["split"], np.full(n, 2, np.int8)]),
               lmk=np.concatenate([base["lmk"], np.asarray(lmk)]),
               lmk_teacher=np.concatenate([base["lmk_teacher"], np.asarray(lmk, np.float16)]),
               R=np.concatenate([base["R"], np.asarray(R)]),
               has_pose=np.concatenate([base["has_pose"], np.asarray(has_pose)]),
               blend=np.concatenate([base["blend"], np.asarray(blend, np.float16)]),
               has_blend=np.concatenate([base["has_blend"], np.asarray(has_blend)]),
               names=np.concatenate([base["names"], np.asarray(rel, dtype=np.bytes_)]),
               lmk_weight=np.concatenate([np.ones(n0, np.float32), np.asarray(weight, np.float32)]),
               source=np.concatenate([np.zeros(n0, np.int8), np.ones(n, np.int8)]))
    os.makedirs(out_dir, exist_ok=True)
    np.savez(os.path.join(out_dir, "faces.npz"), **out)
    shutil.copyfile(os.path.join(base_dir, "neg.npz"), os.path.join(out_dir, "neg.npz"))
    print(f"{out_dir}/faces.npz: {n0} faces + {n} group faces ({int(np.sum(np.asarray(weight) < 1))} masked)")


def main():
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages
    from sfn.prepare import BLENDSHAPE_NAMES as names
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--out", default="training/cache/groups.npz")
    ap.add_argument("--sfn-cache", default="", help="with --sfn-out: the SFN face cache to extend")
    ap.add_argument("--sfn-out", default="", help="write the SFN's cache + the groups' labelled faces here instead")
    args = ap.parse_args()
    records = load(os.path.join(args.data, "groups.jsonl"), "train")
    if args.sfn_out:
        sfn_faces(records, args.data, args.sfn_cache, args.sfn_out)
        return
    tpl = template_from(records)
    rel = box_relation(records)
    jpeg, offsets, face_offsets = [], [0], [0]
    lmk, kind, masked, R, has_R, blend, has_blend, sizes = [], [], [], [], [], [], [], []
    for r in records:
        data = open(os.path.join(args.data, r["image"]), "rb").read()
        jpeg.append(np.frombuffer(data, np.uint8))
        offsets.append(offsets[-1] + len(data))
        sizes.append(r["size"])
        for f in r["faces"]:
            if f.get("landmarks68"):
                l = np.asarray(f["landmarks68"], np.float64)
            elif f.get("points4"):
                l = place_on_points4(tpl, np.asarray(f["points4"], np.float64))
            else:
                l = place_in_box(tpl, f["annotated_box"], rel)
            lmk.append(l.astype(np.float32))
            kind.append(2 if not f["annotated"] else (0 if f.get("landmarks68") else 1))
            masked.append(f.get("mask") not in (None, "none"))
            m = f.get("matrix")
            if m is not None:
                u, _, vt = np.linalg.svd(np.asarray(m, np.float64).reshape(4, 4)[:3, :3])
                R.append((u @ vt).astype(np.float32))
            else:
                R.append(np.eye(3, dtype=np.float32))
            has_R.append(m is not None)
            b = f.get("blendshapes")
            blend.append(np.asarray([b[n] for n in names], np.float32) if b else np.zeros(51, np.float32))
            has_blend.append(b is not None)
        face_offsets.append(len(lmk))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, jpeg=np.concatenate(jpeg), offsets=np.asarray(offsets, np.int64),
             face_offsets=np.asarray(face_offsets, np.int64), size=np.asarray(sizes, np.int32),
             lmk68=np.asarray(lmk, np.float32), kind=np.asarray(kind, np.int8), masked=np.asarray(masked),
             R=np.asarray(R, np.float32), has_R=np.asarray(has_R), blend=np.asarray(blend, np.float16),
             has_blend=np.asarray(has_blend), template=tpl.astype(np.float32),
             blendshape_names=np.asarray(names))
    os.replace(tmp, args.out)
    k = np.asarray(kind)
    print(f"{args.out}: {len(records)} photos, {len(k)} faces: {int((k == 0).sum())} labelled, "
          f"{int((k == 1).sum())} box only, {int((k == 2).sum())} ignore; {int(np.sum(masked))} masked; "
          f"{offsets[-1] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
