#!/usr/bin/env python3
"""Seeds the fuzz corpora from ../shared/vectors (the captured Java exchanges)."""
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
vectors = os.path.join(here, "..", "..", "shared", "vectors")
if not os.path.isdir(vectors):
    sys.exit(f"no vectors at {vectors}")
req = os.path.join(here, "corpus", "request_decoder")
resp = os.path.join(here, "corpus", "response_decoder")
os.makedirs(req, exist_ok=True)
os.makedirs(resp, exist_ok=True)
# Response selectors per request kind (see response_decoder.rs EXPECTS).
kinds = {"PUT content": 0, "PUT named": 1, "GET": 2, "DELETE": 3}
with open(os.path.join(vectors, "MANIFEST.tsv")) as f:
    next(f)
    for line in f:
        vid, _, _, requests, _ = line.rstrip("\n").split("\t")
        sel = []
        for r in requests.split("; "):
            for k, v in kinds.items():
                if r.startswith(k):
                    sel.append(v)
                    break
        c2s = open(os.path.join(vectors, vid + ".c2s"), "rb").read()
        s2c = open(os.path.join(vectors, vid + ".s2c"), "rb").read()
        open(os.path.join(req, vid), "wb").write(bytes([0]) + c2s)
        open(os.path.join(resp, vid), "wb").write(bytes([len(sel)]) + bytes(sel) + s2c)
print(f"seeded {req} and {resp}")
