"""Latency of a SparseBert model across runtimes, as ratios to dense-shape fp32 PyTorch in the same run.

Runtimes (names used in tables):
    torch-fp32, torch-bf16           the SparseBert model in PyTorch (masks applied, dense kernels)
    ort-fp32, ort-int8               ONNX Runtime on `model.onnx` / dynamic INT8 `model_quantized.onnx`
    ov-fp32, ov-int8                 OpenVINO CPU on the fp32 IR (f32 precision) / the NNCF INT8 IR
    ov-int8-sparse                   the INT8 IR with `CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE` set; the
                                     FullyConnected kernels it actually ran are recorded per row
    ov-int8-static                   the INT8 IR compiled for the timed (batch, seq) only (`compile_model(static_shape=)`)
    ov-int8-static-bf16              the same with inference precision bf16: the layers left in floating point
                                     (LayerNorm, softmax, GELU...) run in bf16 where the CPU has native bf16
                                     (AVX512_BF16, AMX); the precisions the layers ran in are recorded per row
Each measurement is the median (and p90) of `runs` timed calls after `warmup` untimed ones; `benchmark` times the
runtimes of a batch size in turns (`timed_interleaved`), its baseline among them.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

PathLike = Union[str, Path]
RUNTIMES = ("torch-fp32", "torch-bf16", "ort-fp32", "ort-int8", "ov-fp32", "ov-int8", "ov-int8-sparse", "ov-int8-static",
            "ov-int8-static-bf16")
SPARSE_RATE = 0.5  # ask for the sparse kernel wherever an int8 weight is at least half zeros


def timed_interleaved(
    fns: dict[str, Callable[[], object]], runs: int = 20, rounds: int = 5, warmup: int = 3, settle_s: float = 0.5,
) -> dict[str, dict]:
    """Median / p90 / min wall time in milliseconds of several functions measured in turns: after `warmup` untimed
    calls each, `rounds` rounds, each timing every function `runs / rounds` times (rounded up) in a row, so that a
    slow or fast spell of the machine falls on all of them alike and their ratios are less noisy than with one
    function measured after the other. Each turn starts with a pause of
    `settle_s` seconds and one untimed call: runtimes keep their worker threads spinning for a while after a call
    (OpenMP in PyTorch and ONNX Runtime, TBB in OpenVINO), and the next runtime would otherwise share the cores with
    them. Statistics are over all of a function's timed calls; the keys of `fns` are kept, in their order."""
    if runs < 1 or rounds < 1:
        raise ValueError(f"runs and rounds must be at least 1, got runs={runs}, rounds={rounds}")
    per_round = -(-runs // rounds)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(settle_s)
            fn()
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: _stats(sorted(samples)) for name, samples in times.items()}


def _stats(times: list[float]) -> dict:
    return {
        "median_ms": round(statistics.median(times), 3),
        "p90_ms": round(times[min(len(times) - 1, int(0.9 * len(times)))], 3),
        "min_ms": round(times[0], 3),
        "runs": len(times),
    }


