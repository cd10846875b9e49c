"""Face detector: tiny anchor-free CenterNet-style network (one output stride, 4).

The network is described by a *program*: an ordered list of layers, each reading named tensors and writing one
named tensor. Only these ops: conv3x3 (pad 1), dwconv3x3 (pad 1, groups = channels), conv1x1, BatchNorm (folded
at export, every conv then has weight + bias), ReLU, add (elementwise, optional ReLU after), upsample2x (nearest),
gap (global average pool; the re-ID net's).
The same program drives the PyTorch training model, the folded reference forward pass (what Rust implements)
and the layer table in training/detector/DETECTOR.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages

import json

import torch
import torch.nn as nn
import torch.nn.functional as F

IN_W, IN_H = 320, 240
STRIDE = 4
OUT_CH = 15
HM_PRIOR_BIAS = -2.19  # sigmoid(-2.19) ~ 0.1, CenterNet init

DEFAULT_CONFIG = {
    "input_size": [IN_W, IN_H],   # W, H
    "stem": 16,                   # conv3x3 stride 2
    # backbone stages: [out_channels, n_residual_blocks]; each stage starts with a stride-2 depthwise-separable
    # block (dw3x3 s2 + relu, pw1x1 + relu); residual block = dw3x3 + relu, pw1x1, add input, relu
    "stages": [[24, 1], [48, 2], [96, 4]],   # strides 4, 8, 16
    "fpn": [32, 48],              # top-down channels at stride 4 and stride 8 (stride 16 lateral uses fpn[1])
    "out_channels": OUT_CH,
    "stride": STRIDE,
}


def _hw(h, w, s):
    return (h + 2 - 3) // s + 1, (w + 2 - 3) // s + 1


def conv_layer(L, name, op, src, cin, cout, stride=1, act="relu", hw=None, bn=True):
    """appends one conv layer dict to program L; returns its name (= its output tensor)."""
    k = 1 if op == "conv1x1" else 3
    L.append({"name": name, "op": op, "input": src, "in": cin, "out": cout, "kernel": k, "stride": stride,
              "pad": 0 if k == 1 else 1, "groups": cin if op == "dwconv3x3" else 1, "act": act,
              "out_hw": list(hw), "bn": bn})
    return name


def build_program(config):
    """-> list of layer dicts. Tensor 'input' is the normalised image; output tensor = last layer's name."""
    c = config
    W, H = c["input_size"]
    L = []

    def conv(*args, **kwargs):
        return conv_layer(L, *args, **kwargs)

    h, w = _hw(H, W, 2)
    x = conv("stem", "conv3x3", "input", 3, c["stem"], 2, hw=(h, w))
    cin = c["stem"]
    taps = []  # (name, channels, hw) of each stage output
    for si, (cout, nres) in enumerate(c["stages"]):
        h, w = _hw(h, w, 2)
        x = conv(f"s{si}.down.dw", "dwconv3x3", x, cin, cin, 2, hw=(h, w))
        x = conv(f"s{si}.down.pw", "conv1x1", x, cin, cout, hw=(h, w))
        for r in range(nres):
            y = conv(f"s{si}.res{r}.dw", "dwconv3x3", x, cout, cout, hw=(h, w))
            y = conv(f"s{si}.res{r}.pw", "conv1x1", y, cout, cout, act="none", hw=(h, w))
            L.append({"name": f"s{si}.res{r}.add", "op": "add", "input": [x, y], "in": cout, "out": cout,
                      "act": "relu", "out_hw": [h, w]})
            x = f"s{si}.res{r}.add"
        taps.append((x, cout, (h, w)))
        cin = cout
    f4, f8 = c["fpn"]
    (t4, c4, hw4), (t8, c8, hw8), (t16, c16, hw16) = taps
    # top-down path
    p16 = conv("fpn.lat16", "conv1x1", t16, c16, f8, act="relu", hw=hw16)
    L.append({"name": "fpn.up16", "op": "upsample2x", "input": p16, "in": f8, "out": f8, "act": "none",
              "out_hw": list(hw8)})
    l8 = conv("fpn.lat8", "conv1x1", t8, c8, f8, act="relu", hw=hw8)
    L.append({"name": "fpn.add8", "op": "add", "input": [l8, "fpn.up16"], "in": f8, "out": f8, "act": "none",
              "out_hw": list(hw8)})
    y = conv("fpn.smooth8.dw", "dwconv3x3", "fpn.add8", f8, f8, hw=hw8)
    y = conv("fpn.smooth8.pw", "conv1x1", y, f8, f8, hw=hw8)
    y = conv("fpn.reduce8", "conv1x1", y, f8, f4, act="relu", hw=hw8)
    L.append({"name": "fpn.up8", "op": "upsample2x", "input": y, "in": f4, "out": f4, "act": "none",
              "out_hw": list(hw4)})
    l4 = conv("fpn.lat4", "conv1x1", t4, c4, f4, act="relu", hw=hw4)
    L.append({"name": "fpn.add4", "op": "add", "input": [l4, "fpn.up8"], "in": f4, "out": f4, "act": "none",
              "out_hw": list(hw4)})
    y = conv("fpn.smooth4.dw", "dwconv3x3", "fpn.add4", f4, f4, hw=hw4)
    y = conv("fpn.smooth4.pw", "conv1x1", y, f4, f4, hw=hw4)
    y = conv("head.dw", "dwconv3x3", y, f4, f4, hw=hw4)
    conv("head.out", "conv1x1", y, f4, c["out_channels"], act="none", hw=hw4, bn=False)
    return L


