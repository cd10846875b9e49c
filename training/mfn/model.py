"""Multi-face network (MFN): the detector's backbone + FPN + centre head, plus a stride-8 face trunk; for each
detected face a G x G grid of trunk features spread over its box is read and one linear layer (the "grid head")
turns them into the 68 landmarks, the head rotation and the 51 blendshapes.

Same layer-program format as the detector (detector/model.py), so the Rust `program` interpreter runs both.
See mfn/MFN.md for the reasoning and the exact output layout.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from detector import model as DM

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

# face_grid x face_grid sample points at offsets (i - (G-1)/2) * spacing * size from the face centre
DEFAULT_CONFIG = dict(copy.deepcopy(DM.DEFAULT_CONFIG), face_head=[96, 128], face_stride=FACE_STRIDE,
                      face_channels=FACE_CH, face_grid=3, face_grid_spacing=0.3, face_mlp=0, face_refine="")
FEATURES = "face.pw1"
# the landmark-indexed refinement (face_refine = this layer's name) reads the stride-4 FPN features
REFINE_FEATURES = "fpn.smooth4.pw"
REFINE_STRIDE = 4


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
    conv(FEATURES, "conv1x1", x, h1, h2)
    return L


OUTPUTS = ["head.out", FEATURES]


def outputs(config):
    """the program's named outputs: the detection map, the face trunk and, with the refinement, its features."""
    return OUTPUTS + ([config["face_refine"]] if config.get("face_refine") else [])


