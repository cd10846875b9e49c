#!/usr/bin/env python3
"""Export a trained SFN checkpoint to safetensors (BatchNorm folded) + a parity fixture.

Usage:
    python training/sfn/export.py --ckpt training/runs/sfn/best.pt --out models/sfn.safetensors \
        [--fixture tests/fixtures/sfn_parity.safetensors] [--cache training/cache]

The checkpoint's EMA weights are exported (that is what validation measures).
Tensor names and metadata are documented in training/sfn/SFN.md.
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

from common import atomic_save_safetensors as _atomic_save, git_commit
from sfn.model import SFN, OUTPUT_LAYOUT, INPUT_SIZE, rot6d_to_matrix, count_macs

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

CROP_RULE = (
    "Take the 68 landmarks (frame pixels, continuous convention: pixel (i,j) covers [j,j+1)x[i,i+1), centre +0.5). "
    "Tight box x0=min x, x1=max x, y0=min y, y1=max y; centre c=((x0+x1)/2,(y0+y1)/2); side s=1.4*max(x1-x0,y1-y0). "
    "Crop square [cx-s/2,cx+s/2]x[cy-s/2,cy+s/2], no rotation, resampled to 112x112 by bilinear interpolation: "
    "output pixel (row i, col j) samples the frame at x=cx-s/2+(j+0.5)*s/112, y=cy-s/2+(i+0.5)*s/112; "
    "samples outside the frame are 0 (black)."
)
NORMALIZATION = "RGB, NCHW float32, x = (u8/255 - 0.5)/0.5 (i.e. [-1,1]); grayscale frames replicated to 3 channels"
POSE_CONVENTION = (
    "pose6d = first two columns of R, order [R00,R10,R20,R01,R11,R21]; R = Gram-Schmidt: b1=norm(a1), "
    "b2=norm(a2-(b1.a2)b1), b3=b1 x b2, R=[b1 b2 b3] (columns). R is the rotation of MediaPipe's facial "
    "transformation matrix as the teacher would compute it on this crop: canonical face (x subject's left, y up, "
    "z out of the face) -> camera (x right, y up, looking down -z). Frontal face ~ identity. "
    "Euler (degrees) with R = Rz(roll) @ Ry(yaw) @ Rx(pitch): yaw = asin(-R20), pitch = atan2(R21, R22), "
    "roll = atan2(R10, R00). yaw>0: face turns to image right (subject's left); pitch>0: face looks down; "
    "roll>0: face rotates counter-clockwise in the image."
)


def fold_conv_bn(conv, bn):
    w = conv.weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    wf = w * scale.view(-1, 1, 1, 1)
    bf = bn.bias.detach().double() - bn.running_mean.detach().double() * scale
    if conv.bias is not None:
        bf = bf + conv.bias.detach().double() * scale
    return wf.float().contiguous(), bf.float().contiguous()


def folded_tensors(model):
    """model (eval) -> ordered dict name -> tensor, BN folded into every conv."""
    t = {}

    def put(name, convbn):
        w, b = fold_conv_bn(convbn[0], convbn[1])
        t[name + ".weight"], t[name + ".bias"] = w, b

    put("stem", model.stem)
    for i, b in enumerate(model.blocks):
        if b.expand is not None:
            put(f"blocks.{i}.expand", b.expand)
        put(f"blocks.{i}.dw", b.dw)
        put(f"blocks.{i}.project", b.project)
    put("last", model.last)
    for n in ("fc1", "out"):
        lin = getattr(model, n)
        t[n + ".weight"] = lin.weight.detach().float().contiguous()
        t[n + ".bias"] = lin.bias.detach().float().contiguous()
    return t


def layer_list(config):
    """human/machine readable layer list with shapes, for the metadata and sfn/SFN.md."""
    s = config["input_size"]
    layers = []
    c_in = 3
    so = config["stem"]
    s = (s + 2 - 3) // so["stride"] + 1
    layers.append({"name": "stem", "op": "conv3x3", "in": c_in, "out": so["out"], "stride": so["stride"], "pad": 1,
                   "groups": 1, "act": "relu", "out_hw": s})
    for i, (ci, co, st, ex) in enumerate(config["blocks"]):
        hid = ci * ex
        if ex != 1:
            layers.append({"name": f"blocks.{i}.expand", "op": "conv1x1", "in": ci, "out": hid, "stride": 1,
                           "pad": 0, "groups": 1, "act": "relu", "out_hw": s})
        s = (s + 2 - 3) // st + 1
        layers.append({"name": f"blocks.{i}.dw", "op": "dwconv3x3", "in": hid, "out": hid, "stride": st, "pad": 1,
                       "groups": hid, "act": "relu", "out_hw": s})
        layers.append({"name": f"blocks.{i}.project", "op": "conv1x1", "in": hid, "out": co, "stride": 1, "pad": 0,
                       "groups": 1, "act": "none", "out_hw": s,
                       "residual": bool(st == 1 and ci == co), "pool_tap": i in config["pool_taps"]})
    layers.append({"name": "last", "op": "conv1x1", "in": config["blocks"][-1][1], "out": config["last_conv"],
                   "stride": 1, "pad": 0, "groups": 1, "act": "relu", "out_hw": s})
    feat = sum(config["blocks"][i][1] for i in config["pool_taps"]) + config["last_conv"]
    layers.append({"name": "fc1", "op": "linear", "in": feat, "out": config["fc_hidden"], "act": "relu"})
    layers.append({"name": "out", "op": "linear", "in": config["fc_hidden"], "out": config["out_dim"], "act": "none"})
    return layers


class FoldedSFN(torch.nn.Module):
    """Reference forward pass on the folded tensors (what Rust implements)."""

    def __init__(self, tensors, config):
        super().__init__()
        self.t, self.c = tensors, config

    def forward(self, x):
        t, c = self.t, self.c
        F = torch.nn.functional
        x = F.relu(F.conv2d(x, t["stem.weight"], t["stem.bias"], c["stem"]["stride"], 1))
        pooled = []
        for i, (ci, co, st, ex) in enumerate(c["blocks"]):
            y = x
            if ex != 1:
                y = F.relu(F.conv2d(y, t[f"blocks.{i}.expand.weight"], t[f"blocks.{i}.expand.bias"]))
            y = F.relu(F.conv2d(y, t[f"blocks.{i}.dw.weight"], t[f"blocks.{i}.dw.bias"], st, 1, groups=ci * ex))
            y = F.conv2d(y, t[f"blocks.{i}.project.weight"], t[f"blocks.{i}.project.bias"])
            x = x + y if (st == 1 and ci == co) else y
            if i in c["pool_taps"]:
                pooled.append(x.mean(dim=(2, 3)))
        x = F.relu(F.conv2d(x, t["last.weight"], t["last.bias"]))
        pooled.append(x.mean(dim=(2, 3)))
        f = torch.cat(pooled, 1)
        f = F.relu(F.linear(f, t["fc1.weight"], t["fc1.bias"]))
        return F.linear(f, t["out.weight"], t["out.bias"])


def postprocess(y):
    lmk = y[:, 0:136].reshape(-1, 68, 2)
    R = rot6d_to_matrix(y[:, 136:142])
    blend = torch.sigmoid(y[:, 142:193])
    prob = torch.sigmoid(y[:, 193])
    return lmk, R, blend, prob


def build_metadata(config, metrics=None, extra=None):
    model = SFN(config)
    md = {
        "format": "polyface-sfn",
        "format_version": "1",
        "input_size": json.dumps([1, 3, INPUT_SIZE, INPUT_SIZE]),
        "input_layout": "NCHW, RGB",
        "normalization": NORMALIZATION,
        "crop_rule": CROP_RULE,
        "crop_scale": "1.4",
        "output_layout": json.dumps([{"name": n, "start": s, "size": k} for n, s, k in OUTPUT_LAYOUT]),
        "output_dim": str(config["out_dim"]),
        "landmarks": "68 iBUG points, 0-based order; output[2k], output[2k+1] = x, y of point k in crop-normalised "
                     "coords (0..1 over the crop, continuous pixel convention): frame_x = cx - s/2 + x*s",
        "blendshape_names": json.dumps(BLENDSHAPE_NAMES),
        "blendshapes": "sigmoid(blend_logits), ARKit names in blendshape_names order (MediaPipe without _neutral)",
        "face_confidence": "sigmoid(face_logit): 1 = aligned face crop, 0 = non-face / badly misaligned crop (IoU<0.3)",
        "pose_convention": POSE_CONVENTION,
        "activation": "relu",
        "batchnorm": "folded into the preceding conv (weight, bias); every conv has a bias",
        "architecture": json.dumps(config),
        "layers": json.dumps(layer_list(config)),
        "params": str(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "macs_per_face": str(count_macs(model)),
        "training_data": "HELEN train (870 crops, 300-W human landmarks) + wild (10854 crops, teacher landmarks); "
                         "blendshape/pose labels from the MediaPipe FaceLandmarker teacher; negatives from HELEN-train "
                         "scene backgrounds, face parts, shifted crops and synthetic textures. Validation: HELEN test "
                         "(330). Research-use data (300-W annotations: non-commercial).",
        "git_commit": git_commit(),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if metrics is not None:
        md["validation_metrics"] = json.dumps(metrics)
    if extra:
        md.update({k: str(v) for k, v in extra.items()})
    return md


def fixture_inputs(cache_dir):
    """two uint8 RGB 112x112 inputs: one HELEN-test validation face crop, one synthetic pattern."""
    imgs = []
    if cache_dir and os.path.exists(os.path.join(cache_dir, "faces.npz")):
        from sfn.data import FaceCache, val_crop
        fc = FaceCache(cache_dir, decode=False)
        i = int(np.nonzero(fc.split == 1)[0][0])
        img, _ = val_crop(fc.decode(i), fc.lmk[i])
        imgs.append(img)
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:INPUT_SIZE, 0:INPUT_SIZE]
    syn = np.stack([(xx * 2) % 256, (yy * 2) % 256, ((xx + yy) * 3) % 256], -1).astype(np.float64)
    syn = np.clip(syn * 0.6 + rng.normal(0, 30, syn.shape) + 40, 0, 255).astype(np.uint8)
    imgs.append(syn)
    while len(imgs) < 2:
        imgs.append(syn[::-1].copy())
    return np.stack(imgs)  # N,112,112,3 RGB


def export(model, out_path, fixture_path=None, metrics=None, cache_dir=None, extra=None):
    model = model.eval()
    tensors = folded_tensors(model)
    md = build_metadata(model.config, metrics, extra)
    _atomic_save(tensors, out_path, md)
    if fixture_path:
        u8 = fixture_inputs(cache_dir)
        inp = torch.from_numpy(u8).permute(0, 3, 1, 2).contiguous()  # N,3,H,W uint8
        x = (inp.float() / 255.0 - 0.5) / 0.5
        with torch.no_grad():
            y = FoldedSFN(tensors, model.config)(x)
            y_ref = model(x)
        err = (y - y_ref).abs().max().item()
        assert err < 1e-3, f"folded/unfolded mismatch {err}"
        lmk, R, blend, prob = postprocess(y)
        fix = {"input_u8": inp, "output": y.contiguous(), "landmarks": lmk.contiguous(), "rotation": R.contiguous(),
               "blendshapes": blend.contiguous(), "face_prob": prob.contiguous()}
        _atomic_save(fix, fixture_path, {
            "description": "SFN parity fixture: input_u8 [N,3,112,112] RGB uint8; network input = "
                           "(input_u8/255-0.5)/0.5 as float32; output = raw flat SFN output [N,194] of the folded "
                           "weights in the sfn.safetensors exported together with this file; landmarks [N,68,2], "
                           "rotation [N,3,3] (Gram-Schmidt of pose6d), blendshapes [N,51] (sigmoid), face_prob [N] "
                           "(sigmoid). Tolerance 1e-3. Input 0 is a HELEN test crop (research use only), input 1 "
                           "is synthetic.",
            "model_exported_at": md["exported_at"], "folded_vs_bn_max_abs_diff": f"{err:.3e}"})
    return md


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="best.pt or last.pt from sfn/train.py")
    ap.add_argument("--out", default="models/sfn.safetensors")
    ap.add_argument("--fixture", default="tests/fixtures/sfn_parity.safetensors", help="'' to skip")
    ap.add_argument("--cache", default="training/cache", help="cache folder (for the real-face fixture input)")
    ap.add_argument("--raw", action="store_true", help="export the raw (non-EMA) weights")
    args = ap.parse_args()
    torch.set_num_threads(2)
    ck = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    model = SFN(ck["config"])
    model.load_state_dict(ck["model"] if args.raw or "ema" not in ck else ck["ema"])
    md = export(model, args.out, args.fixture or None, ck.get("metrics"), args.cache,
                {"epoch": ck.get("epoch", "?")})
    print(json.dumps({k: md[k] for k in ("params", "macs_per_face", "git_commit", "exported_at")}))
    print("validation_metrics:", md.get("validation_metrics"))


if __name__ == "__main__":
    main()
