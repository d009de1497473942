"""Model cards from results files, and publishing at the huggingface_hub boundary (one commit, idempotent)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.hf_api import RepoFile

from conftest import build
from hf_sparse.hub.cards import CardError, ZooEntry, load_zoo, render_card
from hf_sparse.hub.publish import PublishError, _git_blob_sha1, _sha256, assemble_repo, build_and_publish, publish_folder

ROOT = Path(__file__).resolve().parents[1]


def http_error(cls, message):
    """huggingface_hub 1.x+ errors need a response object (httpx's in 1.x, httpx2's in 2.x); 0.x ones do not."""
    try:
        return cls(message)
    except TypeError:
        try:
            import httpx2 as httpx
        except ImportError:
            import httpx

        return cls(message, response=httpx.Response(404, request=httpx.Request("GET", "http://hub.invalid/api")))


class FakeHub:
    """The few `HfApi` methods publishing uses, on an in-memory repository; records every call."""

    def __init__(self):
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> branch -> path -> bytes
        self.calls: list[tuple] = []

    def list_repo_tree(self, repo_id, revision=None, recursive=False):
        self.calls.append(("list_repo_tree", repo_id, revision))
        if repo_id not in self.repos:
            raise http_error(RepositoryNotFoundError, repo_id)
        branch = self.repos[repo_id].get(revision or "main")
        if branch is None:
            raise http_error(RevisionNotFoundError, revision)
        out = []
        for path, data in branch.items():
            tmp = Path(self.tmp) / "blob"
            tmp.write_bytes(data)
            if path.endswith((".safetensors", ".png")):  # the Hub stores binaries with LFS
                out.append(RepoFile(path=path, size=len(data), oid="0" * 40, lfs={"size": len(data), "oid": _sha256(tmp), "pointerSize": 130}))
            else:
                out.append(RepoFile(path=path, size=len(data), oid=_git_blob_sha1(tmp)))
        return out

    def create_repo(self, repo_id, private=False, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private))
        self.repos.setdefault(repo_id, {"main": {".gitattributes": b"*.safetensors filter=lfs\n"}})

    def create_branch(self, repo_id, branch, exist_ok=False):
        self.calls.append(("create_branch", repo_id, branch))
        self.repos[repo_id][branch] = dict(self.repos[repo_id]["main"])

    def create_commit(self, repo_id, operations, commit_message, revision=None, create_pr=False):
        operations = list(operations)
        self.calls.append(("create_commit", repo_id, revision, create_pr, [op.path_in_repo for op in operations]))
        files = self.repos[repo_id][revision or "main"]
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                files[op.path_in_repo] = Path(op.path_or_fileobj).read_bytes()
            elif isinstance(op, CommitOperationDelete):
                files.pop(op.path_in_repo)

        class Info:
            commit_url = f"https://hub.invalid/{repo_id}/commit/1"
            pr_url = f"https://hub.invalid/{repo_id}/discussions/1" if create_pr else None

        return Info()

    def writes(self):
        return [c for c in self.calls if c[0] != "list_repo_tree"]


@pytest.fixture
def project(tmp_path, tiny_tokenizer):
    """A results tree and checkpoints laid out like the repository's."""
    root = tmp_path / "project"
    results = root / "benchmarks" / "results" / "transfer"
    results.mkdir(parents=True)
    upstream = build("SparseBertForMaskedLM", sparsity=0.9)
    upstream.save_pretrained(root / "out" / "up")
    tiny_tokenizer.save_pretrained(root / "out" / "up")
    finetuned = build("SparseBertForSequenceClassification", sparsity=0.9, num_labels=2)
    finetuned.save_pretrained(root / "out" / "ft")
    tiny_tokenizer.save_pretrained(root / "out" / "ft")
    metrics = {"sparsity": 0.9, "steps": 10, "wall_seconds": 120.0, "teacher": {"mlm_loss": 6.5, "mlm_accuracy": 0.12},
               "student": {"mlm_loss": 5.5, "mlm_accuracy": 0.2}}
    (root / "benchmarks" / "results" / "upstream_90.json").write_text(json.dumps({"command": "python benchmarks/upstream.py --sparsity 90", "metrics": metrics}))
    for seed, f1 in ((1, 0.80), (2, 0.84)):
        run = {"row": "upstream-90", "kd": True, "task": "mrpc", "seed": seed, "main_metric": "f1", "train_examples": 3667, "epochs": 3,
               "metrics": {"f1": f1, "accuracy": f1 - 0.1, "loss": 0.5, "runtime": 3.0},
               "command": f"python benchmarks/transfer.py --row upstream-90 --task mrpc --seed {seed} --kd"}
        (results / f"upstream-90-kd_mrpc_s{seed}.json").write_text(json.dumps(run))
    (root / "recipes").mkdir()
    (root / "recipes" / "r.yaml").write_text("name: r\nfinal_sparsity: 0.9\n")
    return root