class MFN(DM.Detector):
    def __init__(self, config=None):
        super().__init__(config or DEFAULT_CONFIG, build_program)  # the detection head starts as the detector's
        c = self.config
        self.grid, self.spacing = c["face_grid"], c["face_grid_spacing"]
        self.roi = nn.Linear(self.grid * self.grid * c["face_head"][1], c["face_channels"])
        with torch.no_grad():
            nn.init.normal_(self.roi.weight, std=0.001)
            self.roi.bias.zero_()
            self.roi.bias[142:] = -2.0  # blendshapes start near 0.12 (most are small)
        # optional residual MLP beside the linear grid head: v = roi(s) + mlp2(relu(mlp1(s))). mlp2 starts at
        # zero, so a net that gains it starts exactly where its linear head was
        self.mlp_hidden = c.get("face_mlp", 0)
        if self.mlp_hidden:
            self.mlp1 = nn.Linear(self.roi.in_features, self.mlp_hidden)
            self.mlp2 = nn.Linear(self.mlp_hidden, c["face_channels"])
            with torch.no_grad():
                nn.init.kaiming_normal_(self.mlp1.weight, nonlinearity="relu")
                self.mlp1.weight.mul_(0.5)
                self.mlp1.bias.zero_()
                self.mlp2.weight.zero_()
                self.mlp2.bias.zero_()
        # optional landmark-indexed refinement: the stride-4 FPN features sampled at the 68 landmarks of the grid
        # head give a linear correction of all 193 values. It starts at zero, so the start is the net without it
        self.refine_layer = c.get("face_refine", "")
        if self.refine_layer:
            assert self.refine_layer == REFINE_FEATURES, self.refine_layer
            fine_ch = {l["name"]: l["out"] for l in self.program}[self.refine_layer]
            self.refine = nn.Linear(N_LMK * fine_ch, c["face_channels"])
            # further stages (face_refine_stages > 1) sample again at the landmarks the stage before gives
            self.refine_more = nn.ModuleList(nn.Linear(N_LMK * fine_ch, c["face_channels"])
                                             for _ in range(c.get("face_refine_stages", 1) - 1))
            # optional last stage with a hidden layer (face_refine_mlp = its width): it reads the samples at the
            # landmarks the stage before gives and that stage's 193 values (the current pose among them), so its
            # correction can depend non-linearly on both; its output layer starts at zero
            self.refine_hidden = c.get("face_refine_mlp", 0)
            if self.refine_hidden:
                self.refine_mlp1 = nn.Linear(N_LMK * fine_ch + c["face_channels"], self.refine_hidden)
                self.refine_mlp2 = nn.Linear(self.refine_hidden, c["face_channels"])
                with torch.no_grad():
                    nn.init.kaiming_normal_(self.refine_mlp1.weight, nonlinearity="relu")
                    self.refine_mlp1.weight.mul_(0.5)
                    self.refine_mlp1.bias.zero_()
            with torch.no_grad():
                for layer in [self.refine, *self.refine_more] + ([self.refine_mlp2] if self.refine_hidden else []):
                    layer.weight.zero_()
                    layer.bias.zero_()
        # optional trained pose stage (face_pose_fit = POSE_FIT_FEATURES): the pose fit's linear correction of the
        # rotation from the landmarks and the rotation (pose_fit_features), trained with the net so that the rotation
        # output learns what the landmarks' geometry cannot tell. The file stores it as the pose fit (face_pose_fit.*)
        self.pose_stage = c.get("face_pose_fit", "")
        if self.pose_stage:
            assert self.pose_stage == POSE_FIT_FEATURES, self.pose_stage
            self.pose_fit = nn.Linear(POSE_FIT_INPUTS, 6)
            with torch.no_grad():
                self.pose_fit.weight.zero_()
                self.pose_fit.bias.zero_()

    def forward(self, x):
        """-> detection map, face features (read per face by face_values): the stride-8 trunk, or with the
        refinement the pair (trunk, stride-4 features)."""
        t = self.run(x)
        if self.refine_layer:
            return t["head.out"], (t[FEATURES], t[self.refine_layer])
        return t["head.out"], t[FEATURES]

    def face_values(self, feat, centers, sizes, stages=False):
        """(B,N,193) raw face outputs for faces at centers (B,N,2) with sizes (B,N), input pixels; with stages=True
        the pair (grid head's values, final values)."""
        outs = face_values(feat, centers, sizes, self.roi.weight, self.roi.bias, self.grid, self.spacing,
                           self.mlp_tensors(), self.refine_tensors(), True)
        if self.pose_stage:
            outs[-1] = self.apply_pose_stage(outs[-1])
        return outs if stages else outs[-1]

    def apply_pose_stage(self, v):
        """v (..., 193) with the trained pose stage's correction: the pose fit's, with the landmarks as fixed inputs
        (the pose loss must not move them)."""
        return apply_pose_fit(v, (self.pose_fit.weight, self.pose_fit.bias), fixed_landmarks=True)

    def refine_tensors(self):
        """(weight, bias) of the landmark-indexed refinement (a list of them with several stages; the hidden-layer
        stage as (w1, b1, w2, b2)), or None."""
        if not self.refine_layer:
            return None
        if not len(self.refine_more) and not self.refine_hidden:
            return self.refine.weight, self.refine.bias
        return [(l.weight, l.bias) for l in [self.refine, *self.refine_more]] + (
            [(self.refine_mlp1.weight, self.refine_mlp1.bias, self.refine_mlp2.weight, self.refine_mlp2.bias)]
            if self.refine_hidden else [])

    def load_without_pose_stage(self, state_dict, pose_fit=None):
        """start from an MFN without the trained pose stage: the stage starts at that checkpoint's pose fit (a dict with
        weight and bias, as mfn/pose_fit.py writes it) or at zero, so the start is that net with its fit."""
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        assert not unexpected and set(missing) == {"pose_fit.weight", "pose_fit.bias"}, (missing, unexpected)
        if pose_fit is not None:
            with torch.no_grad():
                self.pose_fit.weight.copy_(pose_fit["weight"])
                self.pose_fit.bias.copy_(pose_fit["bias"])

    def load_without_refine(self, state_dict):
        """start from an MFN without the refinement (same outputs, since it starts at zero)."""
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        new = ("refine.", "refine_more.", "refine_mlp")
        assert not unexpected and all(k.startswith(new) for k in missing), (missing, unexpected)

    @torch.no_grad()
    def revive_dead_mlp(self, samples, generator=None):
        """re-initialises the MLP's hidden units that none of `samples` (rows of grid samples, as sample_grid gives
        them) activates: their first-layer weights and bias drawn afresh (nn.Linear's default ranges), their output
        weights zero, so the net's outputs stay the same while they can learn again. -> how many were revived."""
        dead = ~active_units(samples, self.mlp1.weight, self.mlp1.bias)
        n, fan_in = int(dead.sum()), self.mlp1.weight.shape[1]
        bound = 1 / math.sqrt(fan_in)
        self.mlp1.weight[dead] = (torch.rand(n, fan_in, generator=generator) * 2 - 1) * bound
        self.mlp1.bias[dead] = (torch.rand(n, generator=generator) * 2 - 1) * bound
        self.mlp2.weight[:, dead] = 0
        return n

    def mlp_tensors(self):
        """(w1, b1, w2, b2) of the residual MLP, or None."""
        if not self.mlp_hidden:
            return None
        return self.mlp1.weight, self.mlp1.bias, self.mlp2.weight, self.mlp2.bias

    def load_smaller_grid(self, state_dict, old_grid, old_spacing):
        """start from an MFN whose grid head read a coarser grid whose points are all points of this one (e.g. 3x3
        at 0.3 inside 5x5 at 0.15): each old point's weights go to its point here, the new points start at zero,
        so the start is the same net (the linear head and the MLP's first layer read the samples point-major)."""
        old = grid_offsets(old_grid, old_spacing)
        new = grid_offsets(self.grid, self.spacing)
        where = []
        for o in old:
            hit = ((new - o).abs().sum(1) < 1e-5).nonzero()
            assert len(hit) == 1, f"grid point {o.tolist()} of {old_grid}x{old_grid} at {old_spacing} is not one " \
                f"of {self.grid}x{self.grid} at {self.spacing}"
            where.append(int(hit[0]))
        C = self.roi.in_features // (self.grid * self.grid)
        state = dict(state_dict)
        for name in ["roi.weight"] + (["mlp1.weight"] if self.mlp_hidden else []):
            w_old = state[name]
            assert w_old.shape[1] == old_grid * old_grid * C, (name, w_old.shape)
            w = torch.zeros(w_old.shape[0], self.grid * self.grid * C)
            for k_old, k_new in enumerate(where):
                w[:, k_new * C:(k_new + 1) * C] = w_old[:, k_old * C:(k_old + 1) * C]
            state[name] = w
        self.load_state_dict(state)

    def load_linear_head(self, state_dict):
        """start from a grid-head MFN without the MLP (same outputs, since mlp2 starts at zero)."""
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        assert not unexpected and set(missing) <= {"mlp1.weight", "mlp1.bias", "mlp2.weight", "mlp2.bias"}, \
            (missing, unexpected)

    def load_dense_mfn(self, state_dict):
        """start from an MFN whose face head was one dense 1x1 conv (face.out, read at the centre only): the grid
        head's centre point gets that conv's weights and the other points zero, so the start is the same net."""
        state = dict(state_dict)
        w = state.pop("convs.face_out.weight")[:, :, 0, 0]
        b = state.pop("convs.face_out.bias")
        missing, unexpected = self.load_state_dict(state, strict=False)
        assert not unexpected and set(missing) == {"roi.weight", "roi.bias"}, (missing, unexpected)
        with torch.no_grad():
            C, mid = w.shape[1], (self.grid * self.grid) // 2
            self.roi.weight.zero_()
            self.roi.weight[:, mid * C:(mid + 1) * C] = w
            self.roi.bias.copy_(b)

    def load_detector(self, state_dict):
        """start from a trained detector: every detector tensor is reused, the face head starts fresh."""
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        assert not unexpected, unexpected
        assert all(k.startswith(("convs.face_", "bns.face_", "roi.")) for k in missing), missing


