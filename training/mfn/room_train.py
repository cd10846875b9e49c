#!/usr/bin/env python3
"""Train the MFN at 640x480 for faces as a webcam sees a room (mfn/room_data.py), from a trained 320x240 MFN.

    nice -n 19 python training/mfn/room_train.py --init-full models/checkpoints/mfn_last.pt --out training/runs/room \
        --epochs 24 --threads 1 [--resume]

The net is fully convolutional, so the 320x240 net's weights run unchanged at 640x480: a face keeps twice as many
pixels and stride-8 cells, and the training adapts the net to the new range of face sizes (12-460 px) and to real
group photos. Per epoch: `--samples` fresh samples, then validation on the groups test split (recall of faces
>= 20 px, AP50 on exhaustively labelled photos, teacher-relative NME by face size: groups/evaluate.py) and on the HELEN
test crops used as the whole frame (NME against human points, pose and blendshapes against the teacher). Logs
<out>/log.csv; <out>/last.pt every epoch (resumable), <out>/best.pt by `room_score`.
Export (low-rank head as shipped, with the checkpoint's pose fit when mfn/pose_fit.py has written one), and the
detector of the detector + SFN pipeline from the same net (its backbone and detection head: both pipelines find the
same faces, and the room's small faces are found at 640x480 by either):
    python training/mfn/room_train.py --export-from training/runs/room/best.pt
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages
from detector import model as DM  # noqa: E402
from groups import evaluate as GE  # noqa: E402
from mfn import model as M  # noqa: E402
from mfn import train as T  # noqa: E402
from mfn import room_data as RD  # noqa: E402
from common.trainer import fit, seed_everything  # noqa: E402
from detector.train import focal_loss  # noqa: E402
from detector.export import letterbox_rule  # noqa: E402


def det_reg_losses(out, t):
    """offset, size and keypoint L1 at the positive centres; keypoints only where they are real (kmsk)."""
    B, C, H, W = out.shape
    ind, msk, reg = t["ind"], t["msk"], t["reg"]
    pred = out[:, 1:].reshape(B, C - 1, H * W).gather(2, ind[:, None, :].expand(B, C - 1, ind.shape[1]))
    l1 = (pred.permute(0, 2, 1) - reg).abs()
    n = msk.sum().clamp(min=1.0)
    km = t["kmsk"] * msk
    return ((l1[..., 0:2] * msk[..., None]).sum() / n, (l1[..., 2:4] * msk[..., None]).sum() / n,
            (l1[..., 4:14] * km[..., None]).sum() / km.sum().clamp(min=1.0) / 5)


def room_score(m):
    """one number to pick the exported epoch: the issue's targets, each as a fraction of its goal (recall 0.92,
    AP50 0.90, NME of 40-90 px faces 6 %, HELEN-as-frame NME 4.5 %), equally weighted; higher is better."""
    return (min(m["groups_recall20"] / 0.92, 1.1) + min(m["groups_ap50"] / 0.90, 1.1)
            + min(6.0 / max(m["groups_nme_40_90"], 1e-3), 1.1) + min(4.5 / max(m["helen_nme"], 1e-3), 1.1)) / 4


def validate(model, data, groups_test, device, limit=None, max_scale=1.0):
    m = T.eval_helen_frames(model, data, device, limit, max_scale=max_scale)
    g = GE.run_model(model, groups_test, (RD.ROOM_W, RD.ROOM_H), limit=limit, max_scale=max_scale)
    m.update(groups_recall20=g["recall20"], groups_ap50=g["ap50_exhaustive"], groups_nme=g["nme"],
             groups_nme_40_90=g["nme_40_90"])
    for name, b in g["by_size"].items():
        m[f"recall_{name}"] = b["recall"]
        m[f"nme_{name}"] = b["nme"] if b["nme"] is not None else float("nan")
    m["room_score"] = room_score(m)
    return {k: round(float(v), 5) for k, v in m.items()}


def export_detector(mfn, ck, out, fixture, det_cache, max_scale=None, score_threshold=None):
    """the MFN's backbone and detection head as a detector file (the detector's format and layer list).

    max_scale: the detector's own letterbox limit (default: the MFN's). The SFN pipeline reads landmarks from
    crops of the original frame, so enlarging a small frame for the detector only changes which faces are found.
    score_threshold: the detector's operating point (default: the detector's own default); every candidate is then
    checked by the SFN's face confidence in the app."""
    from detector import export as det_export
    config = {k: v for k, v in mfn.config.items() if k in DM.DEFAULT_CONFIG}
    det = DM.Detector(config)
    state = {k: v for k, v in mfn.state_dict().items() if k in det.state_dict()}
    missing = set(det.state_dict()) - set(state)
    assert not missing, f"the MFN lacks detector weights: {sorted(missing)[:5]}"
    det.load_state_dict(state)
    metrics = {k: v for k, v in ck["metrics"].items() if k.startswith("groups") or k.startswith("recall")}
    det_export.export(det, out, fixture, metrics, det_cache,
                      {"epoch": ck["epoch"], "training": "mfn/room_train.py: the room MFN's backbone and detection head",
                       **letterbox_metadata(ck, max_scale),
                       **({"score_threshold": f"{score_threshold:g}"} if score_threshold is not None else {})})


