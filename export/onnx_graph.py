"""What onnxruntime-genai's builder actually put in model.onnx: op counts, the (bits, block size,
accuracy level) of its MatMulNBits nodes, and what the output head and the token embedding became.
The builder's options are checked by their effect here, not by their names: the `int4_*` spellings
its help lists as aliases were silently ignored by 0.18 (block 32, level 4, a 4-bit head)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
from onnx import TensorProto

_PASS_THROUGH = {"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Slice", "Transpose"}
_DTYPE_BITS = {TensorProto.FLOAT: 32, TensorProto.FLOAT16: 16, TensorProto.BFLOAT16: 16,
               TensorProto.INT8: 8, TensorProto.UINT8: 8, TensorProto.INT4: 4, TensorProto.UINT4: 4}


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _source(name: str, producer: dict) -> str:
    """The tensor a value comes from once pass-through ops (Reshape, Transpose, ...) are undone."""
    for _ in range(8):
        node = producer.get(name)
        if node is None or node.op_type not in _PASS_THROUGH:
            break
        name = node.input[0]
    return name


def describe_graph(folder) -> dict:
    """Op counts, the distinct (bits, block_size, accuracy_level) of MatMulNBits nodes, and what the
    LM head and the token embedding became (op type and weight bits). Reads only the graph
    (external weights are not loaded), so it is cheap on any model size."""
    folder = Path(folder)
    path = folder / "model.onnx" if folder.is_dir() else folder
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def weight_bits(name: str) -> int | None:
        # follow pass-through ops back to an initializer (tied float embeddings: Transpose of the head)
        seen = 0
        while name not in inits and name in producer and seen < 8:
            node = producer[name]
            if node.op_type not in _PASS_THROUGH and node.op_type != "Constant":
                return None
            name, seen = node.input[0], seen + 1
        t = inits.get(name)
        return _DTYPE_BITS.get(t.data_type) if t is not None else None

    def node_bits(node) -> int | None:
        a = _attrs(node)
        if node.op_type == "MatMulNBits":
            return int(a.get("bits", 4))
        if node.op_type == "GatherBlockQuantized":
            return int(a.get("bits", 4))
        if node.op_type in ("MatMul", "Gemm"):
            return weight_bits(node.input[1])
        if node.op_type == "Gather":
            return weight_bits(node.input[0])
        if node.op_type == "DequantizeLinear":  # QDQ format
            return weight_bits(node.input[0])
        return None

    def describe(node) -> dict | None:
        if node is None:
            return None
        out = {"name": node.name, "op_type": node.op_type, "bits": node_bits(node)}
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            a = _attrs(node)
            out["block_size"] = a.get("block_size")
            if node.op_type == "MatMulNBits":
                out["accuracy_level"] = a.get("accuracy_level", 0)
        return out

    # head: walk back from the "logits" output to the first matmul-like node
    head = None
    out_name = next((o.name for o in graph.output if o.name == "logits"), graph.output[0].name)
    frontier, steps = [out_name], 0
    while frontier and head is None and steps < 16:
        name = frontier.pop(0)
        node = producer.get(name)
        steps += 1
        if node is None:
            continue
        if node.op_type in ("MatMul", "MatMulNBits", "Gemm", "FusedMatMul"):
            head = node
        else:
            frontier.extend(node.input)

    # embedding: the gather that reads input_ids
    embed = next((n for n in consumers.get("input_ids", [])
                  if n.op_type in ("Gather", "GatherBlockQuantized")), None)

    mmnb = [_attrs(n) for n in graph.node if n.op_type == "MatMulNBits"]
    # inputs nothing defines: onnxruntime refuses such a model ("is not a graph input, initializer,
    # or output of a previous node"); the builder emits one for matmul_mixed_precision on tied models
    known = set(inits) | {i.name for i in graph.input} | set(producer) | {""}
    dangling = sorted({i for n in graph.node for i in n.input if i not in known})
    return {
        "op_counts": dict(Counter(n.op_type for n in graph.node)),
        "matmulnbits_configs": sorted({(int(a.get("bits", 4)), int(a["block_size"]),
                                        int(a.get("accuracy_level", 0))) for a in mmnb}),
        "head": describe(head),
        "embedding": describe(embed),
        "dangling_inputs": dangling,
        "embedding_shares_head_weight": bool(
            embed is not None and head is not None
            and _source(embed.input[0], producer) == _source(head.input[1], producer)),
    }