class DetView(nn.Module):
    """the MFN seen as a detector (head.out only), for the detector's evaluation code."""

    def __init__(self, mfn):
        super().__init__()
        self.mfn = mfn

    def forward(self, x):
        return self.mfn(x)[0]


def folded_outputs(tensors, program, x, names=OUTPUTS):
    """reference forward on folded tensors -> dict of every output named in `names`."""
    t = DM.folded_run(tensors, program, x)
    return {k: t[k] for k in names}


def image_features(feat, b):
    """image b's face features (batch of one): the trunk, or the (trunk, stride-4) pair."""
    return tuple(f[b:b + 1] for f in feat) if isinstance(feat, tuple) else feat[b:b + 1]


def low_rank(weight, rank):
    """(basis [rank, in], weight [out, rank]) with weight @ basis the best rank-`rank` approximation of `weight`
    (truncated SVD)."""
    U, S, Vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    return Vh[:rank].float().contiguous(), (U[:, :rank] * S[:rank]).float().contiguous()


def data_low_rank(weight, samples, rank):
    """(basis [rank, in], weight' [out, rank]) minimising the mean |weight @ x - weight' @ basis @ x|^2 over the
    rows x of `samples`: the truncated SVD of weight @ C^1/2 (C their second moments), mapped back by C^-1/2.
    Neighbouring grid samples are strongly correlated, so this keeps far more of the outputs than the plain SVD."""
    X = samples.detach().double()
    lam, U = torch.linalg.eigh(X.T @ X / len(X))
    lam = lam.clamp(min=lam.max().item() * 1e-6)
    root, inv_root = (U * lam.sqrt()) @ U.T, (U / lam.sqrt()) @ U.T
    P, S, Qh = torch.linalg.svd(weight.detach().double() @ root, full_matrices=False)
    return (Qh[:rank] @ inv_root).float().contiguous(), (P[:, :rank] * S[:rank]).float().contiguous()


def active_units(inputs, weight, bias):
    """which hidden units of a ReLU layer (weight [H, n], bias [H]) some row of inputs (rows, n) switches on -> (H,)
    bool: the MLP's dead units are the others (mfn/train.py --revive-mlp, --prune-dead-mlp)."""
    return (F.linear(inputs, weight, bias) > 0).any(0)


