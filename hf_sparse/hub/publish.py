"""Assemble a model repository folder and publish it to the Hub in one commit.

`assemble_repo` copies what a user needs (compressed weights, config, tokenizer, the
`trust_remote_code` modeling files, the recipe, exports) into a clean folder and writes the model
card and the per-layer sparsity plot. `publish_folder` compares that folder with the repository on
the Hub and pushes the difference as ONE commit (`create_repo(exist_ok=True)` + `create_commit`);
an unchanged folder makes no commit. `dry_run=True` only lists the operations. The token comes
from the `token` argument, `HF_TOKEN` or the `huggingface_hub` login, and is never printed.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..upstream import render_recipe
from .cards import ZooEntry, render_card, sparsity_plot

# files of a checkpoint folder that belong in a published repo (training artefacts such as
# optimizer states or pickled training_args.bin never do)
_PUBLISHED_SUFFIXES = (".json", ".safetensors", ".txt", ".py", ".yaml", ".model")
_NEVER = {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "results.json"}
EXPORT_FOLDERS = ("onnx", "openvino")


class PublishError(RuntimeError):
    """The folder cannot be published as asked (missing files, bad repo id, unreachable repository)."""


@dataclass
class Operation:
    """One planned change: `create_repo`, `create_branch`, `add` or `delete` (path in the repo), or `commit`."""

    action: str
    path: str = ""
    detail: str = ""

    def __str__(self) -> str:
        return " ".join(part for part in (self.action, self.path, self.detail and f"({self.detail})") if part)


@dataclass
class PublishResult:
    repo_id: str
    operations: list[Operation] = field(default_factory=list)
    committed: bool = False
    commit_url: Optional[str] = None
    dry_run: bool = False


def _check_repo_id(repo_id: str) -> None:
    from .local_hub import _split_repo_id  # the Hub's naming rules, shared with the local mirror

    try:
        _split_repo_id(repo_id)
    except ValueError as err:
        raise PublishError(str(err)) from None


def _sentence_transformers_folders(model_dir: Path) -> tuple[str, ...]:
    """The module folders (e.g. `1_Pooling`) a sentence-transformers model lists in its `modules.json`."""
    from ..transfer.bi_encoder import sentence_transformers_modules

    try:
        modules = sentence_transformers_modules(model_dir)
    except ValueError as err:
        raise PublishError(str(err)) from None
    return tuple(module["path"] for module in modules if module.get("path"))


def assemble_repo(entry: ZooEntry, model_dir: str | Path, out_dir: str | Path, repo_id: str, root: str | Path) -> Path:
    """Writes the repository folder of `entry` (checkpoint at `model_dir`) to `out_dir`.

    The card is rendered and a sentence-transformers `modules.json` checked first, so a card that cannot
    be written honestly (`CardError`) or a bad module list stops the run before anything is copied. Returns `out_dir`.
    """
    from ..convert import inspect_checkpoint

    model_dir, out_dir, root = Path(model_dir), Path(out_dir), Path(root)
    if not (model_dir / "config.json").is_file():
        raise PublishError(f"{model_dir}: no config.json (is it a checkpoint folder?)")
    report = inspect_checkpoint(model_dir)
    failed = [c for c in report["checks"] if not c["ok"]]
    if failed:
        raise PublishError(f"{model_dir}: `hf-sparse inspect` checks failed: {failed}")
    exports = tuple(name for name in EXPORT_FOLDERS if (model_dir / name).is_dir())
    card = render_card(entry, repo_id, root, report, exports)
    module_folders = _sentence_transformers_folders(model_dir)  # checked before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted(model_dir.iterdir()):
        if item.is_file() and item.suffix in _PUBLISHED_SUFFIXES and item.name not in _NEVER and item.name != "README.md":
            shutil.copy2(item, out_dir / item.name)
    for name in exports + module_folders:
        shutil.copytree(model_dir / name, out_dir / name, dirs_exist_ok=True)
    if entry.recipe and not (out_dir / "recipe.yaml").exists():
        (out_dir / "recipe.yaml").write_text(render_recipe(root / entry.recipe))  # its `base` resolved: self-contained
    (out_dir / "README.md").write_text(card)
    sparsity_plot(report, out_dir / "sparsity.png")
    return out_dir


# ---- comparing with the remote --------------------------------------------------------------------
def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _same(local: Path, remote) -> bool:
    if remote.size != local.stat().st_size:
        return False
    if getattr(remote, "lfs", None) is not None:
        return remote.lfs.sha256 == _sha256(local)
    return remote.blob_id == _git_blob_sha1(local)


def _remote_files(api, repo_id: str, revision: str) -> Optional[dict]:
    """`{path: RepoFile}` of the revision; None when the repository or the revision does not exist."""
    from huggingface_hub.utils import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        entries = api.list_repo_tree(repo_id, revision=revision, recursive=True)
        return {e.path: e for e in entries if hasattr(e, "blob_id")}
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        return None
    except Exception as err:  # network / HTTP errors differ between huggingface_hub 0.x (requests) and 1.x+ (httpx)
        raise PublishError(f"cannot read {repo_id}@{revision} from the Hub: {type(err).__name__}: {err}") from None


def publish_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: Optional[str] = None,
    create_pr: bool = False,
    commit_message: str = "Publish with hf-sparse",
    dry_run: bool = False,
    token: Optional[str] = None,
    api=None,
) -> PublishResult:
    """Makes `repo_id` (at `revision`, default `main`) hold exactly the files of `folder`, in one commit.

    Args:
        folder: the assembled repository folder.
        repo_id: `org/name` on the Hub (or the server `HF_ENDPOINT` points to).
        private: create the repository private (only when it does not exist yet).
        revision: branch to commit to; created from `main` if missing.
        create_pr: open a pull request instead of committing to the branch.
        dry_run: list the operations, change nothing (the repository is still read when reachable).
        token: defaults to `HF_TOKEN` / the saved login; never printed.
        api: an `HfApi` (tests pass one whose HTTP calls are recorded).

    Returns a `PublishResult`; `committed` is False when nothing changed.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    _check_repo_id(repo_id)
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "README.md").is_file():
        raise PublishError(f"{folder}: an assembled repo folder needs config.json and README.md (use assemble_repo)")
    api = api or HfApi(token=token)
    branch = revision or "main"
    result = PublishResult(repo_id=repo_id, dry_run=dry_run)
    ops = result.operations

    remote = _remote_files(api, repo_id, branch)
    repo_exists, new_branch = True, False
    if remote is None:  # no such repository, or no such branch yet
        main_files = _remote_files(api, repo_id, "main") if branch != "main" else None
        repo_exists = main_files is not None
        new_branch = branch != "main"
        if not repo_exists:
            ops.append(Operation("create_repo", repo_id, f"private={private}, exist_ok=True"))
        if new_branch:
            ops.append(Operation("create_branch", branch, "from main"))
        remote = main_files or {}  # a new branch starts from main's files
    local = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    commit_ops = []
    for path, file in local.items():
        if path in remote and _same(file, remote[path]):
            continue
        ops.append(Operation("add", path, f"{file.stat().st_size:,} bytes, sha256 {_sha256(file)[:12]}"))
        commit_ops.append(CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(file)))
    for path in sorted(set(remote) - set(local)):
        if path != ".gitattributes":
            ops.append(Operation("delete", path))
            commit_ops.append(CommitOperationDelete(path_in_repo=path))
    if not commit_ops:
        return result  # unchanged: no commit
    ops.append(Operation("commit", branch, f"{'pull request' if create_pr else 'direct'}: {commit_message!r}, {len(commit_ops)} operations"))
    if dry_run:
        return result

    try:
        if not repo_exists:
            api.create_repo(repo_id, private=private, exist_ok=True)
        if new_branch:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        info = api.create_commit(repo_id, operations=commit_ops, commit_message=commit_message, revision=branch, create_pr=create_pr)
    except Exception as err:  # the commit is atomic on the Hub: nothing half-published
        raise PublishError(f"publishing {repo_id}@{branch} failed, nothing was committed: {type(err).__name__}: {err}") from None
    result.committed = True
    result.commit_url = getattr(info, "pr_url", None) or getattr(info, "commit_url", None)
    return result


