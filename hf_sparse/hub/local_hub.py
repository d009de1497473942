"""A local, offline, read-only Hugging Face Hub for round trips.

`mirror_commit` commits a folder (e.g. a `save_pretrained` output) into a git work tree laid out the
way olah reads it, `<mirrors_root>/models/<org>/<name>`. `LocalHub` runs the olah server
(`olah==0.5.4`, in its own venv made by `bash scripts/setup_olah.sh`: it needs a huggingface_hub that
conflicts with transformers 4.57) over such a root, so that unmodified clients download from it::

    sha = mirror_commit("out/tiny", "mirrors", "org/tiny", "first version")
    with LocalHub("mirrors") as hub:
        # in a process started with HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE=0:
        AutoModel.from_pretrained("org/tiny")

The server only reads: uploads (`create_repo`, `upload_folder`, `push_to_hub`) are refused (405).
Known olah 0.5.4 quirks: `model_info` needs an explicit `revision` (401 otherwise), `list_models` and
`list_repo_commits` fail, and a missing file comes back as `RepositoryNotFoundError`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

__all__ = ["OLAH_ENV", "LocalHub", "LocalHubError", "default_olah_executable", "mirror_commit"]

OLAH_ENV = "HF_SPARSE_OLAH"  # overrides the path of the olah-cli executable
SETUP_HINT = "bash scripts/setup_olah.sh"
GIT_NAME = "hf-sparse"
GIT_EMAIL = "hf-sparse@localhost"

# Hub rules: word characters, '-' and '.', starting and ending with a word character, at most 96
_REPO_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")
_SHA = re.compile(r"[0-9a-f]{40}")
_HOST = "127.0.0.1"


class LocalHubError(RuntimeError):
    """The local Hub server could not be started (or a git operation for it failed)."""


# ---------------------------------------------------------------------------------------------
# git mirror


def _split_repo_id(repo_id: str) -> tuple[str, str]:
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2 or not all(_REPO_PART.fullmatch(p) for p in parts) or ".." in repo_id or "--" in repo_id:
        raise ValueError(
            f"invalid repo_id {repo_id!r}: expected 'org/name', each part made of letters, digits, '_', '-' "
            "and '.', starting and ending with a letter, digit or '_', without '..' or '--'"
        )
    return parts[0], parts[1]


def _git_env() -> dict[str, str]:
    # no inherited GIT_* redirections (GIT_DIR, GIT_INDEX_FILE, ...), no user or system config
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME=GIT_NAME,
        GIT_AUTHOR_EMAIL=GIT_EMAIL,
        GIT_COMMITTER_NAME=GIT_NAME,
        GIT_COMMITTER_EMAIL=GIT_EMAIL,
        LC_ALL="C",
    )
    return env


def _git(args: list[str], cwd: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    git = shutil.which("git")
    if git is None:
        raise LocalHubError("the `git` executable was not found on PATH; mirror_commit needs it")
    cmd = [git, "-c", "core.autocrlf=false", "-c", "gc.auto=0", "-c", "init.defaultBranch=main", *args]
    result = subprocess.run(cmd, cwd=cwd, env=_git_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise LocalHubError(f"`git {' '.join(args)}` failed in {cwd} (exit {result.returncode}): {result.stderr.strip()}")
    return result


def _check_revision(revision: str, cwd: Path) -> None:
    ok = isinstance(revision, str) and revision and not _SHA.fullmatch(revision)
    if not ok or _git(["check-ref-format", f"refs/heads/{revision}"], cwd, check=False).returncode != 0:
        raise ValueError(f"invalid revision {revision!r}: expected a git branch name that is not a 40-hex commit sha")


def _check_source(source: Path) -> None:
    for path in source.rglob("*"):
        if path.name.lower() == ".git":
            raise ValueError(f"{source} contains {path.relative_to(source)}: nested git metadata cannot be mirrored")


def _ensure_work_tree(work: Path) -> None:
    if (work / ".git").is_dir():
        top = _git(["rev-parse", "--show-toplevel"], work).stdout.strip()
        if Path(top).resolve() != work:
            raise LocalHubError(f"{work} is inside the git work tree {top}, not the top of its own")
        return
    if work.exists() and (not work.is_dir() or any(work.iterdir())):
        raise FileExistsError(f"{work} exists and is not a git work tree; refusing to overwrite it")
    work.mkdir(parents=True, exist_ok=True)
    _git(["init", "-q"], work)


def _replace_tree(source: Path, work: Path) -> None:
    for entry in work.iterdir():
        if entry.name == ".git":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    shutil.copytree(source, work, dirs_exist_ok=True)  # symlinks are followed: their contents are committed


def _head(work: Path) -> str | None:
    result = _git(["rev-parse", "--verify", "-q", "HEAD"], work, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def mirror_head(mirrors_root: str | os.PathLike[str], repo_id: str) -> str | None:
    """The commit `repo_id`'s mirror work tree is at, or None if it has none yet."""
    org, name = _split_repo_id(repo_id)
    work = Path(mirrors_root) / "models" / org / name
    return _head(work) if (work / ".git").exists() else None


