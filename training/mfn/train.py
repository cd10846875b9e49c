#!/usr/bin/env python3
"""Train the multi-face network (MFN) on CPU or GPU, starting from the trained detector.

    nice -n 19 python training/mfn/train.py --det-cache training/cache/det --sfn-cache training/cache \
        --init models/checkpoints/detector_last.pt --out training/runs/mfn [--epochs N] [--resume]

Per epoch: `--samples` freshly generated images (scenes + composites with 1-20 labelled faces, deterministic per
seed/epoch), then validation: HELEN test crops used as the whole frame (NME, pose error, blendshape MAE against
human landmarks / teacher labels), HELEN-test scenes and 300 fixed composites (AP50). Logs <out>/log.csv,
checkpoints <out>/last.pt every epoch (resumable) and <out>/best.pt; on improvement the EMA weights are exported
to --export (models/mfn.safetensors) and --fixture (tests/fixtures/mfn_parity.safetensors).
"""
import argparse
import datetime
import json
import math
import os
import random
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages
from detector import data as D  # noqa: E402
from detector import model as DM  # noqa: E402
from mfn import data as MD  # noqa: E402
from mfn import model as M  # noqa: E402
from detector.train import focal_loss, reg_losses, evaluate as det_evaluate  # noqa: E402
from common import atomic_save_safetensors as _atomic_save, git_commit  # noqa: E402
from common.trainer import adamw, fit  # noqa: E402
from detector.export import letterbox_rule, normalization, output_layout, DECODING  # noqa: E402

W_LMK = 10.0  # loss weights; pose and blendshape weights are flags (--w-pose, --w-blend)
W_STAGE1 = 0.5  # with the refinement, the grid head's own values keep this share of the loss (they place its samples)


def face_losses(model, feat, t):
    """landmark, pose and blendshape losses; with the refinement, of the final values + W_STAGE1 x the grid
    head's."""
    if model.refine_layer:
        *earlier, v = model.face_values(feat, t["fcen"], t["fsize"], stages=True)
        losses = value_losses(v, t)
        for e in earlier:
            losses = tuple(a + W_STAGE1 * b for a, b in zip(losses, value_losses(e, t)))
        return losses
    return value_losses(model.face_values(feat, t["fcen"], t["fsize"]), t)


def value_losses(v, t):
    w = t["fw"]
    tg = t["ftgt"]
    n_l = w[..., 0].sum().clamp(min=1.0)
    n_p = w[..., 1].sum().clamp(min=1.0)
    n_b = w[..., 2].sum().clamp(min=1.0)
    l_lmk = ((v[..., :136] - tg[..., :136]).abs().mean(-1) * w[..., 0]).sum() / n_l
    l_pose = ((v[..., 136:142] - tg[..., 136:142]).abs().mean(-1) * w[..., 1]).sum() / n_p
    l_blend = ((torch.sigmoid(v[..., 142:]) - tg[..., 142:]).abs().mean(-1) * w[..., 2]).sum() / n_b
    return l_lmk, l_pose, l_blend


def rot_angle_deg(Ra, Rb):
    c = ((np.trace(Ra.T @ Rb) - 1) / 2).clip(-1, 1)
    return math.degrees(math.acos(c))


@torch.no_grad()
def matched_faces(model, frames, device="cpu", min_iou=0.3, pose_fit=None, head=None):
    """frames: (u8 320x240 image, true landmarks in input px) pairs -> for each, the decoded face whose box overlaps
    the landmarks' box most (dict with numpy lmk (68,2), R (3,3), blend (51,), values (193,)), or None when none
    overlaps by min_iou. The HELEN-as-frame protocol of the validation and of the check scripts. pose_fit: see
    mfn/pose_fit.py; head: the face head to use in place of the net's own (e.g. mfn_model.exported_head)."""
    model.eval()
    x = D.normalize(np.stack([f[0] for f in frames])).to(device)
    det, face = model(x)
    head = head or model.face_values
    res = M.decode_faces(det.float().cpu(), face, lambda f, c, s: M.apply_pose_fit(head(
        f, c.to(device), s.to(device)).float().cpu(), pose_fit), threshold=0.2)
    out = []
    for (_, gt), r in zip(frames, res):
        if len(r["scores"]) == 0:
            out.append(None)
            continue
        gb = D.box_of(gt)
        ious = [D._iou(np.asarray(b, np.float64), gb)[0] for b in r["boxes"].numpy()]
        j = int(np.argmax(ious))
        out.append(None if ious[j] < min_iou else {k: r[k][j].numpy() for k in ("lmk", "R", "blend", "values")})
    return out