def build_and_publish(entry: ZooEntry, repo_id: str, root: str | Path, **publish_kwargs) -> PublishResult:
    """`assemble_repo` into a temporary folder, then `publish_folder` (or `local_mirror=<dir>` to commit it into a local mirror)."""
    local_mirror = publish_kwargs.pop("local_mirror", None)
    model_dir = Path(root) / entry.model  # an absolute `model` stays as it is
    with tempfile.TemporaryDirectory(prefix="hf-sparse-publish-") as tmp:
        folder = assemble_repo(entry, model_dir, Path(tmp) / "repo", repo_id, root)
        if local_mirror is not None:
            from .local_hub import mirror_commit, mirror_head

            result = PublishResult(repo_id=repo_id, dry_run=publish_kwargs.get("dry_run", False))
            if not result.dry_run:
                before = mirror_head(local_mirror, repo_id)
                sha = mirror_commit(folder, local_mirror, repo_id, publish_kwargs.get("commit_message", "Publish with hf-sparse"))
                result.committed = sha != before
                result.commit_url = f"{local_mirror}/models/{repo_id}@{sha}"
            result.operations = [Operation("add", p.relative_to(folder).as_posix()) for p in sorted(folder.rglob("*")) if p.is_file()]
            return result
        return publish_folder(folder, repo_id, **publish_kwargs)
