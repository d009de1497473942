"""Bad checkpoints give specific errors naming file and tensor; failed saves leave nothing behind."""

import importlib.util
import json
import threading
from unittest import mock

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

from hf_sparse import SparseBertForMaskedLM, SparseBertModel, SparseFormatError
from hf_sparse.models.sparse_bert import modeling_sparse_bert
from hf_sparse.models.sparse_bert import sparse_format
from hf_sparse.models.sparse_bert.sparse_format import decode_state_dict, encode_state_dict, pack_mask, unpack_mask

from conftest import build

Q = "bert.encoder.layer.0.attention.self.query.weight"


@pytest.fixture
def ckpt(tmp_path):
    folder = tmp_path / "ckpt"
    build("SparseBertForMaskedLM").save_pretrained(folder)
    return folder


def rewrite(folder, edit_tensors=None, edit_meta=None):
    path = folder / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    if edit_tensors:
        edit_tensors(tensors, meta)
    if edit_meta:
        edit_meta(meta)
    save_file(tensors, str(path), metadata=meta)
    return path


def test_pack_unpack_round_trip_odd_length():
    mask = torch.rand(7, 13) > 0.5
    packed = pack_mask(mask)
    assert packed.numel() == (7 * 13 + 7) // 8
    assert torch.equal(unpack_mask(packed, (7, 13)), mask)


def test_missing_mask(ckpt):
    def drop(t, meta):
        shapes = json.loads(meta["hf_sparse_shapes"])
        shape = shapes.pop(Q)
        meta["hf_sparse_shapes"] = json.dumps(shapes)
        t.pop(Q + ".bitmask")
        t[Q] = torch.zeros(shape)
        t.pop(Q + ".values")

    path = rewrite(ckpt, drop)
    with pytest.raises(SparseFormatError, match=r"model\.safetensors: missing mask for 'encoder\.layer\.0\.attention\.self\.query\.weight'"):
        SparseBertForMaskedLM.from_pretrained(ckpt)
    assert str(path) in str(pytest.raises(SparseFormatError, SparseBertModel.from_pretrained, ckpt).value)


def test_missing_values_tensor(ckpt):
    rewrite(ckpt, lambda t, m: t.pop(Q + ".values"))
    with pytest.raises(SparseFormatError, match=r"model\.safetensors: tensor '.*query\.weight\.values' is missing"):
        SparseBertForMaskedLM.from_pretrained(ckpt)


def test_extra_mask(ckpt):
    def extra(t, meta):
        t["bert.pooler.dense.weight_mask"] = torch.ones(36, 36, dtype=torch.bool)
        t["bert.pooler.dense.weight"] = torch.ones(36, 36)

    rewrite(ckpt, extra)
    with pytest.raises(SparseFormatError, match=r"extra mask 'bert\.pooler\.dense\.weight_mask'"):
        SparseBertForMaskedLM.from_pretrained(ckpt)


def test_mask_that_disagrees_with_zeros(ckpt):
    def dense_encoding(t, meta):
        shapes = json.loads(meta["hf_sparse_shapes"])
        shape = shapes.pop(Q)
        meta["hf_sparse_shapes"] = json.dumps(shapes)
        mask = unpack_mask(t.pop(Q + ".bitmask"), shape)
        t.pop(Q + ".values")
        t[Q] = torch.ones(shape)  # non-zero where the mask is 0
        t[Q + "_mask"] = mask

    rewrite(ckpt, dense_encoding)
    with pytest.raises(SparseFormatError, match=r"weight '.*query\.weight' has \d+ non-zero entries where its mask is 0"):
        SparseBertForMaskedLM.from_pretrained(ckpt)


def test_dense_encoding_that_agrees_loads(ckpt):
    original = SparseBertForMaskedLM.from_pretrained(ckpt)

    def dense_encoding(t, meta):
        shapes = json.loads(meta["hf_sparse_shapes"])
        shape = shapes.pop(Q)
        meta["hf_sparse_shapes"] = json.dumps(shapes)
        mask = unpack_mask(t.pop(Q + ".bitmask"), shape)
        dense = torch.zeros(shape)
        dense[mask] = t.pop(Q + ".values")
        t[Q], t[Q + "_mask"] = dense, mask.to(torch.uint8)

    rewrite(ckpt, dense_encoding)
    loaded = SparseBertForMaskedLM.from_pretrained(ckpt)
    for key, value in original.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_shape_mismatch_with_config(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["intermediate_size"] = 40
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(SparseFormatError, match=r"intermediate\.dense\.weight' has shape \[37, 36\], the config expects \[40, 36\]"):
        SparseBertForMaskedLM.from_pretrained(ckpt)


def test_native_decoder_is_built():
    # optional for users (installs without a C compiler), required here: the tests below must exercise it
    assert sparse_format._native_bitmask is not None, "hf_sparse._bitmask was not built by `pip install`"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (64, 96), (0,)])