def sample_points(feat, pts, stride):
    """bilinear samples of a stride-`stride` map at points pts (B,N,P,2) in input px, border clamped ->
    (B,N,P*C), point-major. Cell (j,i) centre is input ((i+0.5)*stride, (j+0.5)*stride)."""
    B, C, H, W = feat.shape
    gx = pts[..., 0] / (stride * W) * 2 - 1
    gy = pts[..., 1] / (stride * H) * 2 - 1
    g = torch.stack([gx, gy], -1)  # B,N,P,2
    s = F.grid_sample(feat, g, mode="bilinear", padding_mode="border", align_corners=False)  # B,C,N,P
    N, P = g.shape[1], g.shape[2]
    return s.permute(0, 2, 3, 1).reshape(B, N, P * C)


def grid_offsets(grid, spacing):
    """(G*G, 2) sample offsets in units of the face size, row-major (y outer, x inner)."""
    r = (torch.arange(grid, dtype=torch.float32) - (grid - 1) / 2) * spacing
    gy, gx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)


def sample_grid(feat, centers, sizes, grid, spacing):
    """bilinear samples of the stride-8 features at a grid over each face, border clamped.
    feat (B,C,H,W); centers (B,N,2), sizes (B,N) in input px -> (B,N,G*G*C), point-major.
    Cell (j,i) centre is input ((i+0.5)*8, (j+0.5)*8)."""
    off = grid_offsets(grid, spacing).to(feat.device)  # P,2
    pts = centers[:, :, None, :] + off[None, None] * sizes[:, :, None, None]  # B,N,P,2
    return sample_points(feat, pts, FACE_STRIDE)


def face_values(feat, centers, sizes, weight, bias, grid, spacing, mlp=None, refine=None, stages=False,
                grid_basis=None, head_features=False):
    """the grid head: (B,N,193) = linear(sampled grid features) [+ mlp2(relu(mlp1(same)))]; with the refinement
    (feat = (trunk, fine), refine = (weight, bias), or (basis, weight, bias) as exported at a lower rank: weight @
    basis in place of weight) plus linear(fine sampled at the grid head's 68 landmarks); a stage (w1, b1, w2, b2)
    adds w2 relu(w1 [samples, values so far] + b1) + b2.
    stages=True -> (grid head's values, final values). grid_basis [r, G*G*C] (files exported with face_grid_rank r):
    the samples are first projected on it, and weight / mlp's first weight read those r values.
    head_features=True (factored heads only): the final values are followed by the head's own per-face features
    (HEAD_FEATURES_LAYOUT), what the pose fit with POSE_FIT_HEAD_FEATURES reads."""
    trunk, fine = feat if refine is not None else (feat, None)
    s = sample_grid(trunk, centers, sizes, grid, spacing)
    assert not head_features or grid_basis is not None, "head features need the grid head's projection"
    if grid_basis is not None:
        s = F.linear(s, grid_basis)
    own = [s]
    v = F.linear(s, weight, bias)
    if mlp is not None:
        w1, b1, w2, b2 = mlp
        h = F.relu(F.linear(s, w1, b1))
        own.append(h)
        v = v + F.linear(h, w2, b2)
    outs = [v]
    for stage in ([refine] if isinstance(refine, tuple) else refine or []):
        # the sample points are not trained through: the refinement corrects where the stage before put them
        lmk = centers[:, :, None, :] + outs[-1][..., :2 * N_LMK].detach().unflatten(-1, (N_LMK, 2)) \
            * sizes[:, :, None, None]
        s = sample_points(fine, lmk, REFINE_STRIDE)
        if len(stage) == 4:  # the hidden-layer stage: samples and the values so far
            w1, b1, w2, b2 = stage
            h = F.relu(F.linear(torch.cat([s, outs[-1].detach()], -1), w1, b1))
            outs.append(outs[-1] + F.linear(h, w2, b2))
            continue
        assert not head_features or len(stage) == 3, "head features need every refinement stage factored"
        if len(stage) == 3:
            s = F.linear(s, stage[0])
            own.append(s)
        outs.append(outs[-1] + F.linear(s, *stage[-2:]))
    if head_features:
        outs[-1] = torch.cat([outs[-1], *own], -1)
    return outs if stages else outs[-1]


POSE_FIT_FEATURES = "landmarks+rotation+products"  # the layout pose_fit_features gives (model metadata face_pose_fit)
POSE_FIT_INPUTS = 2 * N_LMK + 6 + 2 * N_LMK * 6
# ... followed by the exported head's own per-face features, which its decode computes anyway (HEAD_FEATURES_LAYOUT)
POSE_FIT_HEAD_FEATURES = POSE_FIT_FEATURES + "+head"
# ... and then the products of the landmarks' principal shape values (pose_fit_shape_products): the geometry read to
# second order, which a rotation's cosine terms need, in few values
POSE_FIT_SHAPE_FEATURES = POSE_FIT_HEAD_FEATURES + "+shape"
# ... with, after the pairs, the cubic products of the first few shape values and the rotation values' pairs
POSE_FIT_SHAPE3_FEATURES = POSE_FIT_SHAPE_FEATURES + "+cubic+rotation"
HEAD_FEATURES_LAYOUT = ("the grid samples' projection (face_roi.basis @ samples, face_grid_rank values), the MLP's "
                        "hidden values after the ReLU (face_mlp), each refinement stage's projection of its samples "
                        "(face_refineN.basis @ samples, face_refine_rank values each), in that order")