def upstream_entry(**overrides):
    values = dict(name="tiny-90", kind="upstream", model="out/up", recipe="recipes/r.yaml",
                  results=["benchmarks/results/upstream_90.json"], transfer_results=["benchmarks/results/transfer/upstream-90-kd_*.json"])
    values.update(overrides)
    return ZooEntry(**values)


def finetuned_entry():
    return ZooEntry(name="tiny-90-mrpc", kind="finetuned", task="mrpc", model="out/ft", results=["benchmarks/results/transfer/upstream-90-kd_mrpc_s*.json"])


# ---- cards ------------------------------------------------------------------------------------------
def test_finetuned_card_carries_model_index_from_results(project, tmp_path):
    folder = assemble_repo(finetuned_entry(), project / "out" / "ft", tmp_path / "repo", "org/tiny-90-mrpc", project)
    card = ModelCard((folder / "README.md").read_text())
    data = card.data.to_dict()
    assert {"sparse", "pruned", "prune-once-for-all"} <= set(data["tags"])
    assert data["license"] == "apache-2.0" and data["base_model"] and data["datasets"] == ["glue"]
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {"f1": pytest.approx(82.0), "accuracy": pytest.approx(72.0)}  # means over the two seeds
    assert "82.00 ± 2.83" in card.text  # stdev of 80, 84
    assert "trust_remote_code=True" in card.text and "org/tiny-90-mrpc" in card.text
    assert (folder / "sparsity.png").read_bytes()[:4] == b"\x89PNG"
    assert {"config.json", "model.safetensors", "modeling_sparse_bert.py", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}


def test_upstream_card_has_mlm_result_recipe_and_transfer_table(project, tmp_path):
    folder = assemble_repo(upstream_entry(), project / "out" / "up", tmp_path / "repo", "org/tiny-90", project)
    card = ModelCard((folder / "README.md").read_text())
    (result,) = card.data.eval_results
    assert result.task_type == "fill-mask" and result.metric_value == pytest.approx(20.0)
    assert "final_sparsity: 0.9" in card.text and (folder / "recipe.yaml").is_file()
    assert "upstream-90 + KD | mrpc" in card.text


def test_a_recipe_with_a_base_is_shown_and_published_with_every_setting(project, tmp_path):
    import yaml

    (project / "recipes" / "r80.yaml").write_text("# r, to 80%\nbase: r.yaml\nname: r80\nfinal_sparsity: 0.8\n")
    folder = assemble_repo(upstream_entry(recipe="recipes/r80.yaml"), project / "out" / "up", tmp_path / "repo", "org/tiny-80", project)
    card = (folder / "README.md").read_text()
    assert "```yaml\n# r, to 80%\nname: r80\nfinal_sparsity: 0.8\n```" in card and "base:" not in card
    assert yaml.safe_load((folder / "recipe.yaml").read_text()) == {"name": "r80", "final_sparsity": 0.8}

    (project / "recipes" / "broken.yaml").write_text("base: missing.yaml\nname: broken\n")
    with pytest.raises(CardError, match=r"tiny-90: recipe .*broken.yaml cannot be read: .*broken.yaml: its base recipe .*missing.yaml does not exist"):
        assemble_repo(upstream_entry(recipe="recipes/broken.yaml"), project / "out" / "up", tmp_path / "broken", "org/b", project)
    assert not (tmp_path / "broken").exists()  # nothing written