@pytest.mark.parametrize("pruned", [0.0, 0.5, 0.9, 1.0])
def test_native_decoder_matches_the_torch_decoder(monkeypatch, dtype, shape, pruned):
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(shape, generator=gen) >= pruned
    mask.view(-1)[:1] = pruned < 1.0  # a kept or pruned first entry (bit 0 of byte 0) either way
    weight = (torch.randn(shape, generator=gen).to(dtype) + 1e-3) * mask
    tensors, meta = encode_state_dict({"w": weight, "w_mask": mask}, ["w"])
    decoded = {}
    for native in ("1", "0"):
        monkeypatch.setenv("HF_SPARSE_NATIVE_DECODE", native)
        decoded[native] = decode_state_dict(tensors, meta, "file")
    for out in decoded.values():
        assert out["w"].dtype == dtype and out["w_mask"].dtype == torch.bool
        assert torch.equal(out["w"], weight) and torch.equal(out["w_mask"], mask)
        assert not torch.signbit(out["w"][~mask]).any()  # pruned entries are +0.0
    assert torch.equal(decoded["1"]["w"].view(-1).view(torch.uint8), decoded["0"]["w"].view(-1).view(torch.uint8))


def test_native_decoder_reads_unaligned_values_from_a_file(tmp_path):
    # an odd-length bitmask before the values leaves them unaligned in the memory-mapped file
    gen = torch.Generator().manual_seed(1)
    state, names = {}, []
    for i, (shape, dtype) in enumerate([((7,), torch.float64), ((9, 9), torch.float32), ((3, 5), torch.bfloat16)]):
        mask = torch.rand(shape, generator=gen) > 0.4
        state[f"w{i}"], state[f"w{i}_mask"] = torch.randn(shape, generator=gen).to(dtype) * mask, mask
        names.append(f"w{i}")
    tensors, meta = encode_state_dict(state, names)
    sparse_format.write_safetensors(tensors, tmp_path / "m.safetensors", meta)
    read, read_meta = sparse_format.read_safetensors(tmp_path / "m.safetensors")
    assert any(read[n + ".values"].data_ptr() % read[n + ".values"].element_size() for n in names)
    decoded = decode_state_dict(read, read_meta, "m.safetensors")
    assert all(torch.equal(decoded[k], v) for k, v in state.items())


def test_native_decoder_takes_a_strided_bitmask():
    mask = torch.rand(64, 8) > 0.5
    tensors, meta = encode_state_dict({"w": torch.randn(64, 8) * mask, "w_mask": mask}, ["w"])
    tensors["w.bitmask"] = torch.stack([tensors["w.bitmask"], tensors["w.bitmask"]], 1)[:, 0]  # same bytes, stride 2
    assert not tensors["w.bitmask"].is_contiguous()
    assert torch.equal(decode_state_dict(tensors, meta, "file")["w_mask"], mask)


class _GatedDecoder:
    """The C decoder, held back until `gate` is set: loading must not keep what it read before that."""

    def __init__(self, native, gate: threading.Event):
        self.native, self.gate = native, gate

    def decode(self, *args):
        assert self.gate.wait(30)
        return self.native.decode(*args)

    def unpack(self, *args):
        assert self.gate.wait(30)
        return self.native.unpack(*args)


@pytest.mark.parametrize("dtype", [None, torch.float64, torch.bfloat16])
def test_weights_decoded_after_transformers_loaded_them(ckpt, monkeypatch, dtype):
    # the worst schedule: transformers builds the model, takes (or casts) every tensor, and only then is anything decoded
    reference = sparse_format.load_sparse_checkpoint([ckpt / "model.safetensors"])
    gate = threading.Event()
    monkeypatch.setattr(sparse_format, "_native_bitmask", _GatedDecoder(sparse_format._native_bitmask, gate))
    load = SparseBertForMaskedLM._load_decoded.__func__

    def load_then_open_gate(cls, *args):
        try:
            return load(cls, *args)
        finally:
            gate.set()

    monkeypatch.setattr(SparseBertForMaskedLM, "_load_decoded", classmethod(load_then_open_gate))
    model = SparseBertForMaskedLM.from_pretrained(ckpt, **({} if dtype is None else {"dtype": dtype}))
    assert gate.is_set()
    state = model.state_dict()
    masked = [k for k in reference if k.endswith("_mask")]
    assert len(masked) == 12
    for key in masked + [k[: -len("_mask")] for k in masked]:
        assert state[key].dtype == (reference[key].dtype if dtype is None or key.endswith("_mask") else dtype)
        assert torch.equal(state[key], reference[key].to(state[key].dtype)), key


def test_failed_load_stops_the_decoding_threads(ckpt):
    with pytest.raises(ValueError, match="sparse_bert config"):
        SparseBertForMaskedLM.from_pretrained(ckpt, config=transformers.BertConfig())  # fails once decoding has started
    assert not [t for t in threading.enumerate() if t.name.startswith("hf_sparse_decode")]


