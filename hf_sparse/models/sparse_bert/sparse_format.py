"""The compressed on-disk format of SparseBert weights (safetensors, format version 1).

A masked weight `W` (with boolean mask `M`, same shape) is stored as two tensors:

* `<name>.values`:  the entries of `W` where `M` is true, in row-major order (dtype of `W`);
* `<name>.bitmask`: `M` flattened row-major and packed 8 per byte, least significant bit first (uint8).

A 90%-sparse fp32 layer thus costs 10% of its dense bytes plus 1 bit per weight. Every other
tensor is stored as is. The safetensors header metadata makes the file self-describing:

* `hf_sparse_format`: `"bitmask"`;
* `hf_sparse_format_version`: `"1"`;
* `hf_sparse_shapes`: JSON object mapping each compressed `<name>` to its dense shape.

Files may also hold a mask uncompressed as `<name>_mask` next to `<name>` ("dense" encoding);
decoding accepts both and checks that the mask agrees with the zeros of the weight.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
import math
import os
from typing import Iterable, Mapping

import numpy as np
import torch

_native_bitmask = None
if __name__.startswith("hf_sparse."):  # the optional C decoder; `trust_remote_code` copies of this file never import hf_sparse
    try:
        from hf_sparse import _bitmask as _native_bitmask
    except ImportError:  # built without a C compiler
        pass

FORMAT_NAME = "bitmask"
FORMAT_VERSION = 1
META_FORMAT = "hf_sparse_format"
META_VERSION = "hf_sparse_format_version"
META_SHAPES = "hf_sparse_shapes"
VALUES_SUFFIX = ".values"
BITMASK_SUFFIX = ".bitmask"
MASK_SUFFIX = "_mask"


class SparseFormatError(ValueError):
    """A sparse checkpoint is malformed: names the file and the tensor at fault."""


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Packs a boolean tensor into uint8, 8 entries per byte, least significant bit first."""
    flat = mask.detach().reshape(-1).to(device="cpu", dtype=torch.bool).numpy()
    return torch.from_numpy(np.packbits(flat, bitorder="little"))


def unpack_mask(packed: torch.Tensor, shape: Iterable[int]) -> torch.Tensor:
    """Inverse of `pack_mask`: a boolean tensor of `shape`."""
    shape = tuple(int(s) for s in shape)
    count = math.prod(shape)
    bits = np.unpackbits(packed.numpy(), count=count, bitorder="little")
    return torch.from_numpy(bits).view(torch.bool).reshape(shape)


