"""Face re-identification embedding network (MobileFaceNet-style, 64x64 grayscale aligned face -> 128-d).

The network is a *program* exactly like det_model.py: an ordered list of layers, each reading named tensors and
writing one named tensor. Ops: conv3x3 (pad 1), dwconv3x3 (pad 1, groups = channels), conv1x1, add (two inputs,
optional ReLU after), and gap (global average pool over H and W -> [N,C,1,1], no weights). BatchNorm is folded at
export (every conv then has weight + bias); activations are relu or none.

Layout (input [N,1,64,64], x = (u8/255 - 0.5)/0.5 of the aligned face, see reid_prepare.py):
  stem      conv3x3 s2 1->24 + relu                                         32x32
  stem.dw   dwconv3x3 24 + relu, stem.pw conv1x1 24->24 + relu              32x32
  stage k   down: dwconv3x3 s2 + relu, conv1x1 -> C_k + relu                16x16 / 8x8 / 4x4
            n_k inverted-residual blocks: conv1x1 C->E*C + relu, dwconv3x3 + relu, conv1x1 E*C->C (none),
            add input + (no act)   (linear bottleneck, MobileFaceNet); C = 64, 128, 160; n = 2, 3, 2; E = 2
  head.pw   conv1x1 C_3 -> 256 + relu                                       4x4
  gdc1      dwconv3x3 s2 (no act)                                           2x2
  gdc2      dwconv3x3 s2 (no act)                                           1x1   (gdc1+gdc2 = a factorised
            "global depthwise conv": position-specific weights over the whole 4x4 map, as in MobileFaceNet)
  gap       global average pool                                            [N,256,1,1]
  emb       conv1x1 256 -> 128, bias, no BN, no act                         [N,128,1,1]  (the embedding)
The consumer L2-normalises the embedding (cosine similarity).
"""
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

IN_SIZE = 64

DEFAULT_CONFIG = {
    "input_size": [IN_SIZE, IN_SIZE],
    "stem": 24,
    # [out_channels, n_blocks, expansion]; stage k runs at stride 2^(k+2)
    "stages": [[64, 2, 2], [128, 3, 2], [160, 2, 2]],
    "head": 256,
    "embedding_dim": 128,
}


def _hw(h, w, s):
    return (h + 2 - 3) // s + 1, (w + 2 - 3) // s + 1


def build_program(config):
    """-> list of layer dicts. Tensor 'input' is the normalised image; output tensor = last layer's name."""
    c = config
    W, H = c["input_size"]
    L = []

    def conv(name, op, src, cin, cout, stride=1, act="relu", hw=None, bn=True):
        k = 1 if op == "conv1x1" else 3
        L.append({"name": name, "op": op, "input": src, "in": cin, "out": cout, "kernel": k, "stride": stride,
                  "pad": 0 if k == 1 else 1, "groups": cin if op == "dwconv3x3" else 1, "act": act,
                  "out_hw": list(hw), "bn": bn})
        return name

    h, w = _hw(H, W, 2)
    x = conv("stem", "conv3x3", "input", 1, c["stem"], 2, hw=(h, w))
    x = conv("stem.dw", "dwconv3x3", x, c["stem"], c["stem"], hw=(h, w))
    x = conv("stem.pw", "conv1x1", x, c["stem"], c["stem"], hw=(h, w))
    cin = c["stem"]
    for si, (cout, nblk, exp) in enumerate(c["stages"]):
        h, w = _hw(h, w, 2)
        x = conv(f"s{si}.down.dw", "dwconv3x3", x, cin, cin, 2, hw=(h, w))
        x = conv(f"s{si}.down.pw", "conv1x1", x, cin, cout, hw=(h, w))
        for r in range(nblk):
            e = cout * exp
            y = conv(f"s{si}.b{r}.exp", "conv1x1", x, cout, e, hw=(h, w))
            y = conv(f"s{si}.b{r}.dw", "dwconv3x3", y, e, e, hw=(h, w))
            y = conv(f"s{si}.b{r}.proj", "conv1x1", y, e, cout, act="none", hw=(h, w))
            L.append({"name": f"s{si}.b{r}.add", "op": "add", "input": [x, y], "in": cout, "out": cout,
                      "act": "none", "out_hw": [h, w]})
            x = f"s{si}.b{r}.add"
        cin = cout
    x = conv("head.pw", "conv1x1", x, cin, c["head"], hw=(h, w))
    h, w = _hw(h, w, 2)
    x = conv("gdc1", "dwconv3x3", x, c["head"], c["head"], 2, act="none", hw=(h, w))
    h, w = _hw(h, w, 2)
    x = conv("gdc2", "dwconv3x3", x, c["head"], c["head"], 2, act="none", hw=(h, w))
    L.append({"name": "gap", "op": "gap", "input": x, "in": c["head"], "out": c["head"], "act": "none",
              "out_hw": [1, 1]})
    conv("emb", "conv1x1", "gap", c["head"], c["embedding_dim"], act="none", hw=(1, 1), bn=False)
    return L


