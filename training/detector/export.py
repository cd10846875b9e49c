#!/usr/bin/env python3
"""Export a detector checkpoint to safetensors (BatchNorm folded) + the parity fixture.

    python training/detector/export.py --ckpt training/runs/det/best.pt --out models/detector.safetensors \
        [--fixture tests/fixtures/detector_parity.safetensors] [--cache training/cache/det] [--raw]

The checkpoint's EMA weights are exported (that is what validation measures) unless --raw.
Tensor names = '<layer name>.weight' / '.bias' of the layer list in the `layers` metadata key (see detector/DETECTOR.md).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages

import argparse
import datetime
import json
import os

import numpy as np
import torch

from detector import model as M
from detector.model import Detector, folded_tensors, folded_forward, count_macs, count_params, decode

from common import atomic_save_safetensors as _atomic_save, git_commit

def letterbox_rule(w=320, h=240, max_scale=1.0):
    limit = "(never enlarged)" if max_scale == 1.0 else f"(enlarged by at most {max_scale:g}: letterbox_max_scale)"
    return (
        f"Frame W x H (RGB u8). s = min({max_scale:g}, {w}/W, {h}/H) {limit}. Resize the whole frame to floor(W*s + 0.5) x floor(H*s + 0.5) "
        f"(each clamped to {w} / {h}; s computed in float64) with bilinear interpolation (OpenCV INTER_LINEAR semantics: "
        "half-pixel centres, src = (dst + 0.5) / scale - 0.5 with scale = new_size / old_size per axis, edge pixels "
        f"clamped, no antialiasing), place it at the TOP-LEFT corner (0,0) of a {w}x{h} canvas, fill the rest with "
        "black (u8 0, i.e. -1.0 after normalisation). Detections (input pixels) map back to the frame by dividing x "
        "and y by s."
    )


def normalization(w=320, h=240):
    return f"RGB, NCHW float32 [1,3,{h},{w}], x = (u8/255 - 0.5)/0.5 (i.e. [-1,1])"


def output_layout(w=320, h=240):
    return (
        f"one tensor [N,15,{h // 4},{w // 4}] (stride 4: output cell (row j, col i) covers input pixels "
        "[4i,4i+4)x[4j,4j+4)). ch 0: centre heatmap logit (sigmoid -> probability that a face box centre lies in the "
        "cell); ch 1,2: sub-cell centre offset x,y in cells; ch 3,4: log(box_w/4), log(box_h/4); ch 5..14: 5 keypoints "
        "(right eye centre = mean iBUG 36-41, left eye centre = mean 42-47, nose tip 30, right mouth corner 48, left "
        "mouth corner 54; 'right' = subject's right = image left for a frontal face) as (dx,dy) pairs: ch 5+2k = dx_k, "
        "ch 6+2k = dy_k, offsets from the box centre in units of box width / height."
    )


LETTERBOX_RULE, NORMALIZATION, OUTPUT_LAYOUT = letterbox_rule(), normalization(), output_layout()
DECODING = (
    "p = sigmoid(ch0). A cell (j,i) is a peak if p[j,i] >= score_threshold and p[j,i] equals the maximum of p over "
    "its 3x3 neighbourhood (cells outside the map ignored; ties keep both). For each peak: "
    "cx = (i + 0.5 + ch1) * 4, cy = (j + 0.5 + ch2) * 4, w = 4 * exp(ch3), h = 4 * exp(ch4), "
    "box = [cx - w/2, cy - h/2, cx + w/2, cy + h/2], keypoint k = (cx + ch(5+2k) * w, cy + ch(6+2k) * h), "
    "score = p. Sort peaks by descending score, keep the first 100, greedy NMS: walk in score order, drop every later "
    "box whose IoU with a kept box is > nms_iou. Coordinates are network-input pixels in the continuous convention "
    "(pixel centres at +0.5); divide by the letterbox scale s to get frame pixels."
)
BOX_CONVENTION = (
    "Tight box of the face's 68 iBUG landmarks (min/max of the points: jaw to brows, NO forehead) in the continuous "
    "pixel convention, same as `box` in the training data's scenes.jsonl."
)
TRAINING_DATA = (
    "HELEN `split: train` scene photos (870, MediaPipe-teacher face boxes; unconfirmed faces = ignore regions) with "
    "random scale/crop/rotation/flip/colour; on-the-fly composites: 1-20 face crops (HELEN train 870 + wild colour "
    "790 + wild gray 1800, 128 px) pasted with feathered elliptical masks, +-30 deg rotation, flip, 10-220 px, on "
    "face-free crops of train scenes or synthetic textures; colour/gamma/low light/blur/noise/JPEG. Validation: "
    "HELEN `split: test` scenes (330 photos) and 300 fixed composites of HELEN test faces. Research-use data "
    "(HELEN / 300-W: non-commercial)."
)


def build_metadata(model, metrics=None, extra=None):
    c = model.config
    md = {
        "format": "polyface-detector",
        "format_version": "1",
        "input_size": json.dumps([1, 3, c["input_size"][1], c["input_size"][0]]),
        "input_layout": "NCHW, RGB",
        "letterbox": letterbox_rule(*c["input_size"]),
        "normalization": normalization(*c["input_size"]),
        "stride": str(c["stride"]),
        "output_shape": json.dumps([1, c["out_channels"], c["input_size"][1] // c["stride"],
                                    c["input_size"][0] // c["stride"]]),
        "output_layout": output_layout(*c["input_size"]),
        "decoding": DECODING,
        "box_convention": BOX_CONVENTION,
        "keypoints": json.dumps(["right_eye", "left_eye", "nose_tip", "right_mouth_corner", "left_mouth_corner"]),
        "score_threshold": str(M.DEFAULT_SCORE_THRESHOLD),
        "nms_iou": str(M.DEFAULT_NMS_IOU),
        "max_detections": str(M.MAX_DETECTIONS),
        "activation": "relu",
        "batchnorm": "folded into the preceding conv (weight, bias); every conv has a bias",
        "architecture": json.dumps(c),
        "layers": json.dumps(model.program),
        "layers_note": "evaluate `layers` in order; tensor 'input' is the normalised image; each layer writes the "
                       "tensor named by its 'name'; conv ops read 'input' (a tensor name), use "
                       "'<name>.weight' [out, in/groups, k, k] and '<name>.bias' [out]; 'add' sums its two inputs; "
                       "'upsample2x' is nearest-neighbour x2; 'act' relu is applied after the op; the network "
                       "output is the last layer (head.out)",
        "params": str(count_params(model)),
        "macs": str(count_macs(model.program)),
        "training_data": TRAINING_DATA,
        "git_commit": git_commit(),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if metrics is not None:
        md["validation_metrics"] = json.dumps(metrics)
    if extra:
        md.update({k: str(v) for k, v in extra.items()})
    return md


def fixture_input(cache_dir, size=(320, 240), data_dir="../shared/data"):
    """uint8 [H,W,3]: the letterboxed HELEN-test scene with the most faces (synthetic if no cache). The cache holds it
    letterboxed at 320x240; for another input size the scene's photo is letterboxed again at that size (as the app
    does: never enlarged), so the Rust letterbox of the same photo must give the same pixels."""
    from detector import data as D
    p = os.path.join(cache_dir or "", "scenes_test.npz")
    if cache_dir and os.path.exists(p):
        c = D.DetCache(cache_dir, load=("test",))
        n = [int(f["confirmed"].sum()) for f in c.test_faces]
        i = int(np.argmax(n))
        img, scale = D.dec_jpeg(c.test_jpeg[i]), float(c.test_scale[i])
        if img.shape[1] != size[0]:
            with open(os.path.join(data_dir, c.test_names[i]), "rb") as f:
                img, scale = D.letterbox(D.dec_jpeg(f.read()), size)
        return img, scale, c.test_names[i]
    rng = np.random.default_rng(1234)
    return D.random_texture(rng), 1.0, "synthetic"


def export(model, out_path, fixture_path=None, metrics=None, cache_dir=None, extra=None):
    model = model.eval()
    tensors = folded_tensors(model)
    md = build_metadata(model, metrics, extra)
    _atomic_save(tensors, out_path, md)
    if fixture_path:
        u8, s, name = fixture_input(cache_dir, tuple(model.config["input_size"]))
        inp = torch.from_numpy(np.ascontiguousarray(u8)).permute(2, 0, 1)[None].contiguous()  # 1,3,H,W
        x = (inp.float() / 255.0 - 0.5) / 0.5
        with torch.no_grad():
            y = folded_forward(tensors, model.program, x)
            y_ref = model(x)
        err = (y - y_ref).abs().max().item()
        assert err < 1e-3, f"folded/unfolded mismatch {err}"
        threshold = float(md["score_threshold"])  # the file's operating point (the app decodes with it)
        d = decode(y, threshold=threshold)[0]
        fix = {"input_u8": inp, "output": y.contiguous(), "boxes": d["boxes"].contiguous().reshape(-1, 4),
               "scores": d["scores"].contiguous().reshape(-1), "keypoints": d["kps"].contiguous().reshape(-1, 5, 2)}
        if len(d["scores"]) == 0:  # keep every tensor non-empty: one all-zero row, flagged in metadata
            fix.update(boxes=torch.zeros(1, 4), scores=torch.zeros(1), keypoints=torch.zeros(1, 5, 2))
        _atomic_save(fix, fixture_path, {
            "description": "Detector parity fixture: input_u8 [1,3,H,W] RGB uint8 (already letterboxed); "
                           "network input = (input_u8/255-0.5)/0.5 as float32; output = raw [1,15,H/4,W/4] of the "
                           "folded weights in the detector.safetensors exported together with this file; boxes "
                           "[K,4] (x0,y0,x1,y1 input px), scores [K], keypoints [K,5,2] = decoded with "
                           "score_threshold / nms_iou below. Tolerance: output 1e-3 abs.",
            "source_image": name, "letterbox_scale": f"{s:.6f}", "n_detections": str(len(d["scores"])),
            "score_threshold": md["score_threshold"], "nms_iou": str(M.DEFAULT_NMS_IOU),
            "model_exported_at": md["exported_at"], "folded_vs_bn_max_abs_diff": f"{err:.3e}"})
    return md


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="best.pt or last.pt from detector/train.py")
    ap.add_argument("--out", default="models/detector.safetensors")
    ap.add_argument("--fixture", default="tests/fixtures/detector_parity.safetensors", help="'' to skip")
    ap.add_argument("--cache", default="training/cache/det")
    ap.add_argument("--raw", action="store_true", help="export the raw (non-EMA) weights")
    args = ap.parse_args()
    torch.set_num_threads(2)
    ck = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    model = Detector(ck["config"])
    model.load_state_dict(ck["model"] if args.raw or "ema" not in ck else ck["ema"])
    md = export(model, args.out, args.fixture or None, ck.get("metrics"), args.cache, {"epoch": ck.get("epoch", "?")})
    print(json.dumps({k: md[k] for k in ("params", "macs", "git_commit", "exported_at")}))
    print("validation_metrics:", md.get("validation_metrics"))


if __name__ == "__main__":
    main()
