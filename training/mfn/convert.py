#!/usr/bin/env python3
"""Rewrite a format-2 MFN model file as format 3: the same tensors, the switches of format 2 gathered into one
`mfn_config` record (what the Rust loader reads), the decoding text of format 3. Refuses files with the layouts
format 3 dropped (mfn_train.format3_config says which).

    python training/mfn/convert.py models/mfn.safetensors [--out FILE]
"""
import argparse
import json
import os
import sys

from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # training/: the packages
from common import atomic_save_safetensors  # noqa: E402
from mfn import train as T  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--out", default="", help="default: rewrite MODEL in place")
    args = ap.parse_args()
    with safe_open(args.model, "pt") as f:
        md = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert md.get("format") == "polyface-mfn", f"{args.model}: not an MFN file"
    if md.get("format_version") == "3":
        print(f"{args.model}: already format 3")
        return
    out = T.format3_metadata(md, tensors)
    atomic_save_safetensors(tensors, args.out or args.model, out)
    print(f"{args.out or args.model}: format 3, mfn_config {out['mfn_config']}")


if __name__ == "__main__":
    main()