def conv_names(program):
    return [l["name"] for l in program if l["op"] in ("conv3x3", "dwconv3x3", "conv1x1")]


def apply_op(l, t, conv):
    """output of non-conv layer l (add, upsample2x, gap) from tensors t, or conv(l, input) for a conv; then act."""
    op = l["op"]
    if op == "add":
        y = t[l["input"][0]] + t[l["input"][1]]
    elif op == "upsample2x":
        y = F.interpolate(t[l["input"]], scale_factor=2, mode="nearest")
    elif op == "gap":
        y = t[l["input"]].mean(dim=(2, 3), keepdim=True)
    else:
        y = conv(l, t[l["input"]])
    return F.relu(y) if l["act"] == "relu" else y


class ProgramNet(nn.Module):
    """a trainable network built from a layer program (self.program): the detector, the MFN and the re-ID net."""

    def __init__(self, config, build_program):
        super().__init__()
        self.config = json.loads(json.dumps(config))
        self.program = build_program(self.config)
        self.build_layers()

    def build_layers(self):
        """one Conv2d (+ BatchNorm) per conv layer of self.program."""
        self.convs = nn.ModuleDict()
        self.bns = nn.ModuleDict()
        for l in self.program:
            if l["op"] in ("conv3x3", "dwconv3x3", "conv1x1"):
                key = l["name"].replace(".", "_")
                self.convs[key] = nn.Conv2d(l["in"], l["out"], l["kernel"], l["stride"], l["pad"],
                                            groups=l["groups"], bias=not l["bn"])
                if l["bn"]:
                    self.bns[key] = nn.BatchNorm2d(l["out"])

    def run(self, x):
        """every tensor of the program, by layer name."""
        def conv(l, inp):
            key = l["name"].replace(".", "_")
            y = self.convs[key](inp)
            return self.bns[key](y) if l["bn"] else y

        t = {"input": x}
        for l in self.program:
            t[l["name"]] = apply_op(l, t, conv)
        return t

    def forward(self, x):
        return self.run(x)[self.program[-1]["name"]]


class Detector(ProgramNet):
    def __init__(self, config=None, build=build_program):
        """build: the program builder (the MFN passes its own: the detector plus a face head)."""
        super().__init__(config or DEFAULT_CONFIG, build)
        with torch.no_grad():
            out = self.convs["head_out"]
            nn.init.normal_(out.weight, std=0.01)
            out.bias.zero_()
            out.bias[0] = HM_PRIOR_BIAS
            out.bias[3:5] = 2.0  # log(32 px / 4): a mid-size face


def fold_conv_bn(conv, bn):
    w = conv.weight.detach().double()
    if bn is None:
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        return w.float().contiguous(), b.float().contiguous()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    wf = w * scale.view(-1, 1, 1, 1)
    bf = bn.bias.detach().double() - bn.running_mean.detach().double() * scale
    if conv.bias is not None:
        bf = bf + conv.bias.detach().double() * scale
    return wf.float().contiguous(), bf.float().contiguous()