def encode_state_dict(
    state_dict: Mapping[str, torch.Tensor], masked_weights: Iterable[str]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Compresses the masked weights of a state dict.

    Args:
        state_dict: tensors by name; each name in `masked_weights` must have its mask under `<name>_mask`.
        masked_weights: names of the weights to compress.

    Returns:
        `(tensors, metadata)` ready for `safetensors.torch.save_file`.

    Raises:
        SparseFormatError: a mask is missing, has another shape, or a weight is non-zero where its mask is 0.
    """
    tensors = dict(state_dict)
    shapes = {}
    for name in masked_weights:
        if name not in tensors or name + MASK_SUFFIX not in tensors:
            raise SparseFormatError(f"tensor {name!r}: weight or its mask {name + MASK_SUFFIX!r} is missing")
        weight = tensors.pop(name).detach().cpu()
        mask = tensors.pop(name + MASK_SUFFIX).detach().cpu()
        _check_mask(name, weight, mask, where="model")
        tensors[name + VALUES_SUFFIX] = weight.masked_select(mask.bool()).contiguous()
        tensors[name + BITMASK_SUFFIX] = pack_mask(mask)
        shapes[name] = list(weight.shape)
    metadata = {
        "format": "pt",
        META_FORMAT: FORMAT_NAME,
        META_VERSION: str(FORMAT_VERSION),
        META_SHAPES: json.dumps(shapes, sort_keys=True),
    }
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata


def decode_state_dict(
    tensors: dict[str, torch.Tensor], metadata: Mapping[str, str] | None, source: str
) -> dict[str, torch.Tensor]:
    """Inverse of `encode_state_dict`: dense weights plus `<name>_mask` boolean masks.

    Args:
        tensors: all tensors of the checkpoint (every shard merged).
        metadata: the safetensors header metadata of the checkpoint.
        source: file name used in error messages.

    Raises:
        SparseFormatError: the metadata is missing or of an unknown version, a tensor is missing,
            truncated or of the wrong type, or a mask disagrees with its weight.
    """
    decoded, pending = start_decode_state_dict(tensors, metadata, source)
    pending.wait()
    return decoded


class PendingDecode:
    """Worker threads still writing the dense weights and masks returned by `start_decode_state_dict`.

    The tensors have their final shapes, dtypes and memory from the start; their contents are
    defined only once `wait()` has returned.
    """

    def __init__(self, pool: ThreadPoolExecutor | None, futures: list, names: tuple[str, ...] = ()):
        self._pool, self._futures = pool, futures
        self.names = names  # the keys of the tensors being written

    def wait(self) -> None:
        """Blocks until every tensor is written.

        Raises:
            SparseFormatError: a weight's values disagree with its bitmask (the first such weight in file order).
        """
        try:
            for future in self._futures:
                future.result()
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Drops the weights not started yet and waits for the running ones (their errors are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def start_decode_state_dict(
    tensors: dict[str, torch.Tensor], metadata: Mapping[str, str] | None, source: str
) -> tuple[dict[str, torch.Tensor], PendingDecode]:
    """`decode_state_dict` that returns before the C decoder has filled the dense weights and masks.

    Everything that can be checked without decoding (metadata, tensor names, shapes and dtypes,
    uncompressed masks) is checked before returning; the values-vs-bitmask counts are checked by
    `PendingDecode.wait()`, which must return before any returned tensor is read. Lets a caller
    build its model while the weights are decoded. Without the C decoder, decodes before returning.

    Raises:
        SparseFormatError: as `decode_state_dict`, except for what `PendingDecode.wait()` raises.
    """
    metadata = dict(metadata or {})
    if metadata.get(META_FORMAT) != FORMAT_NAME:
        raise SparseFormatError(
            f"{source}: not an hf-sparse checkpoint (safetensors metadata {META_FORMAT!r} is "
            f"{metadata.get(META_FORMAT)!r}, expected {FORMAT_NAME!r}); convert a dense checkpoint with "
            "`hf-sparse convert` or `SparseBert*.from_dense(...)`"
        )
    version = metadata.get(META_VERSION)
    if version != str(FORMAT_VERSION):
        raise SparseFormatError(
            f"{source}: sparse format version {version!r} is not supported by this version of hf-sparse "
            f"(it reads version {FORMAT_VERSION}); upgrade hf-sparse"
        )
    try:
        shapes = json.loads(metadata.get(META_SHAPES, "{}"))
        shapes = {str(k): [int(d) for d in v] for k, v in shapes.items()}
    except (TypeError, ValueError) as err:
        raise SparseFormatError(f"{source}: metadata {META_SHAPES!r} is not a JSON map of shapes ({err})") from None

    tensors = dict(tensors)
    compressed = {}
    for name, shape in shapes.items():
        values, packed = tensors.pop(name + VALUES_SUFFIX, None), tensors.pop(name + BITMASK_SUFFIX, None)
        if values is None or packed is None:
            missing = name + (VALUES_SUFFIX if values is None else BITMASK_SUFFIX)
            raise SparseFormatError(f"{source}: tensor {missing!r} is missing (listed in {META_SHAPES!r})")
        count = math.prod(shape)
        if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != (count + 7) // 8:
            raise SparseFormatError(
                f"{source}: tensor {name + BITMASK_SUFFIX!r} has dtype {packed.dtype} and shape "
                f"{list(packed.shape)}; expected uint8 of shape [{(count + 7) // 8}] for a weight of shape {shape}"
            )
        if values.dim() != 1 or not values.is_floating_point():
            raise SparseFormatError(
                f"{source}: tensor {name + VALUES_SUFFIX!r} has dtype {values.dtype} and shape "
                f"{list(values.shape)}; expected the kept entries as a 1-D floating-point tensor"
            )
        compressed[name] = (values, packed)
    stray = sorted(k for k in tensors if k.endswith((VALUES_SUFFIX, BITMASK_SUFFIX)))
    if stray:
        raise SparseFormatError(f"{source}: tensor {stray[0]!r} is not listed in metadata {META_SHAPES!r}")
    for key in sorted(k for k in tensors if k.endswith(MASK_SUFFIX)):  # masks stored uncompressed
        name = key[: -len(MASK_SUFFIX)]
        if name not in tensors:
            raise SparseFormatError(f"{source}: mask {key!r} has no weight {name!r}")
        mask = tensors[key]
        if mask.dtype not in (torch.bool, torch.uint8):
            raise SparseFormatError(f"{source}: mask {key!r} has dtype {mask.dtype}; expected bool or uint8")
        if mask.dtype == torch.uint8 and bool((mask > 1).any()):
            raise SparseFormatError(f"{source}: mask {key!r} holds values other than 0 and 1")
        tensors[key] = mask.bool()
        _check_mask(name, tensors[name], tensors[key], where=source)

    def corrupted(name: str, values: torch.Tensor, kept: int) -> SparseFormatError:
        return SparseFormatError(
            f"{source}: tensor {name + VALUES_SUFFIX!r} has {values.numel()} {values.dtype} entries "
            f"(shape {list(values.shape)}) but its bitmask keeps {kept}; the file is corrupted"
        )

    out: dict[str, torch.Tensor] = {}
    native = {name: _native_decoder(values) for name, (values, _) in compressed.items()}
    jobs = []
    for name, (values, packed) in compressed.items():
        if native[name] is None:
            continue
        shape = shapes[name]
        # new, uninitialised memory: the C decoder writes every byte of it, in one pass
        mask = torch.empty(shape, dtype=torch.bool)
        if values.numel() == math.prod(shape):  # nothing pruned if the file is sound
            dense = _values_as_weight(values, shape)
        else:
            dense = torch.empty(shape, dtype=values.dtype)
        out[name], out[name + MASK_SUFFIX] = dense, mask
        jobs.append((name, values, packed, dense, mask))

    def decode_native(name, values, packed, dense, mask) -> None:
        if values.numel() == mask.numel():
            kept = native[name].unpack(packed.contiguous().numpy(), mask.numpy())
        else:
            kept = native[name].decode(packed.contiguous().numpy(), _raw(values), _raw(dense), mask.numpy(), values.element_size())
        if kept != values.numel():
            raise corrupted(name, values, kept)

    def decode_numpy(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        values, packed = compressed[name]
        mask = unpack_mask(packed, shapes[name])
        kept = int(np.count_nonzero(mask.numpy()))
        if kept != values.numel():
            raise corrupted(name, values, kept)
        if kept == mask.numel():  # nothing pruned
            return _values_as_weight(values, mask.shape), mask
        dense = torch.zeros(mask.shape, dtype=values.dtype)
        dense.masked_scatter_(mask, values)
        return dense, mask

    # numpy, torch and the C decoder release the GIL: layers decode in parallel threads
    workers = max(1, min(len(compressed), os.cpu_count() or 1, 8))
    slow = [name for name in compressed if native[name] is None]
    if slow:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            decoded = list(pool.map(decode_numpy, slow))  # re-raises the first failing tensor's error, in file order
        for name, (dense, mask) in zip(slow, decoded):
            out[name], out[name + MASK_SUFFIX] = dense, mask
    out = {name: out[name] for key in compressed for name in (key, key + MASK_SUFFIX)}  # file order
    out.update(tensors)
    if not jobs:
        return out, PendingDecode(None, [])
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hf_sparse_decode")
    names = tuple(key for job in jobs for key in (job[0], job[0] + MASK_SUFFIX))
    return out, PendingDecode(pool, [pool.submit(decode_native, *job) for job in jobs], names)


def _values_as_weight(values: torch.Tensor, shape) -> torch.Tensor:
    """The values of a layer with nothing pruned, as its weight (copied if misaligned in the file)."""
    dense = values.reshape(shape)
    return dense if values.data_ptr() % ALIGNMENT == 0 else dense.clone()


def _native_decoder(values: torch.Tensor):
    """The C decoder when it is built, enabled (`HF_SPARSE_NATIVE_DECODE` is not `0`) and `values` suits it."""
    if _native_bitmask is None or os.environ.get("HF_SPARSE_NATIVE_DECODE", "1") == "0":
        return None
    if values.dim() != 1 or not values.is_floating_point() or values.element_size() not in (2, 4, 8):
        return None
    return _native_bitmask


_RAW_DTYPES = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _raw(tensor: torch.Tensor) -> np.ndarray:
    """A contiguous tensor's memory as an integer numpy array of the same item size (bf16 has no numpy dtype)."""
    return tensor.contiguous().view(_RAW_DTYPES[tensor.element_size()]).numpy()


def _check_mask(name: str, weight: torch.Tensor, mask: torch.Tensor, where: str) -> None:
    if tuple(mask.shape) != tuple(weight.shape):
        raise SparseFormatError(
            f"{where}: mask {name + MASK_SUFFIX!r} has shape {list(mask.shape)}, weight {name!r} has {list(weight.shape)}"
        )
    stray = int(weight.masked_select(~mask.bool()).count_nonzero())
    if stray:
        raise SparseFormatError(
            f"{where}: weight {name!r} has {stray} non-zero entries where its mask is 0 "
            "(pruned weights must be exactly zero)"
        )


_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
ALIGNMENT = 64


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Writes a standard safetensors file whose data starts on a 64-byte boundary.

    Uncompressed tensors whose byte size is a multiple of 64 come first (every BERT weight of hidden
    size 384, 768, 1024..., the word embeddings included), so they stay 64-byte aligned when
    memory-mapped: they load without a copy and compute exactly as in memory. Other tensors follow
    (the reader copies those it finds misaligned), compressed ones last.
    """
    def nbytes(name: str) -> int:
        return tensors[name].numel() * tensors[name].element_size()

    # multiples of 64 bytes first (they keep every offset aligned), then the rest, then compressed tensors
    order = sorted(tensors, key=lambda k: (k.endswith((VALUES_SUFFIX, BITMASK_SUFFIX)), nbytes(k) % ALIGNMENT != 0, k))
    header: dict = {"__metadata__": dict(metadata)}
    offset = 0
    for name in order:
        tensor = tensors[name]
        if tensor.dtype not in _DTYPES:
            raise SparseFormatError(f"tensor {name!r}: dtype {tensor.dtype} cannot be stored in safetensors")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-(8 + len(encoded)) % ALIGNMENT)
    with open(path, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for name in order:
            tensor = tensors[name].detach().cpu().contiguous()
            if tensor.numel():
                handle.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Reads every tensor and the header metadata of one safetensors file, with errors that name it.

    Tensors are memory-mapped (copy-on-write) where 64-byte aligned, copied otherwise: BLAS rounding
    depends on alignment, and a copy makes a reloaded model compute exactly like the saved one.
    Compressed values and bitmasks are never copied: decoding reads them into new dense tensors.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {}
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                # compressed tensors are only read while decoding into new dense tensors: no copy needed
                compressed = key.endswith((VALUES_SUFFIX, BITMASK_SUFFIX))
                tensors[key] = tensor if compressed or tensor.data_ptr() % ALIGNMENT == 0 else tensor.clone()
    except Exception as err:  # safetensors raises its own error types for every malformed file
        raise SparseFormatError(f"{path}: cannot read the safetensors file ({err}); it is truncated or corrupted") from None
    return tensors, metadata


def load_sparse_checkpoint(files: Iterable[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """Reads and decodes one or more safetensors shards of a sparse checkpoint."""
    decoded, pending = start_loading_sparse_checkpoint(files)
    pending.wait()
    return decoded


def start_loading_sparse_checkpoint(files: Iterable[str | os.PathLike]) -> tuple[dict[str, torch.Tensor], PendingDecode]:
    """`load_sparse_checkpoint` that returns while the weights are decoded (see `start_decode_state_dict`)."""
    files = [str(f) for f in files]
    tensors: dict[str, torch.Tensor] = {}
    metadata = None
    for path in files:
        shard, shard_meta = read_safetensors(path)
        if metadata is None:
            metadata = shard_meta
        elif shard_meta.get(META_SHAPES) != metadata.get(META_SHAPES):
            raise SparseFormatError(f"{path}: metadata {META_SHAPES!r} differs from the first shard {files[0]}")
        tensors.update(shard)
    return start_decode_state_dict(tensors, metadata, source=files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} shards)")
