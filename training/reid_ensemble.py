#!/usr/bin/env python3
"""Join trained re-ID nets into one ensemble model file the app runs as a single layer program.

    nice -n 19 python3 training/reid_ensemble.py --member models/checkpoints/reid_last.pt:0.5 \\
        --member models/checkpoints/reid2_last.pt:0.5 --export models/reid.safetensors \\
        --fixture tests/fixtures/reid_parity.safetensors

Each member's layers keep their names behind a prefix (m0., m1., ...), all reading the same aligned 64x64 input.
The embedding is L2norm(concat_k sqrt(w_k) * e_k) where e_k is member k's flip-averaged, L2-normalised embedding
and the weights w_k sum to 1, so the cosine of two faces is the weighted mean of the members' cosines. The
metadata key `members` lists each member's output tensor and weight; verification (10-fold, the held-out pairs of
reid_train.py) and the match threshold are measured on the ensemble embedding.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reid_train as T  # noqa: E402
from common import atomic_save_safetensors  # noqa: E402
from det_model import count_macs, count_params, folded_run, folded_tensors  # noqa: E402
from reid_model import ReidNet  # noqa: E402


def load(path):
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = ReidNet(ck.get("config"))
    model.load_state_dict(ck["model"])
    return model.eval(), ck["epoch"]


def merge(models):
    """-> (program, folded tensors, member output names): every member's layers behind its prefix."""
    program, tensors, outputs = [], {}, []
    for k, model in enumerate(models):
        prefix = f"m{k}."

        def rename(name):
            return name if name == "input" else prefix + name

        for layer in model.program:
            layer = dict(layer, name=prefix + layer["name"])
            src = layer["input"]
            layer["input"] = [rename(i) for i in src] if isinstance(src, list) else rename(src)
            program.append(layer)
        tensors.update({prefix + k2: v for k2, v in folded_tensors(model).items()})
        outputs.append(prefix + model.program[-1]["name"])
    return program, tensors, outputs


def raw_outputs(tensors, program, outputs, x):
    t = folded_run(tensors, program, x)
    return [t[o] for o in outputs]


def ensemble_embed(tensors, program, outputs, weights, faces_u8, bs=256):
    out = []
    with torch.no_grad():
        for i in range(0, len(faces_u8), bs):
            x = T.to_input(faces_u8[i:i + bs])
            plain = raw_outputs(tensors, program, outputs, x)
            flipped = raw_outputs(tensors, program, outputs, torch.flip(x, dims=[3]))
            parts = [F.normalize((a + b).flatten(1), dim=1) * math.sqrt(w) for a, b, w in zip(plain, flipped, weights)]
            out.append(F.normalize(torch.cat(parts, 1), dim=1))
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--member", action="append", required=True, help="CHECKPOINT.pt:WEIGHT (repeat)")
    ap.add_argument("--cache", default="training/cache/reid")
    ap.add_argument("--export", default="models/reid.safetensors")
    ap.add_argument("--fixture", default="tests/fixtures/reid_parity.safetensors", help="'' to skip")
    args = ap.parse_args()
    torch.set_num_threads(1)

    paths, weights = zip(*[(m.rsplit(":", 1)[0], float(m.rsplit(":", 1)[1])) for m in args.member])
    weights = [w / sum(weights) for w in weights]
    loaded = [load(p) for p in paths]
    models = [m for m, _ in loaded]
    data = T.Data(args.cache)
    program, tensors, outputs = merge(models)
    E = ensemble_embed(tensors, program, outputs, weights, data.faces[data.held_idx])
    metrics = T.verify_embeddings(E, data)
    for (m, epoch), p in zip(loaded, paths):
        print(f"member {p} (epoch {epoch}): {T.verify(m, data)['acc']:.4f}")
    print(f"ensemble {weights}: {metrics['acc']:.4f} +- {metrics['std']:.4f}")

    md = T.build_metadata(models[0], metrics, data)
    dim = sum(m.config["embedding_dim"] for m in models)
    md.update({
        "layers": json.dumps(program),
        "members": json.dumps([{"output": o, "weight": w, "checkpoint": os.path.basename(p), "epoch": e}
                               for o, w, p, (_, e) in zip(outputs, weights, paths, loaded)]),
        "architecture": json.dumps([m.config for m in models]),
        "embedding_dim": str(dim),
        "output_shape": json.dumps([1, dim, 1, 1]),
        "embedding_postprocess": "ensemble: for each member k (metadata 'members': output tensor, weight w_k, "
                                 "weights sum to 1) e_k = L2norm(f_k(x) + f_k(hflip(x))); the embedding is "
                                 "L2norm(concat_k sqrt(w_k) e_k); compare by cosine, same person if cos > threshold",
        "params": str(sum(count_params(m) for m in models)),
        "macs": str(sum(count_macs(m.program) for m in models)),
        "training_data": "members trained by reid_train.py on wild.jsonl identities of the 85% training split: "
                         + "; ".join(f"{os.path.basename(p)}" for p in paths),
    })
    atomic_save_safetensors(tensors, args.export, md)
    if args.fixture:
        P = data.pairs
        sp = P[P[:, 2] == 1][:2]
        sel = [int(sp[0, 0]), int(sp[0, 1]), int(sp[1, 0]), int(P[P[:, 2] == 0][0, 0])]
        u8 = data.faces[data.held_idx[sel]]
        inp = torch.from_numpy(np.ascontiguousarray(u8))[:, None].contiguous()
        x = T.to_input(u8)
        with torch.no_grad():
            y = torch.cat(raw_outputs(tensors, program, outputs, x), 1)
            yf = torch.cat(raw_outputs(tensors, program, outputs, torch.flip(x, dims=[3])), 1)
        e = ensemble_embed(tensors, program, outputs, weights, u8)
        fix = {"input_u8": inp, "output": y.contiguous(), "output_flip": yf.contiguous(), "embedding": e.contiguous(),
               "cosine": (e @ e.T).contiguous()}
        fix.update(T.alignment_fixture(data))
        atomic_save_safetensors(fix, args.fixture, {
            "description": "Re-id parity fixture (ensemble): as reid_train.py's, with output / output_flip = the "
                           "members' raw outputs side by side along dim 1 and embedding = the ensemble embedding "
                           "(metadata 'embedding_postprocess' of the model).",
            "model_exported_at": md["exported_at"]})
    print(json.dumps({k: md[k] for k in ("verification_accuracy", "verification_std", "threshold", "match_threshold",
                                         "params", "macs", "exported_at")}))


if __name__ == "__main__":
    main()