@torch.no_grad()
def eval_helen_frames(model, data, device, limit=None, batch=30, max_scale=1.0):
    """HELEN test crops as the whole frame: the best-IoU detection is the face."""
    n = len(data.val_imgs) if limit is None else min(limit, len(data.val_imgs))
    nmes, poses, blends, missed = [], [], [], 0
    for a in range(0, n, batch):
        idx = list(range(a, min(n, a + batch)))
        frames = [MD.val_frame(data.val_imgs[i], data.val_lmk[i], max_scale) for i in idx]
        for (_, gt), i, f in zip(frames, idx, matched_faces(model, frames, device)):
            if f is None:
                missed += 1
                continue
            iod = np.linalg.norm(gt[36] - gt[45])
            nmes.append(np.linalg.norm(f["lmk"] - gt, axis=1).mean() / iod * 100)
            if data.val_has_pose[i]:
                poses.append(rot_angle_deg(f["R"].astype(np.float64), data.val_R[i]))
            if data.val_has_blend[i]:
                blends.append(np.abs(f["blend"] - data.val_blend[i]).mean())
    nm = np.array(nmes) if nmes else np.array([100.0])
    return {"helen_nme": float(nm.mean()), "helen_nme_median": float(np.median(nm)),
            "helen_fail10": float((nm > 10).mean() * 100), "helen_missed": missed,
            "pose_deg": float(np.mean(poses)) if poses else 180.0,
            "blend_mae": float(np.mean(blends)) if blends else 1.0}


def validate(model, data, device, limit=None):
    m = eval_helen_frames(model, data, device, limit)
    dv = M.DetView(model)
    c = data.det
    sc = det_evaluate(dv, c.test_jpeg, c.test_faces, c.test_scale, 30.0, DM.DEFAULT_SCORE_THRESHOLD,
                      device=device, limit=limit)
    vc = det_evaluate(dv, c.vc_jpeg, c.vc_faces, np.ones(len(c.vc_jpeg)), 12.0, DM.DEFAULT_SCORE_THRESHOLD,
                      device=device, limit=limit)
    m.update(scene_recall=sc["recall"], scene_precision=sc["precision"], scene_ap50=sc["ap50"],
             comp_recall=vc["recall"], comp_ap50=vc["ap50"])
    # one number to pick the exported epoch: detection quality and landmark accuracy, equally weighted
    m["score"] = 0.5 * (0.5 * (m["scene_ap50"] + m["comp_ap50"])) + 0.5 * max(0.0, 1.0 - m["helen_nme"] / 20.0)
    # the face outputs alone, each against its #4 target (NME 5 %, pose and blendshapes 1.2 x the SFN's 2.06 deg /
    # 0.052): 1 when all three sit on their targets, higher is better
    m["face_score"] = 2.0 - (m["helen_nme"] / 5.0 + m["pose_deg"] / 2.5 + m["blend_mae"] / 0.062) / 3.0
    return {k: round(float(v), 5) for k, v in m.items()}


# ---------------------------------------------------------------- export

