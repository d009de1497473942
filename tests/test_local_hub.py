"""Round trips through a local read-only Hub (olah over git mirrors): real clients, no network.

Needs `.venv-olah` (`bash scripts/setup_olah.sh`); without it the Hub tests fail with that hint.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_sparse.hub.local_hub import OLAH_ENV, LocalHub, default_olah_executable, mirror_commit

from conftest import build, dummy_inputs, make_tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "org/tiny-sparse"
HEAD = "SparseBertForSequenceClassification"
README = "---\nlicense: apache-2.0\n---\n\n# tiny-sparse\n\nAn 80%-sparse test model.\n"


def _git(work: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", *args], cwd=work, env=env, check=True, capture_output=True, text=True).stdout.strip()


def _tree(work: Path) -> set[str]:
    return set(_git(work, "ls-tree", "-r", "--name-only", "HEAD").splitlines())


# --- mirror_commit ------------------------------------------------------------------------------


def test_mirror_commit_is_idempotent_and_replaces_the_tree(tmp_path):
    src, mirrors = tmp_path / "src", tmp_path / "mirrors"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 64)
    work = mirrors / "models" / "org" / "repo"

    sha1 = mirror_commit(src, mirrors, "org/repo", "first")
    assert len(sha1) == 40 and _git(work, "rev-parse", "HEAD") == sha1
    assert _git(work, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert _git(work, "log", "-1", "--format=%an <%ae>|%cn <%ce>") == "hf-sparse <hf-sparse@localhost>|hf-sparse <hf-sparse@localhost>"
    assert _tree(work) == {"a.txt", "sub/b.bin"}

    assert mirror_commit(src, mirrors, "org/repo", "same again") == sha1  # unchanged tree: no commit
    assert _git(work, "rev-list", "--count", "HEAD") == "1"

    (src / "a.txt").write_text("changed")
    sha2 = mirror_commit(src, mirrors, "org/repo", "second")
    assert sha2 != sha1 and _git(work, "rev-list", "--count", "HEAD") == "2"
    assert _git(work, "show", f"{sha2}:a.txt") == "changed"

    shutil.rmtree(src / "sub")
    sha3 = mirror_commit(src, mirrors, "org/repo", "third")
    assert sha3 != sha2 and _tree(work) == {"a.txt"}
    assert not (work / "sub").exists() and _git(work, "status", "--porcelain") == ""

    # another branch starts as a root commit and leaves main alone
    dev = mirror_commit(src, mirrors, "org/repo", "dev", revision="dev")
    assert _git(work, "rev-parse", "refs/heads/main") == sha3 and _git(work, "rev-list", "--count", dev) == "1"


@pytest.mark.parametrize("repo_id", ["org", "org/../x", "../x", "a/b/c", "/abs", "org/..", "org/na me", "org/.x", "org/x--y", ""])
def test_mirror_commit_rejects_bad_repo_ids(tmp_path, repo_id):
    (tmp_path / "src").mkdir()
    with pytest.raises(ValueError, match="repo_id"):
        mirror_commit(tmp_path / "src", tmp_path / "mirrors", repo_id, "msg")
    assert not (tmp_path / "mirrors").exists()


def test_mirror_commit_rejects_bad_revision_and_message(tmp_path):
    (tmp_path / "src").mkdir()
    for revision in ["a..b", "x y", "0" * 40, ""]:
        with pytest.raises(ValueError, match="revision"):
            mirror_commit(tmp_path / "src", tmp_path / "mirrors", "org/repo", "msg", revision=revision)
    with pytest.raises(ValueError, match="message"):
        mirror_commit(tmp_path / "src", tmp_path / "mirrors", "org/repo", "  ")
    assert not (tmp_path / "mirrors").exists()


def test_local_hub_names_the_setup_script_when_olah_is_missing(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="scripts/setup_olah.sh"):
        LocalHub(tmp_path, olah=tmp_path / "no-olah-cli").start()
    monkeypatch.setenv(OLAH_ENV, str(tmp_path / "elsewhere"))
    assert default_olah_executable() == tmp_path / "elsewhere"


# --- through the server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The tiny model, its tokenizer and a README committed as org/tiny-sparse, served by olah."""
    olah = default_olah_executable()
    if not olah.is_file():
        pytest.fail(f"olah is not installed at {olah}: run `bash scripts/setup_olah.sh` from the repository root", pytrace=False)
    tmp = tmp_path_factory.mktemp("local_hub")
    model = build(HEAD, sparsity=0.8)
    folder = tmp / "tiny-sparse"
    folder.mkdir()
    tokenizer = make_tiny_tokenizer(tmp)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(README)
    sha = mirror_commit(folder, tmp / "mirrors", REPO_ID, "tiny sparse model")

    inputs = dummy_inputs(HEAD)
    save_file(inputs, str(tmp / "inputs.safetensors"))
    with torch.no_grad():
        logits = model(**inputs).logits
    with LocalHub(tmp / "mirrors") as server:
        yield {"server": server, "tmp": tmp, "sha": sha, "logits": logits, "files": {p.name for p in folder.iterdir()},
               "ids": tokenizer("w1 w2 w3")["input_ids"]}


