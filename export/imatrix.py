"""The importance matrix: the mean squared activation of every input column of every weight
matrix on calibration text, which llama.cpp's quantizer uses to spend precision where the
activations are large.

It is kept as llama.cpp's tools/imatrix keeps it: per GGUF tensor the sums over tokens of x_j^2
(`<name>.in_sum2`, [matrices, columns]) and the token counts (`<name>.counts`, [matrices, 1]), in
a GGUF file with general.type = imatrix, imatrix.datasets, imatrix.chunk_count and
imatrix.chunk_size, so that `llama-quantize --imatrix` reads our file and we read its files. As
there, only the matrices of the blocks (blk.*) are measured, not the output head. The quantizer
gets the per-column means (sum / count) through llama-cpp-python's
llama_model_quantize_params.imatrix."""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import gguf
import numpy as np

from distill.core.errors import UserError
from distill.core.io import atomic_path
from distill.core.progress import progress_bar

from .gguf_writer import ARCHES
from .source import ModelFacts

# Padded tokens per forward pass. Small batches keep the pass near one copy of the weights: the
# activations glibc keeps on its heap between batches grow with the batch (SmolLM2-135M, 200
# traces, bench/bench_imatrix_memory.py: 1,711 MiB at 2,048 tokens, 1,138 at 512, against 911 for
# the loaded model alone) while the time hardly does (83 s and 86 s); 512 is also llama.cpp's
# own imatrix chunk.
BATCH_TOKENS = 512
KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"


@dataclass
class Imatrix:
    sums: dict[str, np.ndarray]    # GGUF tensor name -> [matrices, columns] sums of squares
    counts: dict[str, np.ndarray]  # GGUF tensor name -> [matrices] tokens seen
    datasets: list[str]
    chunk_count: int
    chunk_size: int
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time: what the pass costs on a machine shared with others
    device: str = ""

    def means(self) -> dict[str, np.ndarray]:
        """What llama-quantize hands the quantizer: sum / count per matrix, flattened; a matrix
        that saw no token gets ones (no preference), as llama-quantize does."""
        out = {}
        for name, sums in self.sums.items():
            counts = self.counts[name].reshape(-1, 1).astype(np.float64)
            values = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)
            out[name] = np.ascontiguousarray(values.reshape(-1), dtype=np.float32)
        return out


def linear_layers(model, facts: ModelFacts) -> dict[str, str]:
    """Module name -> GGUF tensor name of every linear layer inside the blocks, mapped with the
    name map the GGUF writer uses."""
    import torch

    name_map = gguf.get_tensor_name_map(ARCHES[facts.arch], facts.layers)
    found = {}
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            name = name_map.get_name(f"{module_name}.weight", try_suffixes=(".weight",))
            if name is not None and name.startswith("blk."):
                found[module_name] = name
    if not found:
        raise UserError(f"imatrix: no linear layer of the {facts.arch} blocks maps to a GGUF tensor")
    return found


def _batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest first, so that little of each padded batch is padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[current[0]] > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