FACE_OUTPUT_LAYOUT = (
    "face.pw1 [N,128,H/8,W/8]: stride-8 face features (cell (row j, col i) centre is input pixel ((i+0.5)*8, "
    "(j+0.5)*8)). The grid head face_roi (weight [193, G*G*128], bias [193]) maps a face's sampled grid features "
    "to 193 values: ch 0..135: landmarks k=0..67 as (dx_k, dy_k) pairs (ch 2k, 2k+1) relative to the face centre, in units of the "
    "face size; ch 136..141: first two columns of the head rotation R (canonical face -> camera, the SFN's "
    "convention): R00,R10,R20,R01,R11,R21 (Gram-Schmidt them); ch 142..192: blendshape logits (sigmoid -> [0,1]) "
    "in the SFN's BLENDSHAPE_NAMES order."
)
FACE_DECODING = (
    "For each detection from head.out (decoded exactly as the detector, see detector/DETECTOR.md): centre c = box centre, "
    "size = max(box w, box h). Configuration: the metadata key mfn_config (JSON: input_size [W, H], stride, "
    "face_stride, grid {size G, spacing, rank, mlp_hidden}, refine {layer, rank, stages}, pose_fit {shape_components, "
    "cubic} or null, score_threshold, nms_iou). For grid point (gy, gx), gy outer, gx inner, each in 0..G-1, the point "
    "p = c + ((gx - (G-1)/2) * spacing, (gy - (G-1)/2) * spacing) * size; sample face.pw1 bilinearly at map position "
    "(px/8 - 0.5, py/8 - 0.5), neighbours clamped to the map border; concatenate the G*G 128-channel samples point by "
    "point; s = face_roi.basis [rank, G*G*128] @ that; v = face_roi.weight [193, rank] @ s + face_roi.bias; with "
    "mlp_hidden = H > 0 also v += face_mlp2.weight [193,H] @ relu(face_mlp1.weight [H,rank] @ s + face_mlp1.bias) + "
    "face_mlp2.bias. Landmark k = c + (v 2k, v 2k+1) * size; R from v 136..141; blendshapes = sigmoid(v 142..192). All "
    "in network-input pixels; divide by the letterbox scale s for frame pixels. Refinement, stage i = 1..stages "
    "(tensors face_refine.*, face_refine2.*, ...): sample refine.layer (stride 4) bilinearly at the 68 landmarks of the "
    "v before it (map position (px/4 - 0.5, py/4 - 0.5), neighbours clamped), concatenate landmark by landmark, "
    "v += weight [193, rank] @ (basis [rank, 68*C] @ that) + bias. Pose fit (when pose_fit is not null), last: l = the "
    "136 landmark values (v 0..135) minus their mean point, divided by their RMS distance from it; r = v 136..141; "
    "f = [l, r, l_i * r_j for i in 0..135 (outer), j in 0..5 (inner)] (958 values), then the head's own per-face "
    "features: " + M.HEAD_FEATURES_LAYOUT + ", then z = face_pose_fit.shape_basis [k, 136] @ (l - "
    "face_pose_fit.shape_mean), z_i * z_j for i <= j (i outer), z_i * z_j * z_l for i <= j <= l < cubic, r_i * r_j for "
    "i <= j; v 136..141 += face_pose_fit.weight [6, all of those] @ f + face_pose_fit.bias."
)

# metadata keys of format 2 that format 3 holds in mfn_config (or no longer has)
FORMAT2_KEYS = ("face_grid", "face_grid_spacing", "face_mlp", "face_mlp_trained", "face_grid_rank", "face_refine",
                "face_refine_rank", "face_refine_stages", "face_refine_mlp", "face_pose_fit", "face_pose_fit_cubic",
                "input_size", "stride", "face_stride", "score_threshold", "nms_iou")


def format3_config(md, tensors):
    """mfn_config (format 3) from a format-2 file's metadata and tensors; refuses the layouts format 3 dropped
    (an unfactored head, the hidden-layer refinement stage, earlier pose-fit layouts)."""
    n, c, h, w = json.loads(md["input_size"])
    get = lambda key, default="0": md.get(key) or default  # noqa: E731
    assert int(get("face_grid_rank")) > 0, "format 3 needs the grid head factored (--grid-rank)"
    assert get("face_refine", "") and int(get("face_refine_rank")) > 0, "format 3 needs the factored refinement"
    assert int(get("face_refine_mlp")) == 0, "format 3 has no hidden-layer refinement stage"
    fit = get("face_pose_fit", "")
    assert fit in ("", M.POSE_FIT_SHAPE3_FEATURES), f"format 3 reads the {M.POSE_FIT_SHAPE3_FEATURES} pose fit only"
    return {
        "input_size": [w, h], "stride": int(md["stride"]), "face_stride": int(md["face_stride"]),
        "grid": {"size": int(md["face_grid"]), "spacing": float(md["face_grid_spacing"]),
                 "rank": int(md["face_grid_rank"]), "mlp_hidden": int(get("face_mlp"))},
        "refine": {"layer": md["face_refine"], "rank": int(md["face_refine_rank"]),
                   "stages": int(get("face_refine_stages", "1"))},
        "pose_fit": None if not fit else {"shape_components": int(tensors["face_pose_fit.shape_basis"].shape[0]),
                                          "cubic": int(md["face_pose_fit_cubic"])},
        "score_threshold": float(md["score_threshold"]), "nms_iou": float(md["nms_iou"]),
    }