def mirror_commit(
    folder: str | os.PathLike[str],
    mirrors_root: str | os.PathLike[str],
    repo_id: str,
    message: str,
    revision: str = "main",
) -> str:
    """Commit the exact contents of `folder` as branch `revision` of `repo_id` under `mirrors_root`.

    The git work tree is `<mirrors_root>/models/<org>/<name>` (created and `git init`-ed on first
    use), the layout olah serves. The new commit's tree is exactly `folder`: files that are no longer
    in it are removed, every file is a plain git blob (no LFS, whatever `.gitattributes` says), and
    empty directories are dropped (git does not store them). A branch that does not exist yet starts
    as a root commit. Author and committer are fixed (`hf-sparse <hf-sparse@localhost>`) and no user
    or system git configuration is read. Afterwards the work tree holds `folder`'s files and HEAD
    is `revision`.

    Args:
        folder: the directory to publish; it may not contain `.git` entries or overlap the mirror.
        mirrors_root: the root olah is given as `mirrors-path`.
        repo_id: "org/name" in Hub syntax (no path separators beyond the one '/', no '..').
        message: the commit message (non-empty).
        revision: the branch to commit to.

    Returns:
        The 40-hex sha of the branch head. If the tree equals the head's tree, no commit is made and
        the current head sha is returned.

    Raises:
        ValueError: invalid `repo_id`, `revision` or `message`, or an unusable `folder`.
        NotADirectoryError: `folder` is not a directory.
        FileExistsError: the work tree path exists but is not a git work tree.
        LocalHubError: git is missing or a git command failed.
    """
    org, name = _split_repo_id(repo_id)
    if not isinstance(message, str) or not message.strip():
        raise ValueError("the commit message must be a non-empty string")
    source = Path(folder).resolve()
    if not source.is_dir():
        raise NotADirectoryError(f"{source} is not a directory")
    work = Path(mirrors_root).resolve() / "models" / org / name
    if source == work or source in work.parents or work in source.parents:
        raise ValueError(f"the folder {source} and the mirror work tree {work} overlap")
    _check_source(source)
    _check_revision(revision, source)

    _ensure_work_tree(work)
    # point HEAD at the branch (unborn if new); the index is rebuilt from the copied tree below
    _git(["symbolic-ref", "HEAD", f"refs/heads/{revision}"], work)
    _replace_tree(source, work)
    _git(["add", "--all", "--force", "."], work)
    tree = _git(["write-tree"], work).stdout.strip()
    head = _head(work)
    if head is not None and _git(["rev-parse", f"{head}^{{tree}}"], work).stdout.strip() == tree:
        return head
    _git(["commit", "-q", "--no-verify", "--no-gpg-sign", "-m", message], work)
    new_head = _head(work)
    assert new_head is not None
    return new_head


# ---------------------------------------------------------------------------------------------
# olah server


