"""Single-face network (SFN): a small MobileNetV2-style CNN.

Only ops: Conv2d (3x3 standard, 3x3 depthwise, 1x1 pointwise), BatchNorm (folded at export),
ReLU, residual add, global average pool, concatenation of pooled vectors, Linear.
See training/sfn/SFN.md for the layer-by-layer description.
"""
import json

import torch
import torch.nn as nn

INPUT_SIZE = 112
N_LMK = 68
N_BLEND = 51
# flat output layout: (name, start, size)
OUTPUT_LAYOUT = [
    ("landmarks", 0, 136),   # x0,y0,x1,y1,... crop-normalised [0,1] (raw linear output)
    ("pose6d", 136, 6),      # first two columns of R: R00,R10,R20,R01,R11,R21 (Gram-Schmidt it)
    ("blend_logits", 142, 51),  # sigmoid -> blendshapes in [0,1]
    ("face_logit", 193, 1),  # sigmoid -> face confidence
]
OUT_DIM = 194

# default config: stem, inverted-residual blocks, last 1x1 conv, pooled taps, FC head
DEFAULT_CONFIG = {
    "input_size": INPUT_SIZE,
    "stem": {"out": 16, "stride": 2},
    # [in, out, stride, expand]; expand == 1 means no expansion 1x1 conv
    "blocks": [
        [16, 16, 1, 1],
        [16, 24, 2, 3],
        [24, 24, 1, 3],
        [24, 40, 2, 4],
        [40, 40, 1, 4],
        [40, 40, 1, 4],
        [40, 80, 2, 4],
        [80, 80, 1, 4],
        [80, 80, 1, 4],
        [80, 96, 1, 4],
    ],
    "last_conv": 384,
    # pooled feature = concat(GAP(output of blocks[i]) for i in pool_taps, GAP(last_conv))
    "pool_taps": [5, 9],
    "fc_hidden": 512,
    "out_dim": OUT_DIM,
}


class ConvBN(nn.Sequential):
    def __init__(self, cin, cout, k, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hid = cin * expand
        self.expand = ConvBN(cin, hid, 1) if expand != 1 else None
        self.dw = ConvBN(hid, hid, 3, stride, groups=hid)
        self.project = ConvBN(hid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if self.expand is not None:
            y = self.expand(y)
        y = self.project(self.dw(y))
        return x + y if self.residual else y


class SFN(nn.Module):
    def __init__(self, config=None):
        super().__init__()
        self.config = json.loads(json.dumps(config or DEFAULT_CONFIG))
        c = self.config
        self.stem = ConvBN(3, c["stem"]["out"], 3, c["stem"]["stride"])
        self.blocks = nn.ModuleList([InvertedResidual(*b) for b in c["blocks"]])
        self.last = ConvBN(c["blocks"][-1][1], c["last_conv"], 1)
        feat = sum(c["blocks"][i][1] for i in c["pool_taps"]) + c["last_conv"]
        self.fc1 = nn.Linear(feat, c["fc_hidden"])
        self.out = nn.Linear(c["fc_hidden"], c["out_dim"])
        self.feat_dim = feat
        with torch.no_grad():  # start near the mean face / identity pose / mean blendshapes
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()
            self.out.bias[136:142] = torch.tensor([1.0, 0, 0, 0, 1.0, 0])
            self.out.bias[142:193] = -2.5

    def init_output_bias(self, mean_lmk, mean_blend):
        """mean_lmk: (136,) crop-normalised; mean_blend: (51,) in [0,1]."""
        with torch.no_grad():
            self.out.bias[0:136] = torch.as_tensor(mean_lmk, dtype=torch.float32)
            b = torch.as_tensor(mean_blend, dtype=torch.float32).clamp(0.01, 0.99)
            self.out.bias[142:193] = torch.log(b / (1 - b))

    def forward(self, x):
        x = self.stem(x)
        pooled = []
        for i, b in enumerate(self.blocks):
            x = b(x)
            if i in self.config["pool_taps"]:
                pooled.append(x.mean(dim=(2, 3)))
        x = self.last(x)
        pooled.append(x.mean(dim=(2, 3)))
        f = torch.cat(pooled, dim=1)
        f = torch.relu(self.fc1(f))
        return self.out(f)


def split_output(y):
    """raw flat output -> dict of heads (no activations applied)."""
    return {name: y[:, s:s + n] for name, s, n in OUTPUT_LAYOUT}


def rot6d_to_matrix(d6):
    """d6 = [R00,R10,R20, R01,R11,R21] (first two columns) -> R (B,3,3) via Gram-Schmidt."""
    a1, a2 = d6[:, 0:3], d6[:, 3:6]
    b1 = torch.nn.functional.normalize(a1, dim=1, eps=1e-8)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(1, keepdim=True) * b1, dim=1, eps=1e-8)
    b3 = torch.cross(b1, b2, dim=1)
    return torch.stack([b1, b2, b3], dim=2)


def matrix_to_rot6d(R):
    return torch.cat([R[:, :, 0], R[:, :, 1]], dim=1)


def count_macs(model, size=INPUT_SIZE):
    """multiply-accumulates of one forward pass (conv + linear), via hooks."""
    macs = [0]

    def conv_hook(m, i, o):
        macs[0] += o.numel() // o.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def lin_hook(m, i, o):
        macs[0] += m.in_features * m.out_features

    hs = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hs.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hs.append(m.register_forward_hook(lin_hook))
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    model.train(was)
    for h in hs:
        h.remove()
    return macs[0]