def test_bi_encoder_repo_is_a_sentence_transformers_model_with_its_card(project, tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer

    from hf_sparse.transfer.bi_encoder import build_bi_encoder

    model, _ = build_bi_encoder(str(project / "out" / "up"), max_length=32)
    model.save(str(project / "out" / "bi"))
    run = {"row": "upstream-90", "kd": False, "head": "bi-encoder", "task": "stsb", "seed": 1, "main_metric": "combined",
           "train_examples": 5749, "epochs": 3, "metrics": {"pearson": 0.8, "spearmanr": 0.7, "combined": 0.75},
           "command": "python benchmarks/transfer.py --row upstream-90 --task stsb --seed 1 --bi-encoder"}
    (project / "benchmarks" / "results" / "transfer" / "upstream-90-bi_stsb_s1.json").write_text(json.dumps(run))
    dense = dict(run, row="dense", metrics={"pearson": 0.9, "spearmanr": 0.9, "combined": 0.9}, command="python benchmarks/transfer.py --row dense --task stsb --seed 1 --bi-encoder")
    (project / "benchmarks" / "results" / "transfer" / "dense-bi_stsb_s1.json").write_text(json.dumps(dense))
    entry = ZooEntry(name="tiny-90-sts", kind="finetuned", task="stsb", model="out/bi", results=["benchmarks/results/transfer/upstream-90-bi_stsb_s*.json"],
                     transfer_results=["benchmarks/results/transfer/dense-bi_stsb_s*.json"])
    folder = assemble_repo(entry, project / "out" / "bi", tmp_path / "repo", "org/tiny-90-sts", project)

    card = ModelCard((folder / "README.md").read_text())
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "sentence-similarity" and data["library_name"] == "sentence-transformers"
    assert {"sentence-transformers", "sparse"} <= set(data["tags"])
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"pearson": 80.0, "spearmanr": 70.0, "combined": 75.0}
    assert 'SentenceTransformer("org/tiny-90-sts")' in card.text and "AutoModelForMaskedLM" not in card.text
    # the comparison rows are shown, never reported as this model's results
    assert "(not this model):" in card.text and "| dense (bi-encoder) | stsb | pearson 90.00, spearmanr 90.00, combined 90.00 | 1 |" in card.text
    assert (folder / "modules.json").is_file() and (folder / "1_Pooling" / "config.json").is_file()
    texts = ["w1 w2 w3", "w4 w5"]
    again = SentenceTransformer(str(folder), device="cpu")
    assert torch.equal(again.encode(texts, convert_to_tensor=True), model.eval().encode(texts, convert_to_tensor=True))

    pooling = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
    for module, message in (({"path": "../up", "type": pooling}, "module path '../up' is not a folder inside"),
                            ({"path": "1_Pooling", "type": "evil.Module"}, r"modules outside sentence_transformers \['evil.Module'\]")):
        (project / "out" / "bi" / "modules.json").write_text(json.dumps([{"idx": 1, "name": "1", **module}]))
        with pytest.raises(PublishError, match=message):
            assemble_repo(entry, project / "out" / "bi", tmp_path / "repo2", "org/tiny-90-sts", project)
        assert not (tmp_path / "repo2").exists()


def test_card_keeps_cross_and_bi_encoder_rows_apart(project, tmp_path):
    results = project / "benchmarks" / "results" / "transfer"
    for head, suffix, score in (("cross-encoder", "", 0.2), ("bi-encoder", "-bi", 0.8)):
        run = {"row": "upstream-90", "kd": True, "head": head, "task": "stsb", "seed": 1, "main_metric": "combined", "train_examples": 5749,
               "epochs": 3, "metrics": {"combined": score}, "command": f"python benchmarks/transfer.py --row upstream-90 --task stsb --seed 1 --kd{suffix}"}
        (results / f"upstream-90-kd{suffix}_stsb_s1.json").write_text(json.dumps(run))
    entry = upstream_entry(transfer_results=["benchmarks/results/transfer/upstream-90-kd*_stsb_s*.json"])
    card = ModelCard((assemble_repo(entry, project / "out" / "up", tmp_path / "repo", "org/tiny-90", project) / "README.md").read_text())
    assert "| upstream-90 + KD | stsb | combined 20.00 | 1 |" in card.text
    assert "| upstream-90 + KD (bi-encoder) | stsb | combined 80.00 | 1 |" in card.text