def head_feature_count(tensors):
    """how many per-face features an exported head gives (0 when it cannot give them: an unfactored head or stage)."""
    if "face_roi.basis" not in tensors or "face_refine_mlp.hidden.weight" in tensors:
        return 0
    n = tensors["face_roi.basis"].shape[0] + (tensors["face_mlp1.weight"].shape[0] if "face_mlp1.weight" in tensors
                                              else 0)
    for i in range(1, 9):
        p = "face_refine" if i == 1 else f"face_refine{i}"
        if f"{p}.weight" not in tensors:
            break
        if f"{p}.basis" not in tensors:
            return 0
        n += tensors[f"{p}.basis"].shape[0]
    return n


def exported_head(tensors, config, head_features=False):
    """the face head as an exported file's tensors compute it (low-rank forms, every refinement stage), without the
    pose fit: head(feat, centers, sizes) -> (B,N,193), as decode_faces takes it; with head_features (B,N,193 +
    head_feature_count(tensors)), the values followed by the head's own features."""
    stages = []
    for i in range(1, 9):
        p = "face_refine" if i == 1 else f"face_refine{i}"
        if f"{p}.weight" not in tensors:
            break
        stages.append(tuple(tensors[n] for n in (f"{p}.basis", f"{p}.weight", f"{p}.bias") if n in tensors))
    if "face_refine_mlp.hidden.weight" in tensors:
        stages.append(tuple(tensors[f"face_refine_mlp.{a}.{b}"] for a in ("hidden", "out") for b in ("weight", "bias")))
    mlp = tuple(tensors[f"face_mlp{i}.{k}"] for i in (1, 2) for k in ("weight", "bias")) \
        if "face_mlp1.weight" in tensors else None
    return lambda f, c, s: face_values(f, c, s, tensors["face_roi.weight"], tensors["face_roi.bias"],
                                       config["face_grid"], config["face_grid_spacing"], mlp, stages or None,
                                       grid_basis=tensors.get("face_roi.basis"), head_features=head_features)


