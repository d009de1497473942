"""push_to_hub at the huggingface_hub boundary: what would be uploaded is the compressed checkpoint."""

from pathlib import Path
from unittest import mock

import transformers
import transformers.utils.hub as hf_utils_hub
from huggingface_hub import HfApi
from huggingface_hub.hf_api import RepoUrl

from hf_sparse import SparseBertForSequenceClassification

from conftest import build

EXPECTED = {"config.json", "configuration_sparse_bert.py", "model.safetensors", "modeling_sparse_bert.py", "sparse_format.py"}


def _snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in Path(folder).iterdir()}


def test_save_pretrained_push_to_hub_uploads_the_saved_folder(tmp_path):
    model = build("SparseBertForSequenceClassification")
    uploads = []
    with mock.patch.object(HfApi, "create_repo", return_value=RepoUrl("https://huggingface.co/org/tiny-sparse")) as create, \
            mock.patch.object(HfApi, "upload_folder", side_effect=lambda **kw: uploads.append((kw, _snapshot(kw["folder_path"])))):
        model.save_pretrained(tmp_path / "tiny-sparse", push_to_hub=True, repo_id="org/tiny-sparse", private=True, create_pr=True)
    create.assert_called_once_with("org/tiny-sparse", private=True, exist_ok=True)
    (kwargs, files), = uploads
    assert kwargs["repo_id"] == "org/tiny-sparse" and kwargs["create_pr"] is True
    assert set(files) == EXPECTED
    assert files == _snapshot(tmp_path / "tiny-sparse")


def test_model_push_to_hub_goes_through_sparse_save(tmp_path):
    model = build("SparseBertForSequenceClassification")
    uploads = []

    def fake_upload(self, working_dir, repo_id, *args, **kwargs):
        uploads.append((repo_id, _snapshot(working_dir)))

    repo = RepoUrl("https://huggingface.co/org/tiny-sparse")
    patches = [
        mock.patch.object(type(model), "_upload_modified_files", fake_upload),
        mock.patch.object(HfApi, "create_repo", return_value=repo),
    ]
    if hasattr(hf_utils_hub, "create_repo"):  # transformers 4.x binds the function at import
        patches.append(mock.patch.object(hf_utils_hub, "create_repo", return_value=repo))
    if hasattr(hf_utils_hub, "create_and_tag_model_card"):
        card = mock.MagicMock()
        card.save.side_effect = lambda path: Path(path).write_text("card")
        patches.append(mock.patch.object(hf_utils_hub, "create_and_tag_model_card", return_value=card))
    for p in patches:
        p.start()
    try:
        model.push_to_hub("org/tiny-sparse")
    finally:
        for p in patches:
            p.stop()
    (repo_id, files), = uploads
    assert repo_id == "org/tiny-sparse"
    assert EXPECTED <= set(files)
    local = tmp_path / "local"
    local.mkdir()
    for name, data in files.items():
        (local / name).write_bytes(data)
    loaded = SparseBertForSequenceClassification.from_pretrained(local)
    for key, value in model.state_dict().items():
        assert value.equal(loaded.state_dict()[key]), key