def _run_child(hub, script: str, *args: str, isolated: bool = False) -> dict:
    """Run `script` in a fresh interpreter against the server (fresh HF cache), cwd outside the repo."""
    tmp = hub["tmp"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "PYTHONPATH"}
    base.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_DISABLE_PROGRESS_BARS="1",
                HF_HUB_DISABLE_TELEMETRY="1")
    env = hub["server"].client_env(base)
    env["HF_HOME"] = tempfile.mkdtemp(prefix="hf-home-", dir=tmp)  # a fresh cache per call
    cmd = [sys.executable, *(["-I"] if isolated else []), "-c", textwrap.dedent(script), *args]
    with tempfile.TemporaryDirectory(prefix="hf-sparse-child-") as work:  # outside the repo even if basetemp is not
        result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{result.stderr[-4000:]}\n--- olah log ---\n{hub['server'].log_tail()}"
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


LOAD_WITH_HF_SPARSE = """
    import json, sys
    import torch
    from safetensors.torch import load_file, save_file
    import hf_sparse
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    repo, inputs_file, out_file = sys.argv[1:4]
    m = AutoModelForSequenceClassification.from_pretrained(repo)
    try:
        tok, quirk = AutoTokenizer.from_pretrained(repo), None
    except RepositoryNotFoundError as err:
        # olah 0.5.4 answers a tree listing of a missing folder (transformers looks for
        # additional_chat_templates/) with 401 RepoNotFound instead of 404; only that is tolerated
        if "additional_chat_templates" not in str(err):
            raise
        tok, quirk = AutoTokenizer.from_pretrained(snapshot_download(repo)), "additional_chat_templates"
    with torch.no_grad():
        logits = m(**load_file(inputs_file)).logits
    save_file({"logits": logits}, out_file)
    print("RESULT " + json.dumps({"module": type(m).__module__, "class": type(m).__name__,
                                  "sparsity": m.sparsity(), "ids": tok("w1 w2 w3")["input_ids"],
                                  "tokenizer_quirk": quirk}))
"""


def test_from_pretrained_through_the_local_hub(hub):
    out = hub["tmp"] / "logits_hf_sparse.safetensors"
    info = _run_child(hub, LOAD_WITH_HF_SPARSE, REPO_ID, str(hub["tmp"] / "inputs.safetensors"), str(out))
    assert info["module"].startswith("hf_sparse.") and info["class"] == HEAD
    assert abs(info["sparsity"] - 0.8) < 0.02
    assert info["ids"] == hub["ids"]  # the tokenizer files made the round trip too
    assert torch.equal(load_file(str(out))["logits"], hub["logits"])