def compute_imatrix(folder: Path, texts: list[np.ndarray], facts: ModelFacts, dataset: str,
                    threads: Optional[int] = None, trust_remote_code: bool = False,
                    batch_tokens: int = BATCH_TOKENS) -> Imatrix:
    """Run the source model over `texts` (token id arrays) in padded batches with hooks on the
    inputs of every block's linear layers. One copy of the weights (fp32 on CPU, bf16 on a GPU)
    plus one batch of activations is the peak. Right padding needs no attention mask: causal
    attention keeps a padded position from reaching the real ones, and the hooks skip it."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if not texts:
        raise UserError("imatrix: no calibration texts")
    use_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if use_gpu else torch.float32
    started, cpu_started = time.time(), time.process_time()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own progress bar says what is happening
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     **({"device_map": "cuda"} if use_gpu else {})).eval()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    layers = linear_layers(model, facts)
    sums = {name: None for name in layers.values()}
    counts = {name: 0 for name in layers.values()}
    state: dict = {}

    def hook(module, args, name):
        x = args[0]
        if state.get("input") is not x:  # q, k and v (and gate and up) share one input: square it once
            flat = x.reshape(-1, x.shape[-1]).float()
            # A matrix-vector product with the 0/1 mask of real tokens sums the squares of those
            # rows without copying them out; each batch's float32 sum goes into a float64 total.
            state["input"], state["squares"] = x, (state["valid"] @ flat.square()).double()
        sums[name] = state["squares"] if sums[name] is None else sums[name] + state["squares"]
        counts[name] += state["tokens"]

    modules = dict(model.named_modules())
    handles = [modules[m].register_forward_pre_hook(lambda mod, args, n=n: hook(mod, args, n))
               for m, n in layers.items()]
    saved_threads = torch.get_num_threads()
    if threads and not use_gpu:
        torch.set_num_threads(threads)
    lengths = [len(t) for t in texts]
    try:
        decoder = model.get_decoder()  # the head's logits are neither measured nor needed
        with torch.inference_mode(), progress_bar("Computing the importance matrix", sum(lengths)) as advance:
            for batch in _batches(lengths, batch_tokens):
                width = lengths[batch[0]]
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, :lengths[i]] = torch.as_tensor(texts[i], dtype=torch.long)
                valid = torch.arange(width)[None, :] < torch.tensor([lengths[i] for i in batch])[:, None]
                state.update(valid=valid.reshape(-1).float().to(device), tokens=int(valid.sum()), input=None)
                decoder(input_ids=ids.to(device), use_cache=False)
                state.update(input=None, squares=None)
                advance(sum(lengths[i] for i in batch))
    finally:
        for h in handles:
            h.remove()
        torch.set_num_threads(saved_threads)
    result = {}
    for name, total in sums.items():
        values = total.cpu().numpy().reshape(1, -1)
        if not np.isfinite(values).all():
            raise UserError(f"imatrix: the model's activations at the input of {name} are not finite")
        result[name] = values
    del model
    if use_gpu:
        torch.cuda.empty_cache()
    tokens = sum(lengths)
    return Imatrix(sums=result, counts={n: np.array([c], dtype=np.int64) for n, c in counts.items()},
                   datasets=[dataset], chunk_count=len(texts), chunk_size=max(1, round(tokens / len(texts))),
                   seconds=round(time.time() - started, 2), cpu_seconds=round(time.process_time() - cpu_started, 2),
                   device=torch.cuda.get_device_name(0) if use_gpu else f"CPU ({torch.get_num_threads()} threads)")


def write_imatrix(path: Path, matrix: Imatrix, arch: str) -> None:
    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_type(gguf.GGUFType.IMATRIX)
    writer.add_array(KEY_DATASETS, list(matrix.datasets))
    writer.add_uint32(KEY_CHUNK_COUNT, int(matrix.chunk_count))
    writer.add_uint32(KEY_CHUNK_SIZE, int(matrix.chunk_size))
    for name in sorted(matrix.sums):
        writer.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(matrix.sums[name], dtype=np.float32))
        writer.add_tensor(f"{name}.counts", matrix.counts[name].astype(np.float32).reshape(-1, 1))
    with atomic_path(path) as tmp:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()


def _field(reader, key: str):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def read_imatrix(path: Path) -> Imatrix:
    """An imatrix GGUF file (ours or llama-imatrix's), with the checks llama-quantize makes."""
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable GGUF file ({e})") from None
    kind = _field(reader, "general.type")
    if kind != gguf.GGUFType.IMATRIX:
        raise UserError(f"{path}: not an importance matrix (general.type is {kind!r}, not 'imatrix')")
    datasets, chunks, size = (_field(reader, k) for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE))
    if datasets is None or chunks is None or size is None:
        raise UserError(f"{path}: missing imatrix metadata ({KEY_DATASETS}, {KEY_CHUNK_COUNT}, {KEY_CHUNK_SIZE})")
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(tuple(reversed([int(d) for d in t.shape])))
               for t in reader.tensors}
    sums, counts = {}, {}
    for name, data in tensors.items():
        if name.endswith(".in_sum2"):
            base = name[: -len(".in_sum2")]
            if f"{base}.counts" not in tensors:
                raise UserError(f"{path}: {base} has sums (.in_sum2) but no .counts")
            sums[base] = data.reshape(-1, data.shape[-1]).astype(np.float64)
            counts[base] = tensors[f"{base}.counts"].reshape(-1).astype(np.int64)
            if counts[base].size != sums[base].shape[0]:
                raise UserError(f"{path}: {base}: {counts[base].size} counts for {sums[base].shape[0]} matrices")
    if not sums:
        raise UserError(f"{path}: the importance matrix has no entries")
    return Imatrix(sums=sums, counts=counts, datasets=[str(d) for d in datasets], chunk_count=int(chunks),
                   chunk_size=int(size))


