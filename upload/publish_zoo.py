"""Publish every model of the zoo (idempotent: unchanged models make no commit).

    python upload/publish_zoo.py upload/zoo.yaml [--dry-run] [--only NAME ...] [--local-mirror hub/mirrors]

Converted entries are built first (`hf-sparse convert <source> <model>`; the source must be a local
folder or reachable on the Hub). An entry whose checkpoint or results are missing is reported with
the command that builds it, the others are still published; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_converted(entry) -> None:
    """`hf-sparse convert <source> <model>` unless already done (the conversion writes atomically)."""
    from hf_sparse.convert import dense_to_sparse

    out = ROOT / entry.model
    if (out / "config.json").is_file():
        return
    local = ROOT / entry.source
    dense_to_sparse(local if local.is_dir() else entry.source, out, head=entry.head)


def pending_exports(entry) -> list[str]:
    """Exports listed in the entry that are missing from the model folder or stale.

    An existing export folder is current when its `export_info.json` records the checkpoint's
    digest; one without a digest, or with another, was made from another checkpoint (or before
    digests were recorded) and is rebuilt.
    """
    from hf_sparse.deploy.onnx import EXPORT_INFO, source_digest

    model_dir = ROOT / entry.model
    digest = source_digest(model_dir)
    pending = []
    for name in entry.exports:
        info_file = model_dir / name / EXPORT_INFO
        recorded = json.loads(info_file.read_text()).get("source_sha256") if info_file.is_file() else None
        if recorded != digest:
            pending.append(name)
    return pending


def build_exports(entry) -> list[str]:
    """Builds the entry's missing or stale exports (`onnx`, `openvino`, INT8 included); returns those built.

    Current exports are kept, so re-publishing an unchanged checkpoint stays unchanged.
    """
    from hf_sparse.deploy.onnx import export_onnx
    from hf_sparse.deploy.openvino import export_openvino

    model_dir = ROOT / entry.model
    calibration = entry.task if entry.task else "wikitext"
    built = []
    for name in pending_exports(entry):
        if (model_dir / name).is_dir():
            print(f"{entry.name}: {model_dir / name} was not exported from this checkpoint; rebuilding it")
            shutil.rmtree(model_dir / name)
        if name == "onnx":
            export_onnx(model_dir, model_dir / name, quantize="int8")
        else:
            export_openvino(model_dir, model_dir / name, quantize="int8", calibration=calibration, num_calibration_samples=300)
        built.append(name)
    return built


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("zoo", nargs="?", default=str(ROOT / "upload" / "zoo.yaml"))
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--only", nargs="+", help="publish only these entries")
    parser.add_argument("--local-mirror", help="commit into this local mirror folder (served by olah) instead of the Hub")
    args = parser.parse_args(argv)

    from hf_sparse.hub.cards import CardError, load_zoo
    from hf_sparse.deploy.onnx import ExportError
    from hf_sparse.hub.publish import PublishError, build_and_publish

    org, entries = load_zoo(args.zoo)
    if args.only:
        unknown = set(args.only) - {e.name for e in entries}
        if unknown:
            raise SystemExit(f"unknown entries {sorted(unknown)}")
        entries = [e for e in entries if e.name in args.only]
    failed = []
    for entry in entries:
        repo_id = f"{org}/{entry.name}"
        try:
            if entry.kind == "converted" and not (ROOT / entry.model / "config.json").is_file():
                if args.dry_run:
                    print(f"[dry run] {repo_id}: would convert {entry.source} into {entry.model}, then publish it")
                    continue
                build_converted(entry)
            if not (ROOT / entry.model / "config.json").is_file():
                raise PublishError(f"checkpoint {entry.model} is missing; build it first (see the results commands in {args.zoo})")
            if args.dry_run:
                pending = pending_exports(entry)
                if pending:
                    print(f"[dry run] {repo_id}: would export {', '.join(pending)} (INT8 included) into {entry.model}")
            else:
                built = build_exports(entry)
                if built:
                    print(f"{repo_id}: exported {', '.join(built)}")
            kwargs = dict(dry_run=args.dry_run)
            if args.local_mirror:
                kwargs["local_mirror"] = args.local_mirror
            result = build_and_publish(entry, repo_id, ROOT, **kwargs)
        except (CardError, PublishError, ExportError, OSError, ValueError) as err:
            failed.append(entry.name)
            print(f"[FAILED] {repo_id}: {err}")
            continue
        state = "dry run" if args.dry_run else ("committed" if result.committed else "unchanged")
        print(f"[{state}] {repo_id}" + (": no new commit" if state == "unchanged" else f": {len(result.operations)} operations"))
        for op in result.operations if args.dry_run else []:
            print(f"    {op}")
    if failed:
        print(f"{len(failed)} of {len(entries)} entries not published: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
