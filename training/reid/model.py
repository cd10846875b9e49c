"""Face re-identification embedding network (MobileFaceNet-style, 64x64 grayscale aligned face -> 128-d).

The network is a *program* exactly like detector/model.py: an ordered list of layers, each reading named tensors and
writing one named tensor. Ops: conv3x3 (pad 1), dwconv3x3 (pad 1, groups = channels), conv1x1, add (two inputs,
optional ReLU after), and gap (global average pool over H and W -> [N,C,1,1], no weights). BatchNorm is folded at
export (every conv then has weight + bias); activations are relu or none.

Layout (input [N,1,64,64], x = (u8/255 - 0.5)/0.5 of the aligned face, see reid/prepare.py):
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
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages
# the layer-program machinery (builder, trainable net, BN folding, reference forward, counting) is the detector's
from detector.model import ProgramNet, _hw, conv_layer, count_macs, count_params  # noqa: E402

IN_SIZE = 64

DEFAULT_CONFIG = {
    "input_size": [IN_SIZE, IN_SIZE],
    "stem": 24,
    # [out_channels, n_blocks, expansion]; stage k runs at stride 2^(k+2)
    "stages": [[64, 2, 2], [128, 3, 2], [160, 2, 2]],
    "head": 256,
    "embedding_dim": 128,
}


def build_program(config):
    """-> list of layer dicts. Tensor 'input' is the normalised image; output tensor = last layer's name."""
    c = config
    W, H = c["input_size"]
    L = []

    def conv(*args, **kwargs):
        return conv_layer(L, *args, **kwargs)

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


class ReidNet(ProgramNet):
    def __init__(self, config=None):
        super().__init__(config or DEFAULT_CONFIG, build_program)
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


if __name__ == "__main__":
    m = ReidNet()
    print("MACs %.2f M, params %d" % (count_macs(m.program) / 1e6, count_params(m)))
    print(m(torch.zeros(2, 1, IN_SIZE, IN_SIZE)).shape)
    for l in m.program:
        print(l["name"], l["op"], l["in"], l["out"], l.get("stride", ""), l["out_hw"], l["act"])