def folded_tensors(model):
    """-> dict '<layer name>.weight' / '.bias' (BN folded), in program order."""
    t = {}
    for l in model.program:
        if l["op"] in ("conv3x3", "dwconv3x3", "conv1x1"):
            key = l["name"].replace(".", "_")
            w, b = fold_conv_bn(model.convs[key], model.bns[key] if l["bn"] else None)
            t[l["name"] + ".weight"], t[l["name"] + ".bias"] = w, b
    return t


def folded_run(tensors, program, x):
    """Reference forward pass on folded tensors (exactly what the Rust port implements): every tensor, by name."""
    def conv(l, inp):
        return F.conv2d(inp, tensors[l["name"] + ".weight"], tensors[l["name"] + ".bias"], l["stride"], l["pad"],
                        groups=l["groups"])

    t = {"input": x}
    for l in program:
        t[l["name"]] = apply_op(l, t, conv)
    return t


def folded_forward(tensors, program, x):
    """the program's output (its last layer) on folded tensors."""
    return folded_run(tensors, program, x)[program[-1]["name"]]


def count_macs(program):
    m = 0
    for l in program:
        if l["op"] in ("conv3x3", "dwconv3x3", "conv1x1"):
            h, w = l["out_hw"]
            m += h * w * l["out"] * (l["in"] // l["groups"]) * l["kernel"] * l["kernel"]
    return m


def count_params(model):
    """parameters of the exported (folded) network."""
    return sum(v.numel() for v in folded_tensors(model).values())


if __name__ == "__main__":
    m = Detector()
    print("MACs %.2f M, params %d" % (count_macs(m.program) / 1e6, count_params(m)))
    y = m(torch.zeros(2, 3, IN_H, IN_W))
    print(y.shape)
    for l in m.program:
        print(l["name"], l["op"], l["in"], l["out"], l.get("stride", ""), l["out_hw"])


# ---------------------------------------------------------------- decoding (documented in detector/DETECTOR.md)

DEFAULT_SCORE_THRESHOLD = 0.35
DEFAULT_NMS_IOU = 0.4
MAX_DETECTIONS = 100


def nms(boxes, scores, iou_thr):
    """greedy NMS; boxes (K,4) sorted by descending score -> kept indices."""
    keep = []
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        keep.append(i)
        xx0 = torch.maximum(boxes[i, 0], boxes[:, 0])
        yy0 = torch.maximum(boxes[i, 1], boxes[:, 1])
        xx1 = torch.minimum(boxes[i, 2], boxes[:, 2])
        yy1 = torch.minimum(boxes[i, 3], boxes[:, 3])
        inter = (xx1 - xx0).clamp(min=0) * (yy1 - yy0).clamp(min=0)
        iou = inter / (areas[i] + areas - inter).clamp(min=1e-9)
        suppressed |= iou > iou_thr
    return torch.tensor(keep, dtype=torch.long)


def decode(out, threshold=DEFAULT_SCORE_THRESHOLD, nms_iou=DEFAULT_NMS_IOU, max_det=MAX_DETECTIONS,
           stride=STRIDE):
    """raw output [N,15,h,w] -> list (per image) of dict boxes (K,4) x0,y0,x1,y1, scores (K,), kps (K,5,2),
    all in network-input pixels (continuous convention)."""
    res = []
    prob = torch.sigmoid(out[:, 0:1])
    mx = F.max_pool2d(prob, 3, 1, 1)  # zero padding is fine: probabilities are >= 0
    for n in range(out.shape[0]):
        p = prob[n, 0]
        peak = (p >= threshold) & (p == mx[n, 0])
        js, is_ = torch.nonzero(peak, as_tuple=True)
        sc = p[js, is_]
        order = torch.argsort(sc, descending=True)[:max_det]
        js, is_, sc = js[order], is_[order], sc[order]
        o = out[n][:, js, is_]  # 15,K
        cx = (is_.float() + 0.5 + o[1]) * stride
        cy = (js.float() + 0.5 + o[2]) * stride
        w = stride * torch.exp(o[3])
        h = stride * torch.exp(o[4])
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        kx = cx[:, None] + o[5:15:2].T * w[:, None]
        ky = cy[:, None] + o[6:15:2].T * h[:, None]
        kps = torch.stack([kx, ky], 2)
        if len(boxes):
            keep = nms(boxes, sc, nms_iou)
            boxes, sc, kps = boxes[keep], sc[keep], kps[keep]
        res.append({"boxes": boxes, "scores": sc, "kps": kps})
    return res