LOAD_WITHOUT_HF_SPARSE = """
    import importlib.abc, importlib.util, json, sys
    from pathlib import Path

    repo_root, repo, inputs_file, out_file = sys.argv[1:5]
    found_before_block = importlib.util.find_spec("hf_sparse") is not None  # -I keeps site-packages' .pth finders

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_sparse" or name.startswith("hf_sparse."):
                raise ImportError(f"{name} is blocked in this process")
            return None

    sys.meta_path.insert(0, Block())
    try:
        import hf_sparse
        importable = True
    except ImportError:
        importable = False

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=True)
    with torch.no_grad():
        logits = m(**load_file(inputs_file)).logits
    save_file({"logits": logits}, out_file)
    root = Path(repo_root).resolve()
    print("RESULT " + json.dumps({
        "module": type(m).__module__, "class": type(m).__name__,
        "found_before_block": found_before_block, "importable": importable,
        "hf_sparse_loaded": any(k == "hf_sparse" or k.startswith("hf_sparse.") for k in sys.modules),
        "repo_on_path": any(p and Path(p).resolve() == root for p in sys.path),
        "cwd_in_repo": root in Path.cwd().resolve().parents or Path.cwd().resolve() == root,
    }))
"""


def test_trust_remote_code_through_the_local_hub_without_hf_sparse(hub):
    out = hub["tmp"] / "logits_remote.safetensors"
    info = _run_child(hub, LOAD_WITHOUT_HF_SPARSE, str(REPO_ROOT), REPO_ID, str(hub["tmp"] / "inputs.safetensors"),
                      str(out), isolated=True)
    assert not info["importable"] and not info["hf_sparse_loaded"]
    assert not info["repo_on_path"] and not info["cwd_in_repo"]
    assert info["module"].startswith("transformers_modules.") and info["class"] == HEAD
    assert torch.equal(load_file(str(out))["logits"], hub["logits"])


HUB_API = """
    import json, os, sys
    from huggingface_hub import ModelCard, list_repo_files, model_info, snapshot_download

    repo = sys.argv[1]
    snap = snapshot_download(repo)
    info = model_info(repo, revision="main")  # olah 0.5.4 answers 401 without a revision
    print("RESULT " + json.dumps({
        "snapshot": sorted(os.listdir(snap)), "files": sorted(list_repo_files(repo)), "sha": info.sha,
        "siblings": sorted(s.rfilename for s in info.siblings), "card_data": info.card_data.to_dict(),
        "card": ModelCard.load(repo).data.to_dict(), "readme": open(os.path.join(snap, "README.md")).read(),
    }))
"""


def test_hub_api_through_the_local_hub(hub):
    info = _run_child(hub, HUB_API, REPO_ID)
    expected = sorted(hub["files"])
    assert {"config.json", "model.safetensors", "modeling_sparse_bert.py", "README.md", "tokenizer_config.json"} <= set(expected)
    assert info["snapshot"] == info["files"] == info["siblings"] == expected
    assert info["sha"] == hub["sha"]
    assert info["card_data"]["license"] == info["card"]["license"] == "apache-2.0"
    assert info["readme"] == README


LIVE = """
    import hashlib, json, sys
    from huggingface_hub import hf_hub_download, model_info

    repo, old = sys.argv[1:3]
    digest = lambda path: hashlib.sha256(open(path, "rb").read()).hexdigest()
    print("RESULT " + json.dumps({
        "sha": model_info(repo, revision="main").sha,
        "main": digest(hf_hub_download(repo, "weights.safetensors")),
        "old": digest(hf_hub_download(repo, "weights.safetensors", revision=old)),
    }))
"""


