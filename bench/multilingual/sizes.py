"""Sizes (MB = 10^6 bytes) of the multilingual encoder in the bundles bench/multilingual/run.sh wrote, next to the
English graphs'. Usage: python bench/multilingual/sizes.py WORK VOCAB > bench/multilingual/sizes.json"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def sizes(bundle: Path) -> dict:
    m = json.loads((bundle / "manifest.json").read_text())
    ml = m["multilingual"]
    tok = bundle / ml["tokenizer"]["file"]
    return {"multilingual_graph_mb": {v: info["size_mb"] for v, info in ml["graph"]["variants"].items()},
            "multilingual_tokenizer_mb": round(tok.stat().st_size / 1e6, 3),
            "vocab_size": ml["vocab_size"], "pruned": ml["pruned"],
            "english_graphs_mb": {v: s["total"] for v, s in m["sizes"].items() if v.startswith("onnx/")}}


def main() -> None:
    work, vocab = Path(sys.argv[1]), sys.argv[2]
    out = {"full": sizes(work / "bundle_full"), f"vocab{vocab}": sizes(work / f"bundle_{vocab}"),
           "command": "bash bench/multilingual/run.sh"}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