def test_device_map_loads_decoded_weights(ckpt):
    # under device_map transformers moves weights as it loads them: they are decoded first
    pytest.importorskip("accelerate")
    reference = SparseBertForMaskedLM.from_pretrained(ckpt)
    model = SparseBertForMaskedLM.from_pretrained(ckpt, device_map="cpu")
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), model.state_dict().values()))


def test_remote_code_copy_does_not_import_hf_sparse():
    spec = importlib.util.spec_from_file_location("transformers_modules.repo.sparse_format", sparse_format.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert copy._native_bitmask is None  # the numpy/torch decoder, whatever is installed


def test_bitmask_of_wrong_size(ckpt):
    rewrite(ckpt, lambda t, m: t.__setitem__(Q + ".bitmask", t[Q + ".bitmask"][:-1].clone()))
    with pytest.raises(SparseFormatError, match=r"tensor '.*query\.weight\.bitmask' has dtype torch.uint8 and shape \[\d+\]; expected uint8 of shape"):
        SparseBertForMaskedLM.from_pretrained(ckpt)


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("change", [-3, 2])
def test_values_count_disagrees_with_bitmask(ckpt, monkeypatch, native, change):
    monkeypatch.setenv("HF_SPARSE_NATIVE_DECODE", native)
    values = lambda v: v[:change].clone() if change < 0 else torch.cat([v, torch.ones(change)])  # noqa: E731
    rewrite(ckpt, lambda t, m: t.__setitem__(Q + ".values", values(t[Q + ".values"])))
    with pytest.raises(SparseFormatError, match=r"'.*query\.weight\.values' has \d+ torch.float32 entries .* but its bitmask keeps \d+; the file is corrupted"):
        SparseBertForMaskedLM.from_pretrained(ckpt)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file(ckpt, keep):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SparseFormatError, match=rf"{path}: cannot read the safetensors file .* truncated or corrupted"):
        SparseBertForMaskedLM.from_pretrained(ckpt)


def test_garbage_header(ckpt):
    path = ckpt / "model.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(SparseFormatError, match="truncated or corrupted"):
        SparseBertForMaskedLM.from_pretrained(ckpt)


def test_unknown_format_version_in_file(ckpt):
    rewrite(ckpt, edit_meta=lambda m: m.__setitem__("hf_sparse_format_version", "7"))
    with pytest.raises(SparseFormatError, match=r"model\.safetensors: sparse format version '7' is not supported .* upgrade hf-sparse"):
        SparseBertForMaskedLM.from_pretrained(ckpt)


def test_unknown_format_version_in_config(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["sparse_format_version"] = 2
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="sparse_format_version 2 is not supported"):
        SparseBertForMaskedLM.from_pretrained(ckpt)


def test_unknown_pattern_in_config(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["sparsity_pattern"] = "diagonal"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown sparsity_pattern 'diagonal'"):
        SparseBertForMaskedLM.from_pretrained(ckpt)


def test_dense_checkpoint_points_to_from_dense(tmp_path):
    dense = build("SparseBertForMaskedLM").to_dense()
    dense.save_pretrained(tmp_path)
    with pytest.raises(SparseFormatError, match=r"model\.safetensors: not an hf-sparse checkpoint .*hf-sparse convert.*from_dense"):
        SparseBertForMaskedLM.from_pretrained(tmp_path)


def test_missing_weights_file(tmp_path):
    build("SparseBertModel").config.save_pretrained(tmp_path)
    with pytest.raises(OSError, match="found neither model.safetensors nor model.safetensors.index.json"):
        SparseBertModel.from_pretrained(tmp_path)


def test_pickle_is_refused(ckpt):
    with pytest.raises(ValueError, match="safetensors only"):
        SparseBertModel.from_pretrained(ckpt, use_safetensors=False)
    with pytest.raises(ValueError, match="safetensors only"):
        build("SparseBertModel").save_pretrained(ckpt, safe_serialization=False)


def test_broken_invariant_refuses_to_save_and_writes_nothing(tmp_path):
    model = build("SparseBertForMaskedLM")
    with torch.no_grad():
        module = model.bert.encoder.layer[1].output.dense
        module.weight[~module.weight_mask] = 1.0
    target = tmp_path / "out"
    with pytest.raises(SparseFormatError, match=r"weight 'bert\.encoder\.layer\.1\.output\.dense\.weight' has \d+ non-zero entries where its mask is 0"):
        model.save_pretrained(target)
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_write_leaves_previous_checkpoint_intact(ckpt):
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    other = build("SparseBertForMaskedLM", seed=1)
    with mock.patch.object(modeling_sparse_bert, "_write_shards", side_effect=OSError("disk full")):
        with pytest.raises(OSError, match="disk full"):
            other.save_pretrained(ckpt)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert [p.name for p in ckpt.parent.iterdir()] == ["ckpt"], "no temporary folder left behind"
