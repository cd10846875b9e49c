"""Multi-face network (MFN): the detector's backbone + FPN + centre head, plus a stride-8 face head that regresses,
at every cell, the 68 landmarks, the head rotation and the 51 blendshapes of a face centred there.

Same layer-program format as the detector (det_model.py), so the Rust `program` interpreter runs both.
See MFN.md for the reasoning and the exact output layout.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

import det_model as DM

FACE_STRIDE = 8
N_LMK = 68
N_BLEND = 51
# face head channels: landmarks relative to the face centre in units of the face size, rotation, blendshapes
FACE_LAYOUT = [
    ("landmarks", 0, 2 * N_LMK),   # (x_k - cx) / size, (y_k - cy) / size, k = 0..67 interleaved
    ("pose6d", 136, 6),            # first two columns of R (canonical face -> camera): R00,R10,R20,R01,R11,R21
    ("blend_logits", 142, N_BLEND),  # sigmoid -> ARKit blendshapes (BLENDSHAPE_NAMES order)
]
FACE_CH = 193

DEFAULT_CONFIG = dict(copy.deepcopy(DM.DEFAULT_CONFIG), face_head=[96, 128], face_stride=FACE_STRIDE,
                      face_channels=FACE_CH)


def build_program(config):
    """detector program, then the face head branching off the stride-8 FPN features."""
    L = DM.build_program(config)
    by_name = {l["name"]: l for l in L}
    src = by_name["fpn.smooth8.pw"]
    hw8 = src["out_hw"]
    c8 = src["out"]
    h1, h2 = config["face_head"]

    def conv(name, op, inp, cin, cout, act="relu", bn=True):
        return DM.conv_layer(L, name, op, inp, cin, cout, 1, act, hw8, bn)

    x = conv("face.dw0", "dwconv3x3", "fpn.smooth8.pw", c8, c8)
    x = conv("face.pw0", "conv1x1", x, c8, h1)
    x = conv("face.dw1", "dwconv3x3", x, h1, h1)
    x = conv("face.pw1", "conv1x1", x, h1, h2)
    conv("face.out", "conv1x1", x, h2, config["face_channels"], act="none", bn=False)
    return L


OUTPUTS = ["head.out", "face.out"]


class MFN(DM.Detector):
    def __init__(self, config=None):
        super().__init__(config or DEFAULT_CONFIG, build_program)  # the detection head starts as the detector's
        with torch.no_grad():
            fo = self.convs["face_out"]
            nn.init.normal_(fo.weight, std=0.001)
            fo.bias.zero_()
            fo.bias[142:] = -2.0  # blendshapes start near 0.12 (most are small)

    def forward(self, x):
        t = self.run(x)
        return t["head.out"], t["face.out"]

    def load_detector(self, state_dict):
        """start from a trained detector: every detector tensor is reused, the face head starts fresh."""
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        assert not unexpected, unexpected
        assert all(k.startswith(("convs.face_", "bns.face_")) for k in missing), missing


class DetView(nn.Module):
    """the MFN seen as a detector (head.out only), for the detector's evaluation code."""

    def __init__(self, mfn):
        super().__init__()
        self.mfn = mfn

    def forward(self, x):
        return self.mfn(x)[0]


def folded_outputs(tensors, program, x):
    """reference forward on folded tensors -> dict of every output named in OUTPUTS."""
    t = DM.folded_run(tensors, program, x)
    return {k: t[k] for k in OUTPUTS}


def sample_face(face_out, centers):
    """bilinear sample of the stride-8 face map at face centres (input px), border clamped.
    face_out (B,C,H,W); centers (B,N,2) -> (B,N,C). Cell (j,i) centre is input ((i+0.5)*8, (j+0.5)*8)."""
    B, C, H, W = face_out.shape
    gx = centers[..., 0] / (FACE_STRIDE * W) * 2 - 1
    gy = centers[..., 1] / (FACE_STRIDE * H) * 2 - 1
    grid = torch.stack([gx, gy], -1)[:, :, None, :]  # B,N,1,2
    s = F.grid_sample(face_out, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return s[..., 0].permute(0, 2, 1)


def decode_faces(det_out, face_out, threshold=DM.DEFAULT_SCORE_THRESHOLD):
    """-> per image list of dicts: boxes, scores, lmk (K,68,2), R (K,3,3), blend (K,51)."""
    from sfn_model import rot6d_to_matrix
    dets = DM.decode(det_out, threshold=threshold)
    res = []
    for b, d in enumerate(dets):
        boxes = d["boxes"]
        if len(boxes) == 0:
            res.append(dict(d, lmk=torch.zeros(0, 68, 2), R=torch.zeros(0, 3, 3), blend=torch.zeros(0, 51)))
            continue
        c = (boxes[:, :2] + boxes[:, 2:]) / 2
        size = (boxes[:, 2:] - boxes[:, :2]).max(1).values
        v = sample_face(face_out[b:b + 1], c[None])[0]
        lmk = c[:, None, :] + v[:, :136].reshape(-1, 68, 2) * size[:, None, None]
        res.append(dict(d, lmk=lmk, R=rot6d_to_matrix(v[:, 136:142]), blend=torch.sigmoid(v[:, 142:])))
    return res


if __name__ == "__main__":
    m = MFN()
    print("MACs %.2f M, params %d" % (DM.count_macs(m.program) / 1e6, DM.count_params(m)))
    a, b = m(torch.zeros(2, 3, 240, 320))
    print(a.shape, b.shape)