def default_olah_executable() -> Path:
    """The olah-cli to run: `$HF_SPARSE_OLAH` if set, else `<repo>/.venv-olah/bin/olah-cli`."""
    env = os.environ.get(OLAH_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / ".venv-olah" / "bin" / "olah-cli"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers_http(url: str) -> bool:
    try:
        with _NO_PROXY.open(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP status means the server is up
    except (urllib.error.URLError, OSError):
        return False


class LocalHub:
    """Runs olah over `mirrors_root` on 127.0.0.1 (a free port), offline and read-only.

    Use it as a context manager (or call `start` / `stop`). While it runs, `endpoint` is the URL to
    give clients as `HF_ENDPOINT` (with `HF_HUB_OFFLINE=0`); `client_env` builds such an
    environment. Repositories are `<mirrors_root>/models/<org>/<name>` git work trees (see
    `mirror_commit`); commits made while the server runs are served immediately. olah's config, its
    cache (`repos-path`), its home (`~/.olah`) and its logs live in a temporary directory that `stop`
    removes.

    Args:
        mirrors_root: the directory holding `models/<org>/<name>` (created if missing).
        olah: the olah-cli executable; default `default_olah_executable()`.
        startup_timeout: seconds to wait for the server to answer HTTP.
    """

    def __init__(
        self,
        mirrors_root: str | os.PathLike[str],
        *,
        olah: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.mirrors_root = Path(mirrors_root).resolve()
        self.olah = Path(olah).expanduser() if olah is not None else default_olah_executable()
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.startup_seconds: float | None = None  # time from launch to the first HTTP answer
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None

    @property
    def endpoint(self) -> str:
        """`http://127.0.0.1:PORT` of the running server."""
        if self._proc is None or self.port is None:
            raise LocalHubError("the local Hub is not running (use `with LocalHub(...) as hub:`)")
        return f"http://{_HOST}:{self.port}"

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A copy of `base` (default `os.environ`) that points huggingface_hub clients at this server.

        Hub tokens are removed and implicit tokens disabled: no credential is sent to the local server.
        """
        env = dict(os.environ if base is None else base)
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):  # a Hub token has no business going to a local server
            env.pop(name, None)
        env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"  # nor the saved login
        no_proxy = ",".join(p for p in (env.get("NO_PROXY", ""), _HOST, "localhost") if p)
        env.update(HF_ENDPOINT=self.endpoint, HF_HUB_OFFLINE="0", NO_PROXY=no_proxy, no_proxy=no_proxy)
        return env

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the server's output (empty once stopped)."""
        if self._tmp is None:
            return ""
        try:
            text = (self._tmp / "olah.out").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _check_executable(self) -> None:
        if not (self.olah.is_file() and os.access(self.olah, os.X_OK)):
            raise FileNotFoundError(
                f"olah server executable not found at {self.olah}. Create its venv with `{SETUP_HINT}` "
                f"(from the repository root) or set {OLAH_ENV} to an olah-cli executable."
            )

    def _write_config(self, tmp: Path, port: int) -> Path:
        netloc = f"{_HOST}:{port}"
        basic = {
            "host": _HOST,
            "port": port,
            "repos-path": str(tmp / "repos"),
            "mirror-scheme": "http",
            "mirror-netloc": netloc,
            "mirror-lfs-netloc": netloc,
            "mirrors-path": [str(self.mirrors_root)],
        }
        lines = ["[basic]", *(f"{k} = {_toml_value(v)}" for k, v in basic.items()), "[accessibility]", "offline = true"]
        config = tmp / "configs.toml"
        config.write_text("\n".join(lines) + "\n")
        return config

    def _server_env(self, tmp: Path) -> dict[str, str]:
        # keep the main environment's Python and Hub settings out of olah's venv
        drop = {"HF_ENDPOINT", "HF_HUB_OFFLINE", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(HOME=str(tmp), HF_HOME=str(tmp / "hf-home"), NO_PROXY=f"{_HOST},localhost", no_proxy=f"{_HOST},localhost")
        return env

    def start(self) -> LocalHub:
        """Start the server and wait until it answers HTTP.

        Raises:
            FileNotFoundError: the olah executable is missing (the message names the setup script).
            LocalHubError: the server exited or did not answer within `startup_timeout`; the message
                includes the tail of its log.
        """
        if self._proc is not None:
            raise LocalHubError(f"the local Hub is already running at {self.endpoint}")
        self._check_executable()
        self.mirrors_root.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="hf-sparse-olah-"))
        try:
            for _ in range(3):  # another process may grab the free port before olah binds it
                if self._launch(self._tmp):
                    return self
                self._terminate()
            raise LocalHubError(f"olah could not bind a free port on {_HOST} in 3 attempts; log tail:\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def _launch(self, tmp: Path) -> bool:
        """Launch olah once; True when it answers, False when its port was taken."""
        port = _free_port()
        config = self._write_config(tmp, port)
        with open(tmp / "olah.out", "wb") as log:  # the child keeps its own handle
            started = time.monotonic()
            self._proc = subprocess.Popen(
                [str(self.olah), "-c", str(config), "--log-path", str(tmp / "logs")],
                cwd=tmp, env=self._server_env(tmp), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self.port = port
        # a repo path olah answers quickly (401 RepoNotFound); "/" renders a page that fails in 0.5.4
        probe = f"http://{_HOST}:{port}/api/models/hf-sparse/ready-probe/revision/main"
        deadline = started + self.startup_timeout
        while True:
            if _answers_http(probe):
                self.startup_seconds = time.monotonic() - started
                return True
            code = self._proc.poll()
            if code is not None:
                tail = self.log_tail()
                if "address already in use" in tail.lower():
                    return False
                raise LocalHubError(f"olah ({self.olah}) exited with code {code} before answering on {self.endpoint}; log tail:\n{tail}")
            if time.monotonic() > deadline:
                raise LocalHubError(
                    f"olah ({self.olah}) did not answer HTTP on {self.endpoint} within {self.startup_timeout:g} s; "
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _terminate(self) -> None:
        proc, self._proc, self.port = self._proc, None, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server (if running) and remove its temporary directory. Safe to call twice."""
        self._terminate()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self.endpoint if self._proc is not None else "stopped"
        return f"LocalHub(mirrors_root={str(self.mirrors_root)!r}, {state})"
