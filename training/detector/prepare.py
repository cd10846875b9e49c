#!/usr/bin/env python3
"""Build the compact detector cache (training/cache/det, ~40 MiB) from the shared data folder.

    nice -n 19 python training/detector/prepare.py --data /work/shared/data [--out training/cache/det]

Files (all .npz, JPEG bytes packed with offsets):
  scenes_train.npz  HELEN `split: train` scene photos, long side 384 px, JPEG q85, faces (box, 68 pts, confirmed)
  scenes_test.npz   HELEN `split: test` scene photos already letterboxed to 320x240 (letterbox rule of
                    detector/DETECTOR.md, from the stored 512-px photo), JPEG q95; faces in the 512-px scene coordinates
                    plus the letterbox scale s
  faces.npz         face crops at 128 px (1.6x crops of the data set, INTER_AREA), JPEG q90, 68 points:
                    HELEN train (870, src 0), all colour wild crops (src 1), N gray wild crops (src 2)
  valcomp.npz       300 fixed validation composites (320x240, 5-15 HELEN *test* faces each on backgrounds cut
                    from test scenes or synthetic textures), JPEG q95, with their 68 points
Never includes test faces in training data: the training loader only reads scenes_train and faces.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages

import argparse
import json
import os

import cv2
import numpy as np

cv2.setNumThreads(1)
from detector import data as D


def load_jsonl(p):
    with open(p) as f:
        return [json.loads(l) for l in f if l.strip()]


def read_rgb(p):
    im = cv2.imread(p, cv2.IMREAD_COLOR)
    assert im is not None, p
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)


def faces_arrays(face_lists):
    fo = np.zeros(len(face_lists) + 1, np.int64)
    fo[1:] = np.cumsum([len(f) for f in face_lists])
    allf = [f for fl in face_lists for f in fl]
    return {
        "face_offsets": fo,
        "box": np.array([f["box"] for f in allf], np.float32).reshape(-1, 4),
        "lmk68": np.array([f["lmk"] for f in allf], np.float32).reshape(-1, 68, 2),
        "confirmed": np.array([f["confirmed"] for f in allf], bool),
        "annotated": np.array([f["annotated"] for f in allf], bool),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--out", default="training/cache/det")
    ap.add_argument("--gray-wild", type=int, default=1800)
    ap.add_argument("--n-valcomp", type=int, default=300)
    ap.add_argument("--seed", type=int, default=20261128)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    scenes = load_jsonl(os.path.join(args.data, "scenes.jsonl"))

    # ---- scenes
    tr_jpeg, tr_faces, te_jpeg, te_faces, te_scale, te_names = [], [], [], [], [], []
    te_imgs_full = []
    for r in scenes:
        if r["split"] not in ("train", "test"):
            continue  # the 4 demo photos: not used (incomplete labels)
        img = read_rgb(os.path.join(args.data, r["image"]))
        H, W = img.shape[:2]
        fl = []
        for f in r["faces"]:
            fl.append({"box": f["box"], "lmk": f["landmarks68"], "confirmed": bool(f["confirmed"]),
                       "annotated": "gt_landmarks68" in f})
        if r["split"] == "train":
            k = 384 / max(H, W)
            if k < 1:
                img = cv2.resize(img, (round(W * k), round(H * k)), interpolation=cv2.INTER_AREA)
                kx, ky = img.shape[1] / W, img.shape[0] / H
                for f in fl:
                    f["box"] = [f["box"][0] * kx, f["box"][1] * ky, f["box"][2] * kx, f["box"][3] * ky]
                    f["lmk"] = (np.array(f["lmk"]) * [kx, ky]).tolist()
            tr_jpeg.append(D.enc_jpeg(img, 85))
            tr_faces.append(fl)
        else:
            lb, s = D.letterbox(img)
            te_jpeg.append(D.enc_jpeg(lb, 95))
            te_faces.append(fl)
            te_scale.append(s)
            te_names.append(r["image"])
            te_imgs_full.append((img, fl))
    data, offs = D.pack(tr_jpeg)
    np.savez(os.path.join(args.out, "scenes_train.npz"), jpeg=data, offsets=offs, **faces_arrays(tr_faces))
    data, offs = D.pack(te_jpeg)
    np.savez(os.path.join(args.out, "scenes_test.npz"), jpeg=data, offsets=offs, scale=np.array(te_scale),
             names=np.array(te_names), **faces_arrays(te_faces))
    print(f"scenes: train {len(tr_jpeg)}, test {len(te_jpeg)}")

    # ---- face crops
    helen = load_jsonl(os.path.join(args.data, "helen/train.jsonl"))
    wild = load_jsonl(os.path.join(args.data, "wild.jsonl"))
    wc = [r for r in wild if not r.get("grayscale")]
    wg = [r for r in wild if r.get("grayscale")]
    wg = [wg[i] for i in sorted(rng.choice(len(wg), min(args.gray_wild, len(wg)), replace=False))]
    items = [(os.path.join(args.data, "helen", r["image"]), r["landmarks68"], 0, False) for r in helen]
    items += [(os.path.join(args.data, r["image"]), r["landmarks68"], 1, False) for r in wc]
    items += [(os.path.join(args.data, r["image"]), r["landmarks68"], 2, True) for r in wg]
    fj, fl, fs, fg = [], [], [], []
    for p, lmk, src, gray in items:
        im = read_rgb(p)
        k = D.FACE_SIDE / im.shape[0]
        im = cv2.resize(im, (D.FACE_SIDE, D.FACE_SIDE), interpolation=cv2.INTER_AREA)
        if gray:
            im = im[:, :, :1]
        fj.append(D.enc_jpeg(np.repeat(im, 3, 2) if gray else im, 90) if not gray else
                  cv2.imencode(".jpg", im[:, :, 0], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        fl.append(np.array(lmk, np.float32) * k)
        fs.append(src)
        fg.append(gray)
    data, offs = D.pack(fj)
    np.savez(os.path.join(args.out, "faces.npz"), jpeg=data, offsets=offs, lmk=np.stack(fl), src=np.array(fs),
             gray=np.array(fg))
    print(f"faces: helen {len(helen)}, wild colour {len(wc)}, wild gray {len(wg)}")

    # ---- fixed validation composites from HELEN *test* crops and test-scene backgrounds
    ht = load_jsonl(os.path.join(args.data, "helen/test.jsonl"))
    vimg, vlmk = [], []
    for r in ht:
        im = read_rgb(os.path.join(args.data, "helen", r["image"]))
        k = D.FACE_SIDE / im.shape[0]
        vimg.append(cv2.resize(im, (D.FACE_SIDE, D.FACE_SIDE), interpolation=cv2.INTER_AREA))
        vlmk.append(np.array(r["landmarks68"], np.float32) * k)
    vimg, vlmk = np.stack(vimg), np.stack(vlmk)
    bgs = [x[0] for x in te_imgs_full]
    bgf = [{"box": np.array([f["box"] for f in x[1]], np.float32).reshape(-1, 4)} for x in te_imgs_full]
    vj, vf = [], []
    vrng = np.random.default_rng(args.seed + 1)
    for i in range(args.n_valcomp):
        nf = int(vrng.integers(5, 16))
        img, objs = D.composite(vrng, bgs, bgf, vimg, vlmk, lambda: int(vrng.integers(0, len(vimg))), nf,
                                size_range=(16, 160))
        img = D.color_jitter(img, vrng, 0.5)
        img = D.degrade(img, vrng)
        vj.append(D.enc_jpeg(img, 95))
        fl = []
        for l, _ in objs:
            b = D.box_of(l)
            w, h = b[2] - b[0], b[3] - b[1]
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            vis = max(0, min(b[2], D.IN_W) - max(b[0], 0)) * max(0, min(b[3], D.IN_H) - max(b[1], 0)) / (w * h)
            # faces mostly outside the image (or with the centre outside) are ignore regions, like in training
            ok = vis >= 0.5 and 0 <= cx < D.IN_W and 0 <= cy < D.IN_H
            fl.append({"box": b.tolist(), "lmk": l.tolist(), "confirmed": bool(ok), "annotated": False})
        vf.append(fl)
    data, offs = D.pack(vj)
    np.savez(os.path.join(args.out, "valcomp.npz"), jpeg=data, offsets=offs, **faces_arrays(vf))
    print(f"valcomp: {len(vj)} images, {sum(len(f) for f in vf)} faces, "
          f"{sum(f['confirmed'] for fl in vf for f in fl)} scored (rest: ignore, mostly outside)")
    tot = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"cache total {tot / 2 ** 20:.1f} MiB in {args.out}")


if __name__ == "__main__":
    main()