def format3_metadata(md, tensors):
    """format-2 metadata -> format 3: the switches in one mfn_config record, the rest as it was."""
    out = {k: v for k, v in md.items() if k not in FORMAT2_KEYS}
    out.update(format_version="3", mfn_config=json.dumps(format3_config(md, tensors)), face_decoding=FACE_DECODING)
    return out


def grid_calibration(model, data, images=480, seed=99):
    """the grid samples (rows) of the labelled faces of `images` training composites (fixed seed, box jitter as in
    training): what the grid head's low-rank form is fitted to."""
    model = model.eval()
    ds = MD.MFNTrainSet(data, images, seed, 0, box_jitter=0.03)
    rows = []
    with torch.no_grad():
        for x, t in torch.utils.data.DataLoader(ds, batch_size=16):
            _, feat = model(x)
            trunk = feat[0] if isinstance(feat, tuple) else feat
            s = M.sample_grid(trunk, t["fcen"], t["fsize"], model.grid, model.spacing)
            rows.append(s[t["fw"][..., 0] > 0])
    return torch.cat(rows)


def export(model, out_path, fixture_path, metrics, cache, blend_names, extra, refine_rank=0, grid_rank=0,
           calibration=None, pose_fit=None, prune_mlp=False):
    """model file + parity fixture. refine_rank > 0 stores the refinement's weight as its truncated SVD; grid_rank
    > 0 (with `calibration`, grid_calibration's rows) stores the grid head's linear layer and the MLP's first layer
    as one shared projection to grid_rank values and two small weights, fitted to those rows (data_low_rank): two
    smaller products in the decode. pose_fit: (weight, bias) from mfn/pose_fit.py, stored as face_pose_fit.*.
    prune_mlp (with grid_rank): the MLP's hidden units that no calibration row activates are left out, with a pose
    fit's weights for them (they read zeros): the same outputs wherever those units stay off, for less work."""
    model = model.eval()
    tensors = DM.folded_tensors(model)
    roi_w = model.roi.weight.detach()
    mlp = model.mlp_tensors()
    mlp = None if mlp is None else tuple(t.detach() for t in mlp)
    head_params = macs_per_face = 0
    if grid_rank > 0:
        both = roi_w if mlp is None else torch.cat([roi_w, mlp[0]])
        basis, both = M.data_low_rank(both, calibration, grid_rank)
        tensors["face_roi.basis"] = basis
        head_params += basis.numel()
        macs_per_face += basis.numel()
        roi_w = both[:roi_w.shape[0]]
        if mlp is not None:
            mlp = (both[roi_w.shape[0]:], *mlp[1:])
    roi_b, dead = model.roi.bias.detach(), None
    if prune_mlp and mlp is not None:
        assert grid_rank > 0, "pruning the MLP reads the calibration rows of the low-rank fit (grid_rank)"
        with torch.no_grad():
            projected = F.linear(calibration.float(), tensors["face_roi.basis"].float())
            alive = torch.nonzero(M.active_units(projected, mlp[0], mlp[1]))[:, 0]
        print(f"MLP: {len(alive)} of {mlp[0].shape[0]} hidden units are active on the {len(projected)} calibration "
              f"faces")
        dead = (alive, mlp[0].shape[0])
        if len(alive) == 0:
            roi_b, mlp = roi_b + mlp[3], None
        else:
            mlp = (mlp[0][alive], mlp[1][alive], mlp[2][:, alive], mlp[3])
    tensors["face_roi.weight"] = roi_w.float().contiguous()
    tensors["face_roi.bias"] = roi_b.float().contiguous()
    head_params += roi_w.numel() + model.roi.bias.numel()
    macs_per_face += roi_w.numel()
    if mlp is not None:
        for name, t in zip(["face_mlp1.weight", "face_mlp1.bias", "face_mlp2.weight", "face_mlp2.bias"], mlp):
            tensors[name] = t.float().contiguous()
            head_params += t.numel()
        macs_per_face += mlp[0].numel() + mlp[2].numel()
    refine = model.refine_tensors()
    stages = [refine] if isinstance(refine, tuple) else refine or []
    for i, stage in enumerate(stages):
        prefix = "face_refine" if i == 0 else f"face_refine{i + 1}"  # stage 1, 2, ...
        names = [f"{prefix}.weight", f"{prefix}.bias"]
        if len(stage) == 4:  # the hidden-layer stage (always last)
            names = [f"face_refine_mlp.{a}.{b}" for a in ("hidden", "out") for b in ("weight", "bias")]
        elif 0 < refine_rank < min(stage[0].shape):
            stage = (*M.low_rank(stage[0], refine_rank), stage[1])
            names.insert(0, f"{prefix}.basis")
        for name, t in zip(names, stage):
            tensors[name] = t.detach().float().contiguous()
            head_params += t.numel()
            macs_per_face += t.numel() if t.ndim == 2 else 0
    products = M.shape_product_count(pose_fit)
    head_features = 0 if pose_fit is None else pose_fit[0].shape[1] - M.POSE_FIT_INPUTS - products
    if dead is not None and head_features == M.head_feature_count(tensors) + dead[1] - len(dead[0]):
        # a fit made on the head with every hidden unit: its weights for the units left out read zeros
        first = M.POSE_FIT_INPUTS + grid_rank  # the fit's first weight for a hidden unit (HEAD_FEATURES_LAYOUT)
        keep = torch.cat([torch.arange(first), first + dead[0], torch.arange(first + dead[1], pose_fit[0].shape[1])])
        pose_fit = (pose_fit[0][:, keep], *pose_fit[1:])
        head_features = len(keep) - M.POSE_FIT_INPUTS - products
    if pose_fit is not None:
        # a fit that reads the head's own features was fitted to this head exported at these ranks
        assert head_features in (0, M.head_feature_count(tensors)), (pose_fit[0].shape, M.head_feature_count(tensors))
        names = ("weight", "bias", "shape_mean", "shape_basis")[:len(pose_fit)]
        assert not products or head_features, "shape products come only after the head features"
        for name, t in zip(names, pose_fit):
            tensors[f"face_pose_fit.{name}"] = t.float().contiguous()
        head_params += sum(t.numel() for t in pose_fit[:4])
        macs_per_face += pose_fit[0].numel() + (pose_fit[3].numel() if products else 0)
    c = model.config
    outputs = M.outputs(c)
    md = {
        "format": "polyface-mfn", "format_version": "2",
        "face_grid": str(c["face_grid"]), "face_grid_spacing": str(c["face_grid_spacing"]),
        "face_mlp": str(0 if mlp is None else mlp[0].shape[0]), "face_mlp_trained": str(c.get("face_mlp", 0)),
        "face_grid_rank": str(grid_rank if grid_rank > 0 else 0),
        "face_refine": c.get("face_refine", ""),
        "face_refine_rank": str(tensors["face_refine.basis"].shape[0] if "face_refine.basis" in tensors else 0),
        "face_refine_stages": str(sum(len(st) < 4 for st in stages)),
        "face_refine_mlp": str(c.get("face_refine_mlp", 0)),
        "face_pose_fit": "" if pose_fit is None else M.POSE_FIT_SHAPE3_FEATURES if len(pose_fit) > 4 else
        M.POSE_FIT_SHAPE_FEATURES if products else M.POSE_FIT_HEAD_FEATURES if head_features else
        M.POSE_FIT_FEATURES,
        **({"face_pose_fit_cubic": str(pose_fit[4])} if pose_fit is not None and len(pose_fit) > 4 else {}),
        "input_size": json.dumps([1, 3, c["input_size"][1], c["input_size"][0]]),
        "input_layout": "NCHW, RGB", "letterbox": letterbox_rule(*c["input_size"]),
        "normalization": normalization(*c["input_size"]),
        "stride": str(c["stride"]), "face_stride": str(c["face_stride"]),
        "outputs": json.dumps(outputs),
        "output_layout": "head.out: " + output_layout(*c["input_size"]), "face_output_layout": FACE_OUTPUT_LAYOUT,
        "decoding": DECODING, "face_decoding": FACE_DECODING,
        "blendshape_names": json.dumps(blend_names),
        "score_threshold": str(DM.DEFAULT_SCORE_THRESHOLD), "nms_iou": str(DM.DEFAULT_NMS_IOU),
        "max_detections": str(DM.MAX_DETECTIONS), "activation": "relu",
        "batchnorm": "folded into the preceding conv (weight, bias); every conv has a bias",
        "architecture": json.dumps(c), "layers": json.dumps(model.program),
        "layers_note": "evaluate `layers` in order (see detector/DETECTOR.md); outputs are the tensors named in `outputs`",
        "params": str(DM.count_params(model) + head_params),
        "macs": str(DM.count_macs(model.program)), "macs_per_face": str(macs_per_face),
        "training_data": "see training/mfn/MFN.md", "git_commit": git_commit(),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "validation_metrics": json.dumps(metrics),
    }
    md.update({k: str(v) for k, v in extra.items()})
    md = format3_metadata(md, tensors)
    _atomic_save(tensors, out_path, md)
    if fixture_path:
        i = int(np.argmax([len(f["box"]) for f in cache.vc_faces]))
        u8 = D.dec_jpeg(cache.vc_jpeg[i])
        if u8.shape[1] != c["input_size"][0]:  # the validation composites are 320x240: enlarged for a larger input
            import cv2
            u8 = cv2.resize(u8, tuple(c["input_size"]), interpolation=cv2.INTER_LINEAR)
        inp = torch.from_numpy(np.ascontiguousarray(u8)).permute(2, 0, 1)[None].contiguous()
        x = (inp.float() / 255.0 - 0.5) / 0.5
        with torch.no_grad():
            y = M.folded_outputs(tensors, model.program, x, outputs)
            ref = model(x)
        feats = [y[name] for name in outputs[1:]]
        refs = list(ref[1]) if stages else [ref[1]]
        err = max((a - b).abs().max().item() for a, b in zip([y["head.out"]] + feats, [ref[0]] + refs))
        feat = tuple(feats) if stages else feats[0]
        assert err < 1e-3, f"folded/unfolded mismatch {err}"
        head = M.exported_head(tensors, c, head_features > 0)
        d = M.decode_faces(y["head.out"], feat, lambda f, cc, ss: M.apply_pose_fit(head(f, cc, ss), pose_fit))[0]
        k = len(d["scores"])
        fix = {"input_u8": inp, "head_out": y["head.out"].contiguous(), "face_features": y[M.FEATURES].contiguous(),
               "boxes": d["boxes"].reshape(-1, 4).contiguous(), "scores": d["scores"].reshape(-1).contiguous(),
               "landmarks": d["lmk"].reshape(-1, 68, 2).contiguous(), "rotation": d["R"].reshape(-1, 3, 3).contiguous(),
               "blendshapes": d["blend"].reshape(-1, 51).contiguous()}
        if stages:
            fix["refine_features"] = y[c["face_refine"]].contiguous()
        if k == 0:
            fix.update(boxes=torch.zeros(1, 4), scores=torch.zeros(1), landmarks=torch.zeros(1, 68, 2),
                       rotation=torch.zeros(1, 3, 3), blendshapes=torch.zeros(1, 51))
        _atomic_save(fix, fixture_path, {
            "description": "MFN parity fixture: input_u8 [1,3,H,W] (already letterboxed); head_out / face_features = "
                           "raw outputs of the folded weights in the mfn.safetensors exported together with this "
                           "file; boxes/scores/landmarks/rotation/blendshapes = decoded (score_threshold, nms_iou "
                           "of the model). Tolerance: outputs 1e-3 abs.",
            "n_detections": str(k), "model_exported_at": md["exported_at"],
            "folded_vs_bn_max_abs_diff": f"{err:.3e}"})
    return md


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--det-cache", default="training/cache/det")
    ap.add_argument("--sfn-cache", default="training/cache")
    ap.add_argument("--init", default="models/checkpoints/detector_last.pt",
                    help="detector checkpoint to start from (its EMA weights); '' = from scratch")
    ap.add_argument("--out", default="training/runs/mfn")
    ap.add_argument("--epochs", type=int, default=40, help="total epochs (cosine LR schedule spans them)")
    ap.add_argument("--samples", type=int, default=3200, help="training images per epoch")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=5e-5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init-mfn", default="",
                    help="start from an MFN checkpoint with the older dense face head (its EMA weights)")
    ap.add_argument("--face-mlp", type=int, default=0,
                    help="hidden size of a residual MLP beside the linear grid head (0 = none)")
    ap.add_argument("--init-grid", default="",
                    help="start from a grid-head MFN checkpoint (e.g. models/checkpoints/mfn_last.pt); with "
                         "--face-mlp the MLP starts at zero, so the start is that net")
    ap.add_argument("--init-full", default="",
                    help="start from every weight (EMA) of an MFN checkpoint with the same config (a new run)")
    ap.add_argument("--face-grid", type=int, default=M.DEFAULT_CONFIG["face_grid"],
                    help="G: the grid head reads G x G points over each face")
    ap.add_argument("--grid-spacing", type=float, default=M.DEFAULT_CONFIG["face_grid_spacing"],
                    help="distance between grid points, in face sizes; with --init-full from a coarser grid whose "
                    "points are all on this one (3 at 0.3 -> 5 at 0.15), the new points start at zero")
    ap.add_argument("--w-pose", type=float, default=1.0, help="loss weight of the 6D rotation (L1)")
    ap.add_argument("--w-blend", type=float, default=2.0, help="loss weight of the blendshapes (L1)")
    ap.add_argument("--box-jitter", type=float, default=0.0,
                    help="read the face grid around a perturbed box (std as a fraction of the face size), as "
                         "inference reads around the detector's box; 0 = the exact box")
    ap.add_argument("--select", choices=["score", "face"], default="score",
                    help="exported epoch: 'score' (detection AP + NME) or 'face' (NME, pose, blendshapes against "
                         "the #4 targets; for runs that keep detection as it is)")
    ap.add_argument("--face-refine", action="store_true",
                    help="add the landmark-indexed refinement (stride-4 features at the 68 landmarks -> linear "
                         "correction of all values); from an --init-full net without it, it starts at zero")
    ap.add_argument("--refine-stages", type=int, default=1,
                    help="with --face-refine: refinement stages, each sampling at the landmarks the one before "
                         "gives; from an --init-full net with fewer, the new ones start at zero")
    ap.add_argument("--refine-mlp", type=int, default=0,
                    help="with --face-refine: width of a last refinement stage with a hidden layer, reading the "
                         "samples at the landmarks and the values so far (0 = none)")
    ap.add_argument("--pose-stage", action="store_true",
                    help="train a pose stage (the pose fit's linear correction, mfn_model.pose_fit_features) with the "
                         "net; from --init-full it starts at that checkpoint's pose fit, if it has one")
    ap.add_argument("--refine-rank", type=int, default=96,
                    help="export the refinement's weight as its rank-r truncated SVD (0: as trained); rank 96 "
                         "scored the same as the full weight")
    ap.add_argument("--grid-rank", type=int, default=0,
                    help="export the grid head's linear layer + the MLP's first layer through a shared rank-r "
                         "projection fitted to training composites' samples (0: as trained)")
    ap.add_argument("--export-from", default="",
                    help="only export this checkpoint's EMA weights (with --export, --fixture, --refine-rank)")
    ap.add_argument("--sharp-faces", action="store_true",
                    help="paste faces larger than 80 px from training/cache/faces256.npz, and validate on those crops")
    ap.add_argument("--val-limit", type=int, default=None, help="validate on the first N images only (smoke)")
    ap.add_argument("--export", default="models/mfn.safetensors", help="'' to skip")
    ap.add_argument("--fixture", default="tests/fixtures/mfn_parity.safetensors", help="'' to skip")
    ap.add_argument("--revive-mlp", action="store_true",
                    help="with --init-full: re-initialise the MLP's hidden units that no calibration face activates "
                         "(output weights zero, so the start is the same net)")
    ap.add_argument("--mlp-lr-scale", type=float, default=1.0,
                    help="the residual MLP's learning rate as a share of --lr (without weight decay when not 1)")
    ap.add_argument("--prune-dead-mlp", action="store_true",
                    help="with --export-from and --grid-rank: leave out the MLP's hidden units that no calibration "
                         "face activates (and a pose fit's weights for them)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    data = MD.MFNData(args.det_cache, args.sfn_cache, sharp_faces=args.sharp_faces)
    if args.export_from:
        ck, em = M.load_ema(args.export_from)
        export(em, args.export, args.fixture or None, dict(ck["metrics"], epoch=ck["epoch"]), data.det,
               data.blend_names, {"epoch": ck["epoch"]}, args.refine_rank, args.grid_rank,
               grid_calibration(em, data) if args.grid_rank else None,
               M.stored_pose_fit(ck["pose_fit"]) if "pose_fit" in ck else
               (em.pose_fit.weight.detach(), em.pose_fit.bias.detach()) if em.pose_stage else None, args.prune_dead_mlp)
        print(f"exported {args.export_from} to {args.export}" + (f" + {args.fixture}" if args.fixture else ""))
        return
    model = M.MFN(dict(M.DEFAULT_CONFIG, face_mlp=args.face_mlp, face_grid=args.face_grid,
                       face_grid_spacing=args.grid_spacing,
                       face_refine=M.REFINE_FEATURES if args.face_refine else "",
                       face_refine_stages=args.refine_stages, face_refine_mlp=args.refine_mlp,
                       face_pose_fit=M.POSE_FIT_FEATURES if args.pose_stage else ""))
    if args.init_full and not args.resume:
        ck = torch.load(args.init_full, map_location="cpu", weights_only=False)
        old = ck.get("config", M.DEFAULT_CONFIG)
        if (old["face_grid"], old["face_grid_spacing"]) != (args.face_grid, args.grid_spacing):
            model.load_smaller_grid(ck["ema"], old["face_grid"], old["face_grid_spacing"])
        elif args.face_refine and ((old.get("face_refine_stages", 1) if old.get("face_refine") else 0)
                                   < args.refine_stages or old.get("face_refine_mlp", 0) < args.refine_mlp):
            model.load_without_refine(ck["ema"])
        elif args.pose_stage and not old.get("face_pose_fit"):
            model.load_without_pose_stage(ck["ema"], ck.get("pose_fit"))
        else:
            model.load_state_dict(ck["ema"])
        print(f"initialised from MFN {args.init_full} (epoch {ck.get('epoch')})", flush=True)
        if args.revive_mlp:
            revived = model.revive_dead_mlp(grid_calibration(model, data, images=120, seed=98),
                                            torch.Generator().manual_seed(args.seed))
            print(f"revived {revived} of {model.mlp1.weight.shape[0]} MLP hidden units no calibration face activated",
                  flush=True)
    elif args.init_grid and not args.resume:
        ck = torch.load(args.init_grid, map_location="cpu", weights_only=False)
        model.load_linear_head(ck["ema"])
        print(f"initialised from grid-head MFN {args.init_grid} (epoch {ck.get('epoch')})", flush=True)
    elif args.init_mfn and not args.resume:
        ck = torch.load(args.init_mfn, map_location="cpu", weights_only=False)
        model.load_dense_mfn(ck["ema"])
        print(f"initialised from dense-head MFN {args.init_mfn} (epoch {ck.get('epoch')})", flush=True)
    elif args.init and not args.resume:
        ck = torch.load(args.init, map_location="cpu", weights_only=False)
        model.load_detector(ck.get("ema", ck.get("model")))
        print(f"initialised from detector {args.init} (epoch {ck.get('epoch')})", flush=True)
    model.to(dev)
    print(f"params {DM.count_params(model)}, MACs {DM.count_macs(model.program) / 1e6:.2f} M", flush=True)
    # the residual MLP may learn at its own share of the learning rate (--mlp-lr-scale)
    scaled = (("mlp1.", "mlp2."), args.mlp_lr_scale) if args.mlp_lr_scale != 1 else None

    def losses(model, x, t):
        det, face = model(x)
        l_hm = focal_loss(det[:, 0], t["hm"], t["ign"])
        l_off, l_size, l_kps = reg_losses(det, t["ind"], t["msk"], t["reg"])
        l_lmk, l_pose, l_blend = face_losses(model, face, t)
        loss = l_hm + l_off + l_size + l_kps + W_LMK * l_lmk + args.w_pose * l_pose + args.w_blend * l_blend
        return loss, (l_hm, l_off, l_size, l_kps, l_lmk, l_pose, l_blend)

    def on_improve(ema_model, metrics, epoch):
        if args.export:
            em = M.MFN(model.config)
            em.load_state_dict(ema_model.state_dict())
            export(em, args.export, args.fixture or None, dict(metrics, epoch=epoch), data.det, data.blend_names,
                   {"epoch": epoch}, args.refine_rank, args.grid_rank,
                   grid_calibration(em, data) if args.grid_rank else None)
            print(f"exported {args.export}" + (f" + {args.fixture}" if args.fixture else ""), flush=True)

    fit(model, lambda epoch: MD.MFNTrainSet(data, args.samples, args.seed, epoch, box_jitter=args.box_jitter),
        losses, lambda ema: validate(ema, data, dev, args.val_limit), args,
        parts=("hm", "off", "size", "kps", "lmk", "pose", "blend"),
        select=lambda m: m["score"] if args.select == "score" else m["face_score"], on_improve=on_improve,
        optimizer=adamw(model, args.lr, args.wd, scaled), device=dev)

if __name__ == "__main__":
    main()