def test_commits_are_served_while_running_and_large_blobs_download(hub):
    """A multi-MB safetensors file as a plain git blob; a new commit is served without a restart."""
    src = hub["tmp"] / "live"
    src.mkdir()
    weights = src / "weights.safetensors"
    mirrors = hub["server"].mirrors_root
    save_file({"w": torch.arange(1 << 20, dtype=torch.float32)}, str(weights))  # 4 MiB
    old_digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    old = mirror_commit(src, mirrors, "org/live", "v1")
    save_file({"w": -torch.arange(1 << 20, dtype=torch.float32)}, str(weights))
    new = mirror_commit(src, mirrors, "org/live", "v2")
    info = _run_child(hub, LIVE, "org/live", old)
    assert info["sha"] == new != old
    assert info["main"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["old"] == old_digest


PUBLISHED = """
    import json, sys
    import torch
    from safetensors.torch import load_file
    import hf_sparse
    from huggingface_hub import ModelCard, list_repo_files
    from transformers import AutoModelForSequenceClassification

    repo, inputs_file = sys.argv[1:3]
    m = AutoModelForSequenceClassification.from_pretrained(repo)
    with torch.no_grad():
        logits = m(**load_file(inputs_file)).logits
    card = ModelCard.load(repo)
    print("RESULT " + json.dumps({"logits": logits.tolist(), "files": sorted(list_repo_files(repo)),
                                  "results": {r.metric_type: r.metric_value for r in card.data.eval_results},
                                  "tags": card.data.tags}))
"""


DRY_RUN = """
    import json, sys
    from hf_sparse.hub.publish import publish_folder

    result = publish_folder(sys.argv[1], sys.argv[2], dry_run=True)
    print("RESULT " + json.dumps({"operations": [str(op) for op in result.operations]}))
"""


def _tiny_zoo_model(tmp: Path, sparsity: float, seed: int):
    """A tiny fine-tuned-looking model in tmp/model and a transfer results file in tmp/results/run_s1.json."""
    (tmp / "results").mkdir(parents=True)
    model = build(HEAD, sparsity=sparsity, seed=seed)
    model.save_pretrained(tmp / "model")
    make_tiny_tokenizer(tmp).save_pretrained(tmp / "model")
    row = f"upstream-{round(100 * sparsity)}"
    run = {"row": row, "kd": True, "task": "mrpc", "seed": 1, "main_metric": "f1", "train_examples": 10, "epochs": 1,
           "metrics": {"f1": 0.75, "accuracy": 0.7}, "command": f"python benchmarks/transfer.py --row {row} --task mrpc --seed 1 --kd"}
    (tmp / "results" / "run_s1.json").write_text(json.dumps(run))
    return model


def test_zoo_publish_round_trip_and_unchanged_republish(hub):
    """assemble (card from a results file) -> commit into the served mirror -> from_pretrained through olah;
    publishing the same again makes no commit, and `publish_folder` sees the served repo as unchanged."""
    from hf_sparse.hub.cards import ZooEntry
    from hf_sparse.hub.publish import assemble_repo, build_and_publish

    tmp = hub["tmp"] / "zoo"
    model = _tiny_zoo_model(tmp, sparsity=0.8, seed=3)
    entry = ZooEntry(name="tiny-zoo", kind="finetuned", task="mrpc", model="model", results=["results/run_*.json"])
    mirrors = hub["server"].mirrors_root
    first = build_and_publish(entry, "org/tiny-zoo", tmp, local_mirror=str(mirrors))
    second = build_and_publish(entry, "org/tiny-zoo", tmp, local_mirror=str(mirrors))
    assert first.committed and not second.committed

    inputs = dummy_inputs(HEAD)
    with torch.no_grad():
        expected = model(**inputs).logits
    info = _run_child(hub, PUBLISHED, "org/tiny-zoo", str(hub["tmp"] / "inputs.safetensors"))
    assert torch.equal(torch.tensor(info["logits"]), expected)
    assert {"README.md", "sparsity.png", "model.safetensors", "modeling_sparse_bert.py"} <= set(info["files"])
    assert info["results"] == {"f1": 75.0, "accuracy": 70.0} and "sparse" in info["tags"]

    folder = assemble_repo(entry, tmp / "model", tmp / "again", "org/tiny-zoo", tmp)
    plan = _run_child(hub, DRY_RUN, str(folder), "org/tiny-zoo")  # compares blob SHA-1s listed by the server
    assert plan["operations"] == []
    (folder / "README.md").write_text((folder / "README.md").read_text() + "\nedited\n")
    plan = _run_child(hub, DRY_RUN, str(folder), "org/tiny-zoo")
    assert [op.split(" (")[0] for op in plan["operations"]] == ["add README.md", "commit main"]


LOAD_EXPORTS = """
    import json, sys
    import numpy as np
    from optimum.intel import OVModelForSequenceClassification
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from safetensors.numpy import load_file

    repo, inputs_file = sys.argv[1:3]
    inputs = load_file(inputs_file)
    inputs["token_type_ids"] = np.zeros_like(inputs["input_ids"])
    ort = ORTModelForSequenceClassification.from_pretrained(repo, subfolder="onnx", file_name="model.onnx")
    ov = OVModelForSequenceClassification.from_pretrained(repo, subfolder="openvino", file_name="openvino_model.xml",
                                                          ov_config={"INFERENCE_PRECISION_HINT": "f32"})
    ov_int8 = OVModelForSequenceClassification.from_pretrained(repo, subfolder="openvino", file_name="openvino_model_int8.xml")
    print("RESULT " + json.dumps({"ort": ort(**inputs).logits.tolist(), "ov": ov(**inputs).logits.tolist(),
                                  "ov_int8_shape": list(ov_int8(**inputs).logits.shape)}))
"""


def test_zoo_exports_load_through_the_local_hub_with_the_cards_snippets(hub):
    """An entry with `exports: [onnx, openvino]`: built by publish_zoo, committed, and loaded through olah with
    `ORTModelFor*/OVModelFor*.from_pretrained(repo, subfolder=..., file_name=...)` as the card shows."""
    from conftest import have_exporters

    if not have_exporters():
        pytest.skip("needs optimum-onnx and optimum-intel (default environment)")
    import importlib.util

    spec = importlib.util.spec_from_file_location("publish_zoo", Path(__file__).resolve().parents[1] / "upload" / "publish_zoo.py")
    publish_zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(publish_zoo)
    from hf_sparse.hub.cards import ZooEntry
    from hf_sparse.hub.publish import build_and_publish

    tmp = hub["tmp"] / "zoo-exports"
    model = _tiny_zoo_model(tmp, sparsity=0.9, seed=4)
    entry = ZooEntry(name="tiny-exports", kind="finetuned", task="mrpc", model=str(tmp / "model"),
                     results=[str(tmp / "results" / "run_*.json")], exports=["onnx", "openvino"])
    publish_zoo.ROOT = tmp  # entry paths are absolute; ROOT only anchors relative ones
    assert publish_zoo.build_exports(entry) == ["onnx", "openvino"]
    assert publish_zoo.build_exports(entry) == []  # exports of this checkpoint are kept: republishing stays unchanged
    retrained = build(HEAD, sparsity=0.9, seed=5)
    retrained.save_pretrained(tmp / "model")  # the same folder, new weights: its old exports are stale
    assert publish_zoo.pending_exports(entry) == ["onnx", "openvino"]  # what `publish_zoo.py --dry-run` lists
    assert publish_zoo.build_exports(entry) == ["onnx", "openvino"]
    assert publish_zoo.pending_exports(entry) == []
    model = retrained
    published = build_and_publish(entry, "org/tiny-exports", tmp, local_mirror=str(hub["server"].mirrors_root))
    files = {op.path for op in published.operations}
    assert {"onnx/model.onnx", "onnx/model_quantized.onnx", "openvino/openvino_model_int8.xml", "openvino/openvino_model_int8.bin"} <= files
    inputs = dummy_inputs(HEAD)
    with torch.no_grad():
        expected = model(**inputs, token_type_ids=torch.zeros_like(inputs["input_ids"])).logits
    info = _run_child(hub, LOAD_EXPORTS, "org/tiny-exports", str(hub["tmp"] / "inputs.safetensors"))
    torch.testing.assert_close(torch.tensor(info["ort"]), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(info["ov"]), expected, atol=1e-5, rtol=0)
    assert info["ov_int8_shape"] == list(expected.shape)


SENTENCE_MODEL = """
    import json, sys
    import hf_sparse
    from huggingface_hub import ModelCard
    from sentence_transformers import SentenceTransformer

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    repo = sys.argv[1]
    try:
        # revision="main": sentence-transformers 6 resolves the revision through model_info, which olah 0.5.4
        # answers with 401 when no revision is given
        model, quirk = SentenceTransformer(repo, device="cpu", revision="main"), None
    except (RepositoryNotFoundError, OSError, ValueError) as err:
        # olah 0.5.4 answers a missing file with 401 RepoNotFound instead of 404: the PEFT probe for
        # adapter_config.json (transformers 4.57) and AutoProcessor's probes for optional processor files
        # (transformers 5) then fail. Only those are tolerated; the files still come through the server.
        text = str(err) + str(err.__cause__) + str(err.__context__)
        quirk = next((q for q in ("adapter_config.json", "Unrecognized processing class") if q in text), None)
        if quirk is None:
            raise
        model = SentenceTransformer(snapshot_download(repo, revision="main"), device="cpu")
    card = ModelCard.load(repo)
    print("RESULT " + json.dumps({"embeddings": model.encode(["w1 w2 w3", "w4 w5"]).tolist(), "class": type(model[0].auto_model).__name__,
                                  "pipeline_tag": card.data.pipeline_tag, "library": card.data.library_name, "quirk": quirk}))
"""


def test_bi_encoder_publish_round_trip_with_sentence_transformers(hub):
    """A bi-encoder zoo entry (a sentence-transformers folder) -> mirror -> SentenceTransformer("org/...") through olah."""
    from hf_sparse.hub.cards import ZooEntry
    from hf_sparse.hub.publish import build_and_publish
    from hf_sparse.transfer.bi_encoder import build_bi_encoder

    tmp = hub["tmp"] / "zoo-bi"
    (tmp / "results").mkdir(parents=True)
    build("SparseBertForMaskedLM", sparsity=0.8, seed=5).save_pretrained(tmp / "up")
    make_tiny_tokenizer(tmp).save_pretrained(tmp / "up")
    model, _ = build_bi_encoder(str(tmp / "up"), max_length=32)
    model.save(str(tmp / "model"))
    run = {"row": "upstream-80", "kd": False, "head": "bi-encoder", "task": "stsb", "seed": 1, "main_metric": "combined",
           "train_examples": 10, "epochs": 1, "metrics": {"combined": 0.5}, "command": "python benchmarks/transfer.py --row upstream-80 --task stsb --seed 1 --bi-encoder"}
    (tmp / "results" / "run_s1.json").write_text(json.dumps(run))
    entry = ZooEntry(name="tiny-sts", kind="finetuned", task="stsb", model="model", results=["results/run_*.json"])
    assert build_and_publish(entry, "org/tiny-sts", tmp, local_mirror=str(hub["server"].mirrors_root)).committed

    info = _run_child(hub, SENTENCE_MODEL, "org/tiny-sts")
    assert info["class"] == "SparseBertModel" and info["pipeline_tag"] == "sentence-similarity" and info["library"] == "sentence-transformers"
    expected = model.eval().encode(["w1 w2 w3", "w4 w5"], convert_to_tensor=True)
    assert torch.equal(torch.tensor(info["embeddings"]), expected)
