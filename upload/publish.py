"""Publish one model folder to the Hub (or a local mirror) with its card, in one commit.

    python upload/publish.py out/prune_ofa_90/model --repo-id org/minilm-l6-90-sparse [--private] [--dry-run]
    python upload/publish.py out/prune_ofa_90/model --repo-id org/minilm-l6-90-sparse --local-mirror hub/mirrors

The card's inputs (results files, recipe) come from the zoo entry whose `model` is this folder
(`--zoo upload/zoo.yaml`, or name it with `--entry`). Token: `HF_TOKEN` or `huggingface-cli login`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def find_entry(entries, model: Path, name: str | None):
    if name:
        for entry in entries:
            if entry.name == name:
                return entry
        raise SystemExit(f"no zoo entry named {name!r}; known: {', '.join(e.name for e in entries)}")
    target = model.resolve()
    for entry in entries:
        if entry.model and (ROOT / entry.model).resolve() == target:
            return entry
    raise SystemExit(f"no zoo entry has model {model}; add one to the zoo file (cards need its results files) or pass --entry")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="checkpoint folder")
    parser.add_argument("--repo-id", required=True, help="org/name")
    parser.add_argument("--zoo", default=str(ROOT / "upload" / "zoo.yaml"))
    parser.add_argument("--entry", help="zoo entry name (default: the entry whose model is this folder)")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="list every operation, change nothing")
    parser.add_argument("--revision", help="branch to commit to (default main)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to the branch")
    parser.add_argument("--local-mirror", help="commit into this local mirror folder (served by olah) instead of the Hub")
    parser.add_argument("--message", default="Publish with hf-sparse")
    args = parser.parse_args(argv)

    from hf_sparse.hub.cards import CardError, load_zoo
    from hf_sparse.hub.publish import PublishError, build_and_publish

    _, entries = load_zoo(args.zoo)
    entry = find_entry(entries, Path(args.model), args.entry)
    entry.model = str(Path(args.model).resolve())
    kwargs = dict(dry_run=args.dry_run, commit_message=args.message)
    if args.local_mirror:
        kwargs["local_mirror"] = args.local_mirror
    else:
        kwargs.update(private=args.private, revision=args.revision, create_pr=args.create_pr)
    try:
        result = build_and_publish(entry, args.repo_id, ROOT, **kwargs)
    except (CardError, PublishError, OSError) as err:  # OSError: the Hub unreachable (requests' errors are OSErrors)
        print(f"publish: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    print(f"{'dry run: ' if args.dry_run else ''}{args.repo_id}: {len(result.operations)} operations")
    for op in result.operations:
        print(f"  {op}")
    if not args.dry_run:
        print("committed: " + (result.commit_url or "?") if result.committed else "unchanged: no new commit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