def make_inputs(batch: int, seq: int, vocab_size: int, seed: int = 0, num_choices: Optional[int] = None) -> dict[str, np.ndarray]:
    """Random token ids, full attention; shape (batch, seq), or (batch, num_choices, seq) for multiple choice."""
    rng = np.random.default_rng(seed)
    shape = (batch, num_choices, seq) if num_choices else (batch, seq)
    ids = rng.integers(1000 if vocab_size > 2000 else 5, vocab_size, size=shape, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def disk_bytes(*paths: PathLike) -> int:
    """Bytes on disk of files (an `.xml` IR counts its `.bin` too)."""
    total = 0
    for path in map(Path, paths):
        total += path.stat().st_size
        if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
            total += path.with_suffix(".bin").stat().st_size
    return total


def _runtime_module(name: str, extra: str):
    import importlib

    from .onnx import ExportError

    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ExportError(f"runtime {name} is not installed here (`pip install hf-sparse[{extra}]`): {err}") from None


class Runners:
    """Builds a callable per runtime for one model folder, exporting what is missing into `work_dir`."""

    def __init__(
        self, model_dir: PathLike, work_dir: PathLike, calibration: str = "wikitext", calibration_samples: int = 64,
        baseline: bool = False,
    ):
        """`baseline=True`: the model is a speed-up's reference and computes every position of its last layer, as
        transformers' BERT does, even where its config enables the [CLS]-only last layer."""
        self.model_dir, self.work_dir, self.baseline = Path(model_dir), Path(work_dir), baseline
        self.calibration, self.calibration_samples = calibration, calibration_samples
        self._model = None

    def model(self):
        """The PyTorch model: a sparse_bert folder's, or a plain BERT folder's (model_type "bert", e.g. the dense model
        a sparse one replaces) as SparseBert with the masks of its zeros, computing every position of the last layer as
        transformers does (the baseline); the exporting runtimes need sparse_bert."""
        if self._model is None:
            import json

            from .onnx import load_for_export
            from .optimum_support import EXPORT_TASKS

            config_file = self.model_dir / "config.json"
            config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
            if config.get("model_type") == "bert":
                import hf_sparse

                architecture = (config.get("architectures") or ["BertModel"])[0]
                if f"Sparse{architecture}" not in EXPORT_TASKS:  # a fixed list: nothing named by the config is imported
                    known = sorted(name.removeprefix("Sparse") for name in EXPORT_TASKS)
                    raise ValueError(f"{config_file}: architecture {architecture!r} is not a BERT head hf-sparse knows: {known}")
                self._model = getattr(hf_sparse, f"Sparse{architecture}").from_dense(self.model_dir).eval().float()
            else:
                self._model = load_for_export(self.model_dir)[0].float()
            if self.baseline or config.get("model_type") == "bert":  # computed as transformers' BERT computes it
                self._model.config.cls_only_last_layer = False
        return self._model

    def _bf16(self):
        if getattr(self, "_bf16_model", None) is None:
            import copy

            import torch

            self._bf16_model = copy.deepcopy(self.model()).to(torch.bfloat16)
        return self._bf16_model

    def onnx_dir(self) -> Path:
        from .onnx import export_onnx

        folder = self.work_dir / "onnx"
        if not folder.exists():
            export_onnx(self.model_dir, folder, quantize="int8")
        return folder

    def openvino_dir(self) -> Path:
        from .openvino import export_openvino

        folder = self.work_dir / "openvino"
        if not folder.exists():
            export_openvino(self.model_dir, folder, calibration=self.calibration, num_calibration_samples=self.calibration_samples)
        return folder

    def artifact(self, runtime: str) -> Optional[Path]:
        """The file a runtime executes (None for PyTorch, whose bytes are the checkpoint's)."""
        if runtime.startswith("ort"):
            return self.onnx_dir() / ("model.onnx" if runtime == "ort-fp32" else "model_quantized.onnx")
        if runtime.startswith("ov"):
            return self.openvino_dir() / ("openvino_model.xml" if runtime == "ov-fp32" else "openvino_model_int8.xml")
        return None

    def runner(self, runtime: str, inputs: dict[str, np.ndarray]) -> tuple[Callable[[], object], dict]:
        """(a zero-argument callable running one batch, extra facts about the row)."""
        if runtime in ("torch-fp32", "torch-bf16"):
            import torch

            dtype = torch.bfloat16 if runtime == "torch-bf16" else torch.float32
            model = self.model() if dtype == torch.float32 else self._bf16()
            feeds = {k: torch.from_numpy(v) for k, v in inputs.items()}

            def run():
                with torch.inference_mode():
                    return model(**feeds)

            return run, {"threads": torch.get_num_threads()}
        if runtime in ("ort-fp32", "ort-int8"):
            onnxruntime = _runtime_module("onnxruntime", "onnx")

            session = onnxruntime.InferenceSession(str(self.artifact(runtime)), providers=["CPUExecutionProvider"])
            names = {i.name for i in session.get_inputs()}
            feeds = {k: v for k, v in inputs.items() if k in names}
            return (lambda: session.run(None, feeds)), {}
        if runtime in RUNTIMES and runtime.startswith("ov-"):
            _runtime_module("openvino", "openvino")
            from .openvino import compile_model, executed_kernels, executed_precisions

            compiled = compile_model(
                self.artifact(runtime), precision="bf16" if runtime.endswith("-bf16") else "f32",
                sparse_rate=SPARSE_RATE if runtime == "ov-int8-sparse" else None,
                static_shape=inputs["input_ids"].shape if runtime.startswith("ov-int8-static") else None,
            )
            facts = {"kernels": executed_kernels(compiled, inputs), "precisions": executed_precisions(compiled)}
            request = compiled.create_infer_request()
            return (lambda: request.infer(inputs)), facts
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")


def benchmark(
    model_dir: PathLike,
    batch_sizes: Sequence[int] = (1,),
    seq_len: int = 128,
    runtimes: Iterable[str] = RUNTIMES,
    runs: int = 20,
    warmup: int = 3,
    work_dir: Optional[PathLike] = None,
    reference_dir: Optional[PathLike] = None,
    rounds: int = 5,
    settle_s: float = 0.5,
    progress: Optional[Callable[[dict], None]] = None,
) -> list[dict]:
    """Latency rows for one model; at each batch size every runtime is timed in turns (`timed_interleaved`: `rounds`
    rounds of `runs / rounds` calls each), so that a slow spell of the machine falls on all of them alike.

    `speedup_vs_baseline` is the baseline's median over the row's. The baseline is torch-fp32 of `reference_dir`
    (e.g. the dense model a sparse one is compared with; sparse_bert or plain BERT, computing every position of its
    last layer as transformers does), timed in the same turns as the rows, when given; otherwise this model's own
    torch-fp32 row, when `runtimes` has it (no speed-up otherwise). Rows record `baseline_ms`.
    """
    runtimes = list(runtimes)
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise ValueError(f"unknown runtimes {unknown}; known: {', '.join(RUNTIMES)}")
    if reference_dir is not None and not Path(reference_dir).is_dir():
        raise FileNotFoundError(f"reference model folder {reference_dir} does not exist")
    reference_key = "reference torch-fp32"  # not a runtime name, so it cannot clash with a row
    with tempfile.TemporaryDirectory(prefix="hf-sparse-bench-") as tmp:
        runners = Runners(model_dir, work_dir or Path(tmp) / "model")
        reference = Runners(reference_dir, Path(tmp) / "reference", baseline=True) if reference_dir is not None else None
        vocab = runners.model().config.vocab_size
        num_choices = 2 if type(runners.model()).__name__.endswith("MultipleChoice") else None
        rows = []
        for batch in batch_sizes:
            inputs = make_inputs(batch, seq_len, vocab, num_choices=num_choices)
            fns, extras = {}, {}
            if reference is not None:
                fns[reference_key], _ = reference.runner("torch-fp32", inputs)
            for runtime in runtimes:
                fns[runtime], extras[runtime] = runners.runner(runtime, inputs)
            stats = timed_interleaved(fns, runs, min(rounds, runs), warmup, settle_s)  # at least one call per turn
            base_key = reference_key if reference is not None else "torch-fp32"
            base = stats[base_key]["median_ms"] if base_key in stats else None
            for runtime in runtimes:
                row = {"runtime": runtime, "batch": batch, "seq": seq_len, **stats[runtime], **extras[runtime]}
                artifact = runners.artifact(runtime)
                row["bytes"] = disk_bytes(artifact) if artifact else disk_bytes(*Path(model_dir).glob("model*.safetensors"))
                if base is not None:
                    row["baseline_ms"] = base
                    row["speedup_vs_baseline"] = round(base / row["median_ms"], 3)
                rows.append(row)
                if progress:
                    progress(row)
            del fns  # the sessions of this batch size go before the next one's are built
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| runtime | batch | seq | median ms | p90 ms | speed-up | MB on disk | kernels |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kernels = ", ".join(f"{k}×{v}" for k, v in sorted(r.get("kernels", {}).items()))
        lines.append(
            f"| {r['runtime']} | {r['batch']} | {r['seq']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | "
            f"{r.get('speedup_vs_baseline', float('nan')):.2f}x | {r['bytes'] / 1e6:.1f} | {kernels} |"
        )
    return "\n".join(lines)