def conv_names(program):
    return [l["name"] for l in program if l["op"] in ("conv3x3", "dwconv3x3", "conv1x1")]


def _apply(l, t, conv_fn):
    op = l["op"]
    if op == "add":
        y = t[l["input"][0]] + t[l["input"][1]]
    elif op == "gap":
        y = t[l["input"]].mean(dim=(2, 3), keepdim=True)
    else:
        y = conv_fn(l, t[l["input"]])
    if l["act"] == "relu":
        y = F.relu(y)
    return y


class ReidNet(nn.Module):
    def __init__(self, config=None):
        super().__init__()
        self.config = json.loads(json.dumps(config or DEFAULT_CONFIG))
        self.program = build_program(self.config)
        self.convs = nn.ModuleDict()
        self.bns = nn.ModuleDict()
        for l in self.program:
            if l["op"] in ("conv3x3", "dwconv3x3", "conv1x1"):
                key = l["name"].replace(".", "_")
                self.convs[key] = nn.Conv2d(l["in"], l["out"], l["kernel"], l["stride"], l["pad"],
                                            groups=l["groups"], bias=not l["bn"])
                if l["bn"]:
                    self.bns[key] = nn.BatchNorm2d(l["out"])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # depthwise: fan_in (9) so that activations keep their scale (fan_out would make them ~0)
                mode = "fan_in" if m.groups > 1 else "fan_out"
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # residual branches start near identity (zero-init last BN gamma)
        for l in self.program:
            if l["name"].endswith(".proj"):
                nn.init.zeros_(self.bns[l["name"].replace(".", "_")].weight)

    def forward(self, x):
        t = {"input": x}

        def conv_fn(l, inp):
            key = l["name"].replace(".", "_")
            y = self.convs[key](inp)
            return self.bns[key](y) if l["bn"] else y

        for l in self.program:
            t[l["name"]] = _apply(l, t, conv_fn)
        return t[self.program[-1]["name"]]


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


def folded_forward(tensors, program, x):
    """Reference forward pass on folded tensors (exactly what the Rust port implements). -> [N,D,1,1] raw."""
    t = {"input": x}

    def conv_fn(l, inp):
        return F.conv2d(inp, tensors[l["name"] + ".weight"], tensors[l["name"] + ".bias"], l["stride"], l["pad"],
                        groups=l["groups"])

    for l in program:
        t[l["name"]] = _apply(l, t, conv_fn)
    return t[program[-1]["name"]]


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
    m = ReidNet()
    print("MACs %.2f M, params %d" % (count_macs(m.program) / 1e6, count_params(m)))
    print(m(torch.zeros(2, 1, IN_SIZE, IN_SIZE)).shape)
    for l in m.program:
        print(l["name"], l["op"], l["in"], l["out"], l.get("stride", ""), l["out_hw"], l["act"])