@pytest.mark.parametrize(
    "entry, message",
    [
        (upstream_entry(results=["benchmarks/results/upstream_80.json"]), "no upstream results file matches"),
        (upstream_entry(transfer_results=["benchmarks/results/transfer/upstream-80-kd_*.json"]), "no transfer results file"),
        (ZooEntry(name="c", kind="converted", source="intel/x", model="out/up"), "must cite its published results"),
        (ZooEntry(name="c", kind="converted", source="intel/x", model="out/up", cited_results=[{"task": "squad"}]), "lacks"),
    ],
)
def test_card_refuses_missing_or_bad_results(project, tmp_path, entry, message):
    with pytest.raises(CardError, match=message):
        assemble_repo(entry, project / "out" / "up", tmp_path / "repo", "org/x", project)
    assert not (tmp_path / "repo").exists()  # nothing half-written


def test_malformed_results_file_is_named(project, tmp_path):
    bad = project / "benchmarks" / "results" / "transfer" / "upstream-90-kd_mrpc_s3.json"
    bad.write_text(json.dumps({"task": "mrpc"}))
    with pytest.raises(CardError, match="s3.json: not a transfer results file"):
        assemble_repo(finetuned_entry(), project / "out" / "ft", tmp_path / "repo", "org/x", project)


def test_zoo_file_parses_and_rejects_unknown_keys(tmp_path):
    org, entries = load_zoo(ROOT / "upload" / "zoo.yaml")
    assert org and {e.kind for e in entries} == {"upstream", "finetuned", "converted"}
    bad = tmp_path / "zoo.yaml"
    bad.write_text("org: o\nmodels:\n  - {name: a, kind: upstream, model: m, results: [r], colour: red}\n")
    with pytest.raises(CardError, match="unknown keys"):
        load_zoo(bad)


# ---- publishing -----------------------------------------------------------------------------------
@pytest.fixture
def repo_folder(project, tmp_path):
    return assemble_repo(finetuned_entry(), project / "out" / "ft", tmp_path / "repo", "org/tiny-90-mrpc", project)


def test_dry_run_lists_exactly_the_operations_and_writes_nothing(repo_folder, tmp_path):
    hub = FakeHub()
    hub.tmp = tmp_path
    result = publish_folder(repo_folder, "org/tiny-90-mrpc", dry_run=True, api=hub)
    files = sorted(p.relative_to(repo_folder).as_posix() for p in repo_folder.rglob("*") if p.is_file())
    assert [str(op).split(" (")[0] for op in result.operations] == (
        ["create_repo org/tiny-90-mrpc"] + [f"add {f}" for f in files] + ["commit main"]
    )
    assert hub.writes() == [] and not result.committed


def test_publish_is_one_commit_and_idempotent(repo_folder, tmp_path):
    hub = FakeHub()
    hub.tmp = tmp_path
    first = publish_folder(repo_folder, "org/tiny-90-mrpc", private=True, api=hub)
    assert first.committed
    commits = [c for c in hub.calls if c[0] == "create_commit"]
    assert hub.writes()[0] == ("create_repo", "org/tiny-90-mrpc", True) and len(commits) == 1
    assert hub.repos["org/tiny-90-mrpc"]["main"]["model.safetensors"] == (repo_folder / "model.safetensors").read_bytes()

    again = publish_folder(repo_folder, "org/tiny-90-mrpc", api=hub)
    assert not again.committed and again.operations == []
    assert len([c for c in hub.calls if c[0] == "create_commit"]) == 1

    (repo_folder / "README.md").write_text((repo_folder / "README.md").read_text() + "\nmore\n")
    (repo_folder / "recipe.yaml").unlink(missing_ok=True)
    hub.repos["org/tiny-90-mrpc"]["main"]["stale.bin"] = b"old"
    third = publish_folder(repo_folder, "org/tiny-90-mrpc", api=hub)
    assert [str(op).split(" (")[0] for op in third.operations] == ["add README.md", "delete stale.bin", "commit main"]
    assert "stale.bin" not in hub.repos["org/tiny-90-mrpc"]["main"]