def letterbox_metadata(ck, max_scale=None):
    """a net validated on photos enlarged by up to --max-scale has the app's letterbox enlarge them likewise."""
    if max_scale is None:
        max_scale = float(ck.get("args", {}).get("max_scale", 1.0))
    if max_scale == 1.0:
        return {}
    return {"letterbox_max_scale": f"{max_scale:g}", "letterbox": letterbox_rule(RD.ROOM_W, RD.ROOM_H, max_scale)}


def room_config(config):
    c = dict(config, input_size=[RD.ROOM_W, RD.ROOM_H])
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--det-cache", default="training/cache/det")
    ap.add_argument("--sfn-cache", default="training/cache")
    ap.add_argument("--groups-cache", default="training/cache/groups.npz")
    ap.add_argument("--groups", default="../shared/data/groups.jsonl", help="for the test split (validation)")
    ap.add_argument("--init-full", default="models/checkpoints/mfn_last.pt")
    ap.add_argument("--out", default="training/runs/room")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--samples", type=int, default=1600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--wd", type=float, default=5e-5)
    ap.add_argument("--w-pose", type=float, default=3.0)
    ap.add_argument("--w-blend", type=float, default=4.0)
    ap.add_argument("--box-jitter", type=float, default=0.03)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=33)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--val-limit", type=int, default=None)
    ap.add_argument("--max-scale", type=float, default=1.0,
                    help="validation letterbox: photos smaller than the input are enlarged by at most this (1: never)")
    ap.add_argument("--p-many", type=float, default=0.5,
                    help="of the composites, the share that are crowds of small faces (the rest: 1-3 large faces)")
    ap.add_argument("--export-from", default="")
    ap.add_argument("--export", default="models/mfn.safetensors")
    ap.add_argument("--fixture", default="tests/fixtures/mfn_parity.safetensors")
    ap.add_argument("--detector", default="models/detector.safetensors", help="'' to skip")
    ap.add_argument("--detector-max-scale", type=float, default=None,
                    help="the exported detector's letterbox_max_scale (default: the MFN's --max-scale)")
    ap.add_argument("--detector-score-threshold", type=float, default=None,
                    help="the exported detector's score_threshold (default: the detector's)")
    ap.add_argument("--detector-fixture", default="tests/fixtures/detector_parity.safetensors")
    ap.add_argument("--grid-rank", type=int, default=128)
    ap.add_argument("--refine-rank", type=int, default=96)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    dev = torch.device(args.device)
    data = RD.RoomData(args.det_cache, args.sfn_cache, args.groups_cache, sharp_faces=True)
    if args.export_from:
        ck, em = M.load_ema(args.export_from)
        if args.export:
            cal = T.grid_calibration(em, data)
            extra = {"epoch": ck["epoch"], "training": "mfn/room_train.py", **letterbox_metadata(ck)}
            T.export(em, args.export, args.fixture or None, dict(ck["metrics"], epoch=ck["epoch"]), data.det,
                     data.blend_names, extra, args.refine_rank,
                     args.grid_rank, cal, M.stored_pose_fit(ck["pose_fit"]) if "pose_fit" in ck else None, True)
            print(f"exported {args.export_from} to {args.export}")
        if args.detector:
            export_detector(em, ck, args.detector, args.detector_fixture or None, args.det_cache,
                            args.detector_max_scale, args.detector_score_threshold)
            print(f"exported its detector to {args.detector}")
        return
    groups_test = GE.read_groups(args.groups)

    ck0 = torch.load(args.init_full, map_location="cpu", weights_only=False)
    config = room_config(ck0["config"])
    config.pop("face_pose_fit", None)
    model = M.MFN(config)
    if not args.resume:
        model.load_state_dict({k: v for k, v in ck0["ema"].items() if not k.startswith("pose_fit.")})
        print(f"initialised from MFN {args.init_full} (epoch {ck0.get('epoch')})", flush=True)
    print(f"params {DM.count_params(model)}, MACs {DM.count_macs(M.MFN(config).program) / 1e6:.1f} M at "
          f"{RD.ROOM_W}x{RD.ROOM_H}", flush=True)

    def losses(model, x, t):
        det, face = model(x)
        l_hm = focal_loss(det[:, 0], t["hm"], t["ign"])
        l_off, l_size, l_kps = det_reg_losses(det, t)
        l_lmk, l_pose, l_blend = T.face_losses(model, face, t)
        loss = l_hm + l_off + l_size + l_kps + T.W_LMK * l_lmk + args.w_pose * l_pose + args.w_blend * l_blend
        return loss, (l_hm, l_off, l_size, l_kps, l_lmk, l_pose, l_blend)

    fit(model, lambda epoch: RD.RoomTrainSet(data, args.samples, args.seed, epoch, box_jitter=args.box_jitter,
                                             p_many=args.p_many),
        losses, lambda ema: validate(ema, data, groups_test, dev, args.val_limit, args.max_scale), args,
        parts=("hm", "off", "size", "kps", "lmk", "pose", "blend"), select=lambda m: m["room_score"],
        log_every=20, warm_max=150, device=dev)

if __name__ == "__main__":
    main()