def check_names(matrix: Imatrix, tensors: dict[str, int], where: str) -> list[str]:
    """Each entry must name a tensor of the model with as many input columns; returns the block
    matrices the file has no entry for (llama.cpp quantizes those without one)."""
    for name, sums in matrix.sums.items():
        if name not in tensors:
            raise UserError(f"{where}: entry {name} matches no tensor of this model (made for another model?)")
        if sums.shape[-1] != tensors[name]:
            raise UserError(f"{where}: entry {name} has {sums.shape[-1]} columns, the tensor has {tensors[name]}")
    return sorted(n for n in tensors if n.startswith("blk.") and n not in matrix.sums)


class QuantizerImatrix:
    """The matrix as the NULL-terminated array of llama_model_imatrix_data that
    llama_model_quantize reads; the arrays it points into live as long as this object."""

    def __init__(self, matrix: Imatrix):
        import llama_cpp

        self.means = matrix.means()
        self.names = {name: name.encode() for name in self.means}
        self.array = (llama_cpp.llama_model_imatrix_data * (len(self.means) + 1))()
        for i, name in enumerate(sorted(self.means)):
            values = self.means[name]
            self.array[i].name = self.names[name]
            self.array[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            self.array[i].size = values.size
        self.array[len(self.means)].name = None
        self.overrides = self._metadata(llama_cpp, matrix)

    @staticmethod
    def _metadata(llama_cpp, matrix: Imatrix):
        """The quantize.imatrix.* keys llama-quantize writes into a calibrated file."""
        items = [(b"quantize.imatrix.dataset", matrix.datasets[0] if matrix.datasets else ""),
                 (b"quantize.imatrix.entries_count", len(matrix.sums)),
                 (b"quantize.imatrix.chunks_count", matrix.chunk_count)]
        overrides = (llama_cpp.llama_model_kv_override * (len(items) + 1))()
        for o, (key, value) in zip(overrides, items):
            o.key = key
            if isinstance(value, str):
                o.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
                o.value.val_str = value.encode()[-127:]
            else:
                o.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
                o.value.val_i64 = int(value)
        overrides[len(items)].key = b""
        return overrides


def model_matrices(folder: Path, hf_config: dict, facts: ModelFacts) -> dict[str, int]:
    """GGUF name -> input columns of every matrix the writer will write."""
    from .gguf_writer import plan_tensors

    return {t.name: t.shape[-1] for t in plan_tensors(folder, hf_config, facts, "f16", None) if len(t.shape) == 2}


def prepare_imatrix(calibration, folder: Path, hf_config: dict, facts: ModelFacts, path: Path,
                    threads: Optional[int], trust_remote_code: bool = False) -> tuple[Path, dict]:
    """Compute the matrix on the calibration texts (or check the given imatrix file against the
    model) and write it to `path`; returns the path and what the manifest says about it."""
    import shutil

    from distill.core.io import sha256_path
    from distill.core.progress import info

    matrices = model_matrices(folder, hf_config, facts)
    if calibration.imatrix_file is not None:
        matrix = read_imatrix(calibration.imatrix_file)
        missing = check_names(matrix, matrices, str(calibration.imatrix_file))
        with atomic_path(path) as tmp:
            shutil.copyfile(calibration.imatrix_file, tmp)
    else:
        info(f"Computing the importance matrix on {len(calibration.texts)} calibration texts")
        matrix = compute_imatrix(folder, calibration.texts, facts, calibration.source, threads, trust_remote_code)
        missing = check_names(matrix, matrices, "imatrix")
        write_imatrix(path, matrix, facts.arch)
    if missing:
        info(f"The importance matrix has no entry for {len(missing)} matrices (e.g. {missing[0]}): "
             "llama.cpp quantizes those without one")
    described = {**calibration.describe(),
                 "imatrix": {"path": path.name, "sha256": sha256_path(path), "bytes": path.stat().st_size,
                             "entries": len(matrix.sums), "missing": missing, "datasets": matrix.datasets,
                             "chunk_count": matrix.chunk_count, "chunk_size": matrix.chunk_size,
                             "tokens": int(max(int(c.max()) for c in matrix.counts.values())),
                             "seconds": matrix.seconds or None, "cpu_seconds": matrix.cpu_seconds or None,
                             "device": matrix.device or None}}
    return path, described