def test_revision_and_pull_request(repo_folder, tmp_path):
    hub = FakeHub()
    hub.tmp = tmp_path
    publish_folder(repo_folder, "org/m", api=hub)
    (repo_folder / "README.md").write_text("---\nlicense: mit\n---\nchanged\n")
    result = publish_folder(repo_folder, "org/m", revision="v2", create_pr=True, api=hub)
    assert ("create_branch", "org/m", "v2") in hub.calls
    commit = [c for c in hub.calls if c[0] == "create_commit"][-1]
    assert commit[2:4] == ("v2", True) and commit[4] == ["README.md"]
    assert result.commit_url.endswith("discussions/1")


def test_bad_repo_id_and_unassembled_folder(repo_folder, tmp_path):
    with pytest.raises(PublishError, match="org/name"):
        publish_folder(repo_folder, "../etc", api=FakeHub())
    with pytest.raises(PublishError, match="README.md"):
        publish_folder(tmp_path, "org/m", api=FakeHub())


def test_publish_script_errors_are_clean_and_never_show_the_token(project, tmp_path):
    script = ROOT / "upload" / "publish.py"
    env = {"PATH": "/usr/bin:/bin", "HF_TOKEN": "hf_secret_value", "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HOME": str(tmp_path / "hf-home")}
    empty = tmp_path / "empty.yaml"
    empty.write_text("org: o\nmodels: []\n")
    out = subprocess.run([sys.executable, str(script), str(project / "out" / "ft"), "--repo-id", "o/m", "--zoo", str(empty), "--dry-run"],
                         capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "no zoo entry" in out.stderr
    zoo = tmp_path / "zoo.yaml"  # a valid entry: the dry run reads the (unreachable) Hub with the token
    zoo.write_text(f"org: o\nmodels:\n  - {{name: m, kind: finetuned, task: mrpc, model: {project / 'out' / 'ft'}, "
                   f"results: ['{project}/benchmarks/results/transfer/upstream-90-kd_mrpc_s*.json']}}\n")
    out = subprocess.run([sys.executable, str(script), str(project / "out" / "ft"), "--repo-id", "o/m", "--zoo", str(zoo), "--dry-run"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and "publish: error:" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "hf_secret_value" not in out.stdout + out.stderr


def test_publish_zoo_converts_a_pruneofa_layout_and_reports_missing_models(tmp_path, tiny_tokenizer):
    """A hand-made Intel-pruneofa-style checkpoint (BertForPreTraining, 90% zeros) goes through the zoo:
    converted, carded with its cited result, committed to a local mirror; a missing model fails loudly."""
    import torch
    import transformers

    from conftest import tiny_config

    torch.manual_seed(0)
    config = transformers.BertConfig(**{**tiny_config().to_diff_dict(), "model_type": "bert"})
    dense = transformers.BertForPreTraining(config).eval()
    with torch.no_grad():
        for name, param in dense.named_parameters():
            if ".encoder.layer." in name and name.endswith("weight") and param.dim() == 2:
                param.mul_(torch.rand_like(param) >= 0.9)
    dense.save_pretrained(tmp_path / "pruneofa")
    tiny_tokenizer.save_pretrained(tmp_path / "pruneofa")
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(
        "org: o\nmodels:\n"
        f"  - name: tiny-pruneofa\n    kind: converted\n    source: {tmp_path / 'pruneofa'}\n    model: {tmp_path / 'converted'}\n"
        "    cited_results: [{task: SQuAD, dataset: dev, metric: F1, value: 12.34, source: 'made up for the test'}]\n"
        f"  - {{name: absent, kind: upstream, model: {tmp_path / 'nothing'}, results: [x.json]}}\n"
    )
    mirrors = tmp_path / "mirrors"
    out = subprocess.run([sys.executable, str(ROOT / "upload" / "publish_zoo.py"), str(zoo), "--local-mirror", str(mirrors)],
                         capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1, out.stderr[-3000:]
    assert "[committed] o/tiny-pruneofa" in out.stdout and "[FAILED] o/absent" in out.stdout
    card = (mirrors / "models" / "o" / "tiny-pruneofa" / "README.md").read_text()
    assert "12.34" in card and "cited, not re-measured" in card
    config_json = json.loads((mirrors / "models" / "o" / "tiny-pruneofa" / "config.json").read_text())
    assert config_json["model_type"] == "sparse_bert" and config_json["architectures"] == ["SparseBertForMaskedLM"]
    assert abs(config_json["measured_sparsity"] - 0.9) < 0.02