def load_ema(path, pose_stage=True):
    """a training checkpoint -> (its dict, its EMA net in eval mode): the net every check script and export reads.
    A trained pose stage is left out with pose_stage=False (what mfn/pose_fit.py fits to) or when the checkpoint holds
    a pose fit, which replaces it."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    config, state = ck["config"], ck["ema"]
    if config.get("face_pose_fit") and (not pose_stage or "pose_fit" in ck):
        config = dict(config, face_pose_fit="")
        state = {k: v for k, v in state.items() if not k.startswith("pose_fit.")}
    model = MFN(config)
    model.load_state_dict(state)
    return ck, model.eval()


def pose_fit_features(v, head_features=False):
    """(..., 193) face values -> (..., 958) inputs of the pose fit: the 136 landmark coordinates centred on their mean
    and divided by their RMS distance from it (so the box's place and size drop out), the 6 rotation values, and every
    product of a landmark coordinate with a rotation value (landmark coordinate outer, rotation value inner).
    head_features: v is (..., 193 + n) as exported_head(..., head_features=True) gives it, and its n head features
    follow the 958 (POSE_FIT_HEAD_FEATURES)."""
    lmk = v[..., :2 * N_LMK].unflatten(-1, (N_LMK, 2))
    lmk = lmk - lmk.mean(-2, keepdim=True)
    lmk = (lmk / lmk.square().sum((-1, -2), keepdim=True).div(N_LMK).sqrt().clamp(min=1e-6)).flatten(-2)
    r6 = v[..., 136:142]
    own = [v[..., FACE_CH:]] if head_features else []
    return torch.cat([lmk, r6, (lmk[..., :, None] * r6[..., None, :]).flatten(-2), *own], -1)


def stored_pose_fit(fit):
    """a checkpoint's "pose_fit" entry (mfn/pose_fit.py) -> the tuple apply_pose_fit takes."""
    names = ("weight", "bias") + (("shape_mean", "shape_basis") if "shape_basis" in fit else ())
    return tuple(fit[n] for n in names) + ((fit["shape_cubic"],) if "shape_cubic" in fit else ())


def shape_product_count(pose_fit):
    """how many shape products a pose fit reads: k(k+1)/2 for (weight, bias, shape_mean, shape_basis [k, 136]),
    plus c(c+1)(c+2)/6 + 21 for (..., cubic c), 0 for (weight, bias)."""
    if pose_fit is None or len(pose_fit) == 2:
        return 0
    k = pose_fit[3].shape[0]
    c = pose_fit[4] if len(pose_fit) > 4 else None
    return k * (k + 1) // 2 + (0 if c is None else c * (c + 1) * (c + 2) // 6 + 21)


def cubic_indices(c):
    """(i, j, l) with i <= j <= l < c, i outer, l inner."""
    return torch.tensor([(a, b, d) for a in range(c) for b in range(a, c) for d in range(b, c)],
                        dtype=torch.long).reshape(-1, 3).T


def pose_fit_shape_products(features, mean, basis, cubic=None):
    """(..., 958 or more) pose fit inputs -> (..., k(k+1)/2): z = basis [k, 136] @ (the 136 scaled landmark values -
    mean [136]), the landmarks' principal shape values (basis holds the principal directions divided by their
    spread), and z_i * z_j for i <= j, i outer, j inner (numpy.triu_indices(k) order). With cubic = c, followed by
    z_i z_j z_l for i <= j <= l < c (cubic_indices order) and r_i r_j for i <= j of the 6 rotation values (inputs
    136..141)."""
    z = F.linear(features[..., :2 * N_LMK] - mean, basis)
    i, j = torch.triu_indices(basis.shape[0], basis.shape[0])
    out = [z[..., i] * z[..., j]]
    if cubic is not None:
        i, j, l = cubic_indices(cubic)
        r = features[..., 2 * N_LMK:2 * N_LMK + 6]
        ri, rj = torch.triu_indices(6, 6)
        out += [z[..., i] * z[..., j] * z[..., l], r[..., ri] * r[..., rj]]
    return torch.cat(out, -1)


def apply_pose_fit(v, pose_fit, fixed_landmarks=False):
    """v with the pose fit's correction added to its rotation values; pose_fit = (weight [6, 958], bias [6]) or
    None (v unchanged); a wider weight [6, 958 + n] reads the n head features that follow the 193 values in v (see
    pose_fit_features); (weight [6, 958 + n + k(k+1)/2], bias, shape_mean [136], shape_basis [k, 136]) also reads
    the shape products (pose_fit_shape_products) after those (POSE_FIT_SHAPE_FEATURES). fixed_landmarks: the
    landmarks feed the correction as fixed inputs (no gradient reaches them through it)."""
    if pose_fit is None:
        return v
    w, b = pose_fit[:2]
    products = shape_product_count(pose_fit)
    head_features = w.shape[-1] - products > POSE_FIT_INPUTS
    assert w.shape[-1] == POSE_FIT_INPUTS + (v.shape[-1] - FACE_CH) * head_features + products, (w.shape, v.shape)
    lmk = v[..., :2 * N_LMK]
    f = pose_fit_features(torch.cat([lmk.detach() if fixed_landmarks else lmk, v[..., 136:]], -1), head_features)
    if products:
        f = torch.cat([f, pose_fit_shape_products(f, *pose_fit[2:])], -1)
    return torch.cat([v[..., :136], v[..., 136:142] + F.linear(f, w, b), v[..., 142:]], -1)


def decode_faces(det_out, feat, head, threshold=DM.DEFAULT_SCORE_THRESHOLD):
    """-> per image list of dicts: boxes, scores, lmk (K,68,2), R (K,3,3), blend (K,51), values (K,193 or more) as the head
    gave them.
    head(feat (1,C,H,W), centers (1,K,2), sizes (1,K)) -> (1,K,193): MFN.face_values or face_values with tensors."""
    from sfn.model import rot6d_to_matrix
    dets = DM.decode(det_out, threshold=threshold)
    res = []
    for b, d in enumerate(dets):
        boxes = d["boxes"]
        if len(boxes) == 0:
            res.append(dict(d, lmk=torch.zeros(0, 68, 2), R=torch.zeros(0, 3, 3), blend=torch.zeros(0, 51),
                            values=torch.zeros(0, 193)))
            continue
        c = (boxes[:, :2] + boxes[:, 2:]) / 2
        size = (boxes[:, 2:] - boxes[:, :2]).max(1).values
        v = head(image_features(feat, b), c[None], size[None])[0]
        lmk = c[:, None, :] + v[:, :136].reshape(-1, 68, 2) * size[:, None, None]
        res.append(dict(d, lmk=lmk, R=rot6d_to_matrix(v[:, 136:142]), blend=torch.sigmoid(v[:, 142:FACE_CH]),
                        values=v))
    return res


if __name__ == "__main__":
    m = MFN()
    print("MACs %.2f M + %d per face, params %d + %d" % (DM.count_macs(m.program) / 1e6, m.roi.weight.numel(),
                                                       DM.count_params(m), m.roi.weight.numel() + m.roi.bias.numel()))
    m2 = MFN(dict(DEFAULT_CONFIG, face_mlp=256))
    m2.load_linear_head(m.state_dict())
    x = torch.randn(1, 3, 240, 320)
    with torch.no_grad():
        f = m.eval()(x)[1]
        c, sz = torch.tensor([[[100.0, 90.0]]]), torch.tensor([[60.0]])
        assert torch.allclose(m.face_values(f, c, sz), m2.eval().face_values(f, c, sz))
    print("residual MLP head starts at the linear head's outputs")
    m3 = MFN(dict(DEFAULT_CONFIG, face_mlp=256, face_grid=5, face_grid_spacing=0.15))
    m3.load_smaller_grid(m2.state_dict(), 3, 0.3)
    with torch.no_grad():
        assert torch.allclose(m2.face_values(f, c, sz), m3.eval().face_values(f, c, sz), atol=1e-6)
    print("5x5 grid head starts at the 3x3 head's outputs")
    m4 = MFN(dict(DEFAULT_CONFIG, face_mlp=256, face_grid=5, face_grid_spacing=0.15, face_refine=REFINE_FEATURES))
    m4.load_without_refine(m3.state_dict())
    with torch.no_grad():
        _, (f4, fine) = m4.eval()(x)
        assert torch.allclose(f4, f)
        assert torch.allclose(m3.face_values(f, c, sz), m4.face_values((f, fine), c, sz), atol=1e-6)
        m4.refine.weight.normal_(std=0.01)
        v1, v2 = m4.face_values((f, fine), c, sz, stages=True)
        lmk = (c[:, :, None] + v1[..., :136].unflatten(-1, (68, 2)) * sz[..., None, None])[0, 0]  # 68,2
        # one landmark's sample by hand: bilinear at map position (p/4 - 0.5), clamped
        k, C = 30, fine.shape[1]
        px, py = (lmk[k] / REFINE_STRIDE - 0.5).tolist()
        x0, y0 = math.floor(px), math.floor(py)
        fx, fy = px - x0, py - y0
        H, W = fine.shape[2:]

        def at(j, i):
            return fine[0, :, min(max(j, 0), H - 1), min(max(i, 0), W - 1)]
        ref = (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)) + fy * ((1 - fx) * at(y0 + 1, x0)
                                                                           + fx * at(y0 + 1, x0 + 1))
        got = sample_points(fine, lmk[None, None], REFINE_STRIDE)[0, 0, k * C:(k + 1) * C]
        assert torch.allclose(got, ref, atol=1e-5)
        basis, w = low_rank(m4.refine.weight, 193)
        assert torch.allclose(w @ basis, m4.refine.weight, atol=1e-5)
        assert torch.allclose(v2, face_values(
            (f, fine), c, sz, m4.roi.weight, m4.roi.bias, 5, 0.15, m4.mlp_tensors(), (basis, w, m4.refine.bias)),
            atol=1e-4)
    print("refinement starts at the net without it and samples the stride-4 map at the landmarks; factored at full "
          "rank it is the same")
    m5 = MFN(dict(m4.config, face_refine_mlp=32))
    m5.load_without_refine(m4.state_dict())
    with torch.no_grad():
        assert torch.allclose(m4.face_values((f, fine), c, sz), m5.eval().face_values((f, fine), c, sz), atol=1e-6)
        m5.refine_mlp2.weight.normal_(std=0.01)
        v1, v2, v3 = m5.face_values((f, fine), c, sz, stages=True)
        lmk = c[:, :, None] + v2[..., :136].unflatten(-1, (68, 2)) * sz[..., None, None]
        h = F.relu(m5.refine_mlp1(torch.cat([sample_points(fine, lmk, REFINE_STRIDE), v2], -1)))
        assert torch.allclose(v3, v2 + m5.refine_mlp2(h), atol=1e-5) and not torch.allclose(v3, v2, atol=1e-3)
    print("the hidden-layer stage starts at the net without it and reads the samples and the values before it")
    v = torch.randn(3, 193)
    moved = v.clone()
    moved[:, :136] = (v[:, :136].unflatten(-1, (68, 2)) * 2.5 + torch.tensor([3.0, -1.0])).flatten(-2)
    feats = pose_fit_features(v)
    assert feats.shape == (3, POSE_FIT_INPUTS) and torch.allclose(feats, pose_fit_features(moved), atol=1e-5)
    assert torch.allclose(apply_pose_fit(v, (torch.zeros(6, POSE_FIT_INPUTS), torch.ones(6)))[:, 136:142],
                          v[:, 136:142] + 1)
    print("the pose fit's inputs do not depend on the box's place and size")
    m6 = MFN(dict(m4.config, face_pose_fit=POSE_FIT_FEATURES))
    fit = {"weight": torch.randn(6, POSE_FIT_INPUTS) * 0.01, "bias": torch.randn(6) * 0.01}
    m6.load_without_pose_stage(m4.state_dict(), fit)
    with torch.no_grad():
        assert torch.allclose(m6.eval().face_values((f, fine), c, sz), apply_pose_fit(
            m4.face_values((f, fine), c, sz), (fit["weight"], fit["bias"])), atol=1e-5)
    v = torch.randn(2, 193, requires_grad=True)
    m6.apply_pose_stage(v)[:, 136:142].sum().backward()
    assert v.grad[:, :136].abs().max() == 0 and v.grad[:, 136:142].abs().max() > 0
    print("the trained pose stage starts at the pose fit it is given; the pose does not train the landmarks through it")
    both, mlp1 = torch.cat([m4.roi.weight, m4.mlp1.weight]), m4.mlp1.weight
    basis, both = low_rank(both, both.shape[0])
    tensors = {"face_roi.basis": basis, "face_roi.weight": both[:FACE_CH], "face_roi.bias": m4.roi.bias,
               "face_mlp1.weight": both[FACE_CH:], "face_mlp1.bias": m4.mlp1.bias, "face_mlp2.weight": m4.mlp2.weight,
               "face_mlp2.bias": m4.mlp2.bias, "face_refine.bias": m4.refine.bias}
    tensors["face_refine.basis"], tensors["face_refine.weight"] = low_rank(m4.refine.weight, FACE_CH)
    n = head_feature_count(tensors)
    assert n == 449 + 256 + FACE_CH, n
    with torch.no_grad():
        vx = exported_head(tensors, m4.config, head_features=True)((f, fine), c, sz)
        assert vx.shape[-1] == FACE_CH + n
        assert torch.allclose(vx[..., :FACE_CH], m4.face_values((f, fine), c, sz), atol=1e-4)
        assert torch.allclose(vx[..., FACE_CH:FACE_CH + 449], F.linear(sample_grid(f, c, sz, 5, 0.15), basis), atol=1e-4)
        wide = (torch.cat([fit["weight"], torch.zeros(6, n)], 1), fit["bias"])
        assert torch.allclose(apply_pose_fit(vx, wide)[..., :FACE_CH], apply_pose_fit(vx[..., :FACE_CH], (
            fit["weight"], fit["bias"])), atol=1e-5)
        wide[0][:, -1] = 1.0
        assert not torch.allclose(apply_pose_fit(vx, wide)[..., 136:142], apply_pose_fit(vx[..., :FACE_CH], (
            fit["weight"], fit["bias"]))[..., 136:142], atol=1e-5)
    print("the exported head gives its own features after its values; a pose fit reads them after the 958")
    with torch.no_grad():
        k, mean, sbasis = 3, torch.randn(136) * 0.01, torch.randn(3, 136)
        shaped = (torch.cat([wide[0], torch.zeros(6, 6)], 1), wide[1], mean, sbasis)
        assert shape_product_count(shaped) == 6
        assert torch.allclose(apply_pose_fit(vx, shaped), apply_pose_fit(vx, wide), atol=1e-5)
        z = (pose_fit_features(vx[0, :1])[0, :136] - mean) @ sbasis.T
        shaped[0][2, -2] = 1.0  # the product z_1 * z_2 (i <= j, i outer), into rotation value 2
        assert torch.allclose(apply_pose_fit(vx[0, :1], shaped)[0, 138], apply_pose_fit(vx[0, :1], wide)[0, 138]
                              + z[1] * z[2], atol=1e-4)
        moved = vx[0, :1].clone()
        moved[:, :136] = (moved[:, :136].unflatten(-1, (68, 2)) * 0.5 + 2.0).flatten(-2)
        assert torch.allclose(apply_pose_fit(moved, shaped)[:, 136:142], apply_pose_fit(vx[0, :1], shaped)[:, 136:142],
                              rtol=1e-3, atol=1e-4)
    print("the shape products follow the head features, in triu order, and do not depend on the box either")
    m7 = copy.deepcopy(m4).eval()
    with torch.no_grad():
        m7.mlp1.bias[:200] = -1e3  # 200 dead units
        before = m7.face_values((f, fine), c, sz)
        rows = sample_grid(f, torch.rand(1, 40, 2) * 200 + 40, torch.rand(1, 40) * 60 + 30, 5, 0.15)[0]
        assert (F.relu(m7.mlp1(rows))[:, :200] == 0).all()
        assert m7.revive_dead_mlp(rows, torch.Generator().manual_seed(0)) >= 200
        assert torch.allclose(m7.face_values((f, fine), c, sz), before, atol=1e-6)
        assert (F.relu(m7.mlp1(rows))[:, :200] > 0).any(0).float().mean() > 0.2
    print("reviving dead MLP units keeps the outputs and makes them active again")
    a, b = m(torch.zeros(2, 3, 240, 320))
    print(a.shape, b.shape)
