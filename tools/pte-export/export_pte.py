#!/usr/bin/env python3
"""GGUF -> ExecuTorch `.pte`, offline: the export step of Strategy B.

    python export_pte.py --from MODEL.gguf --out DIR [--quant fp32|8da4w|8da8w]
                         [--max-len 512] [--adapter LORA.gguf [--adapter-scale S]]

Writes DIR/model.pte, DIR/tokenizer.json, DIR/tokenizer_config.json and
DIR/arny-export.json (the sidecar: source SHA-256, quantization, max length,
tool versions). `arny export pte` runs this in the pinned venv from
requirements.txt; running it by hand in that venv is the same.

The program is a single self-contained file: besides optimum-executorch's
metadata methods (get_max_seq_len, get_bos_id, ...), it carries three string
methods the Arny engine reads, so a `.pte` loaded from memory (an app
bundle, a download) needs nothing beside it:

    get_arny_tokenizer_gguf   base64 of a GGUF holding the source's
                              `tokenizer.*` keys (vocabulary, merges or
                              scores, special ids, chat template): the
                              engine builds llama.cpp's tokenizer from it,
                              SentencePiece included
    get_arny_chat_template    the model's chat template (Jinja), if it has one
    get_arny_config           JSON: name, architecture, parameters, trained
                              context length, quantization, special tokens

With --adapter, a GGUF LoRA adapter (as `arny tune` writes and llama.cpp
loads) is merged into the weights before the export: W += s * B @ A with
s = scale * alpha / rank. ExecuTorch programs carry their weights, so a
specialist on this engine is a program of its own, not a delta over a
shared one.

The program keeps its KV cache in ExecuTorch's custom cache and attends
with the custom SDPA operator (`llama::update_cache`, `llama::custom_sdpa`):
attention runs over the tokens present instead of the whole static cache.
Sliding-window layers keep ring caches (`llama::update_cache_with_indices`)
and a prefill chunk shorter than the window. The wheel's runtime has no
kernels for these operators outside a library that needs libtorch, so the
Arny engine registers its own (engine-pte/shim/llm_ops.cpp). `forward` returns the last position's
logits only (`[1, 1, vocab]`): the other rows would cost a vocabulary-wide
matmul each and a planned `[seq, vocab]` buffer; the engine runs one token
a call when a caller wants every row. Prefill chunks are at most
--max-chunk tokens (the memory plan is sized for one chunk).

Progress lines on stderr start with "ARNY-STAGE k/n " so that the CLI can
show them; everything else on stderr is the libraries' own logging.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Nothing in an export may touch the network: the model is the local GGUF.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

STAGES = 5
QUANTS = {
    # qlinear, qembedding (optimum-executorch's names)
    "fp32": (None, None),
    "8da4w": ("8da4w", "8w"),
    "8da8w": ("8da8w", "8w"),
}
# Tokens that end a turn in the common chat formats (llama.cpp treats the
# same texts as end-of-generation).
END_OF_TURN_TEXTS = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"]


def stage(k: int, text: str) -> None:
    print(f"ARNY-STAGE {k}/{STAGES} {text}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gguf_scalar(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return bytes(value).decode("utf-8")
    return value.tolist()[0]


def gguf_raw_value(field):
    """A field's value as GGUFWriter takes it back: strings stay bytes (a
    vocabulary may hold byte sequences that are not UTF-8)."""
    from gguf import GGUFValueType

    def item(i, ty):
        part = field.parts[i]
        return bytes(part) if ty == GGUFValueType.STRING else part.tolist()[0]

    if field.types[0] == GGUFValueType.ARRAY:
        return [item(i, field.types[-1]) for i in field.data]
    return item(field.data[0], field.types[0])


def tokenizer_gguf(reader, arch: str, work: Path) -> str:
    """The source's `tokenizer.*` keys as a tensor-less GGUF, base64: the
    engine reads it with the parser and tokenizers the other engines use,
    so a program tokenizes exactly as llama.cpp does on the source file
    (transformers' conversion of SentencePiece vocabularies does not)."""
    import base64

    import gguf

    path = work / "tokenizer.gguf"
    writer = gguf.GGUFWriter(str(path), arch)
    for name, field in reader.fields.items():
        if name.startswith("tokenizer."):
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, gguf_raw_value(field), field.types[0], sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return base64.b64encode(path.read_bytes()).decode("ascii")


def config_fixes(reader, arch: str) -> dict:
    """What transformers' GGUF loader (5.0.0rc1) leaves out of a model's
    config that llama.cpp reads from the same file, as attribute -> value.
    Without these a Qwen3 or Gemma 3 program computes another function
    than llama.cpp's, or does not load."""
    import gguf

    key = lambda k: gguf_scalar(reader, f"{arch}.{k}")
    fixes = {}
    head_dim = key("attention.key_length")
    if head_dim is not None:
        # transformers assumes its own default (128 for Qwen3, 256 for
        # Gemma 3) where the file names the head size.
        fixes["head_dim"] = head_dim
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    pad = gguf_scalar(reader, "tokenizer.ggml.padding_token_id")
    # Phi-3's config class defaults the padding id to 32000, outside a
    # smaller vocabulary, where the embedding refuses it.
    fixes["pad_token_id"] = pad if pad is not None and pad < vocab else None
    if arch == "phi3":
        # llama.cpp ignores Phi-3's sliding window (converters filled it
        # wrongly); transformers would apply it.
        fixes["sliding_window"] = None
    if arch == "gemma3":
        layers = key("block_count")
        pattern = key("attention.sliding_window_pattern")
        field = reader.fields.get(f"{arch}.attention.sliding_window_pattern")
        if field is not None and field.types[0] == gguf.GGUFValueType.ARRAY:
            sliding = [bool(v) for v in field.contents()] + [False] * layers
        else:
            # llama.cpp: every `pattern`-th layer is global (6 unless told).
            n = pattern or 6
            sliding = [l % n < n - 1 for l in range(layers)]
        fixes["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding[:layers]]
        # llama.cpp scales queries by 1/sqrt(head size); transformers by
        # query_pre_attn_scalar^-1/2, 256 unless told.
        fixes["query_pre_attn_scalar"] = head_dim or key("embedding_length") // key("attention.head_count")
        softcap = key("final_logit_softcapping")
        fixes["final_logit_softcapping"] = softcap if softcap else None
    return fixes


def rope_factors(reader):
    """llama.cpp divides each rotary frequency by `rope_freqs.weight`
    (Llama 3's long-context scaling, precomputed by the converter);
    transformers' loader drops that tensor."""
    import numpy as np

    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            return np.asarray(t.data, dtype=np.float32).reshape(-1).tolist()
    return None


def patch_rope_factors(arch: str, factors) -> None:
    """Makes transformers' default rotary frequencies those divided by
    `factors`, in this process (optimum-executorch reloads the model from
    the saved folder, which keeps no such tensor)."""
    if factors is None:
        return
    import torch
    from transformers.models.llama import modeling_llama

    if arch != "llama":
        raise ExportError(f"rope_freqs in a `{arch}` model: only Llama's are applied here")
    cls = modeling_llama.LlamaRotaryEmbedding
    default = cls.compute_default_rope_parameters

    def with_factors(config=None, device=None, seq_len=None):
        inv_freq, scaling = default(config, device, seq_len)
        f = torch.tensor(factors, dtype=inv_freq.dtype, device=inv_freq.device)
        if f.shape != inv_freq.shape:
            raise ExportError(f"rope_freqs has {f.numel()} factors for {inv_freq.numel()} frequencies")
        return inv_freq / f, scaling

    cls.compute_default_rope_parameters = staticmethod(with_factors)


# GGUF LoRA target -> the transformers Llama module that holds the weight.
LORA_MODULES = {
    "attn_q": ("self_attn", "q_proj"),
    "attn_k": ("self_attn", "k_proj"),
    "attn_v": ("self_attn", "v_proj"),
    "attn_output": ("self_attn", "o_proj"),
    "ffn_gate": ("mlp", "gate_proj"),
    "ffn_up": ("mlp", "up_proj"),
    "ffn_down": ("mlp", "down_proj"),
}


def unpermute(w, n_head: int):
    """Undoes llama.cpp's Q/K row order (the GGUF converter's permute, which
    `arny tune` applies to LoRA B too): transformers' weights are in the
    original order."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class ExportError(Exception):
    pass


def merge_lora(model, path: Path, scale: float, arch: str) -> dict:
    """Adds the adapter at `path` into `model`'s weights; returns what the
    sidecar records of it."""
    import re

    import gguf
    import numpy as np
    import torch

    if arch != "llama":
        # The module map and the Q/K row order below are the Llama
        # family's (llama.cpp permutes no other family's rows).
        raise ExportError(f"merging an adapter into a `{arch}` model is not built here (Llama-family models only)")
    reader = gguf.GGUFReader(str(path))
    if gguf_scalar(reader, "general.type") != "adapter" or gguf_scalar(reader, "adapter.type") != "lora":
        raise ExportError(f"{path} is not a GGUF LoRA adapter (general.type = adapter, adapter.type = lora)")
    if gguf_scalar(reader, "general.architecture") != arch:
        raise ExportError(f"{path} is an adapter for `{gguf_scalar(reader, 'general.architecture')}` models, the model is `{arch}`")
    alpha = gguf_scalar(reader, "adapter.lora.alpha")
    halves = {}
    pattern = re.compile(r"^blk\.(\d+)\.(\w+)\.weight\.lora_([ab])$")
    for t in reader.tensors:
        m = pattern.match(t.name)
        if not m or m.group(2) not in LORA_MODULES:
            raise ExportError(f"{path}: tensor {t.name} is not a LoRA half of a block projection")
        halves.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = np.asarray(t.data, dtype=np.float32)
    cfg = model.config
    layers = model.model.layers
    rank = 0
    with torch.no_grad():
        for (layer, target), ab in sorted(halves.items()):
            if set(ab) != {"a", "b"} or layer >= len(layers):
                raise ExportError(f"{path}: blk.{layer}.{target} is incomplete or outside the model")
            # numpy shapes are ggml's dims reversed: A [r, in], B [out, r].
            a, b = ab["a"], ab["b"]
            r = a.shape[0]
            rank = max(rank, r)
            if target == "attn_q":
                b = unpermute(b, cfg.num_attention_heads)
            elif target == "attn_k":
                b = unpermute(b, cfg.num_key_value_heads)
            part, name = LORA_MODULES[target]
            weight = getattr(getattr(layers[layer], part), name).weight
            if b.shape[1] != r or (b.shape[0], a.shape[1]) != tuple(weight.shape):
                raise ExportError(
                    f"{path}: blk.{layer}.{target} makes {(b.shape[0], a.shape[1])}, the model's weight is {tuple(weight.shape)} (another base model?)"
                )
            s = scale * (alpha / r if alpha else 1.0)
            weight += torch.from_numpy(s * (b @ a)).to(weight.dtype)
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "alpha": alpha,
        "rank": rank,
        "scale": scale,
        "tensors": len(halves),
    }


# Prompts the 8da4w export calibrates its outlier channels on (not the
# conformance prompts, which measure the result).
CALIBRATION_PROMPTS = [
    "Tell me about the history of Rome.",
    "How do I bake bread at home?",
    "What should I pack for a hiking trip?",
    "Summarize the plot of a detective story.",
    "Explain how a bicycle works.",
    "Write a short poem about autumn leaves.",
]
GROUP = 32
OUTLIERS = 8


def make_group_linear_class():
    import torch

    class GroupLinear(torch.nn.Module):
        """`W x` for a 4-bit group-quantized W, in pieces XNNPACK runs fast
        and without losing what llama.cpp's blocks hold.

        A Q4_1 group of 32 weights is `d*q + m` (q in 0..15): asymmetric,
        while XNNPACK's 4-bit kernels are symmetric (`s*(q-8)`). Rewritten
        as `d*(q-8) + c` with `c = m + 8d`, the first term is a symmetric
        4-bit group with scale d, held exactly, and the second a constant
        per group, so `W x = W_sym x + C·(group sums of x)`: a small f32
        matmul. For a source that is not Q4_1 the same split is a fresh
        asymmetric 4-bit quantization of the group's range.

        XNNPACK quantizes the activations of a 4-bit matmul to int8 with
        one scale per token, so a few channels of large magnitude (the same
        ones for every token, found by calibration) coarsen every other
        channel. Those channels are zeroed before `W_sym` and multiplied in
        f32 beside the group sums, with W_sym's own columns.
        """

        def __init__(self, weight, outliers, bias=None):
            super().__init__()
            out_dim, in_dim = weight.shape
            groups = weight.view(out_dim, in_dim // GROUP, GROUP)
            lo, hi = groups.amin(-1), groups.amax(-1)
            offset = lo + 8.0 * (hi - lo) / 15.0
            w_sym = weight - offset.repeat_interleave(GROUP, dim=1)
            self.main = torch.nn.Linear(in_dim, out_dim, bias=False)
            self.main.weight = torch.nn.Parameter(w_sym, requires_grad=False)
            keep = torch.ones(in_dim)
            keep[outliers] = 0.0
            self.register_buffer("keep", keep)
            self.register_buffer("outliers", outliers)
            # [group offsets | W_sym's outlier columns], applied to
            # [group sums | outlier channels] of x.
            # A bias (Qwen2's Q, K and V) rides on this f32 matmul.
            self.aux = torch.nn.Linear(in_dim // GROUP + len(outliers), out_dim, bias=bias is not None)
            self.aux.weight = torch.nn.Parameter(torch.cat([offset, w_sym[:, outliers]], dim=1), requires_grad=False)
            if bias is not None:
                self.aux.bias = torch.nn.Parameter(bias, requires_grad=False)

        def forward(self, x):
            side = torch.cat([x.unflatten(-1, (-1, GROUP)).sum(-1), x.index_select(-1, self.outliers)], dim=-1)
            return self.main(x * self.keep) + self.aux(side)

    return GroupLinear


def quantize_8da4w(model, tokenizer) -> dict:
    """8-bit dynamic activations, 4-bit weights, as `GroupLinear` describes;
    the output matrix 8-bit per row (its own copy: the table is tied), the
    embedding table 8-bit per row. Returns what the sidecar records."""
    import torch
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import (
        Int8DynamicActivationIntxWeightConfig,
        IntxWeightOnlyConfig,
        quantize_,
    )
    from torchao.quantization.quant_primitives import MappingType
    from torchao.utils import unwrap_tensor_subclass

    GroupLinear = make_group_linear_class()
    names = [
        n for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n != "lm_head" and m.weight.shape[1] % GROUP == 0
    ]
    # Largest |x| per input channel of each projection, over greedy runs of
    # the calibration prompts.
    peak = {}
    hooks = []
    modules = dict(model.named_modules())
    for n in names:
        def hook(mod, inputs, output, n=n):
            a = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
            peak[n] = torch.maximum(peak[n], a) if n in peak else a
        hooks.append(modules[n].register_forward_hook(hook))
    # Calibrate with PyTorch's own attention: the program's (custom SDPA
    # over a cache sized to the sliding window) cannot take a calibration
    # run longer than the window in one call.
    attention = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        for prompt in CALIBRATION_PROMPTS:
            if tokenizer.chat_template is None:
                ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            else:
                ids = tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
                )
            if not torch.is_tensor(ids):
                ids = ids["input_ids"]
            model.generate(ids, max_new_tokens=48, do_sample=False)
    for h in hooks:
        h.remove()
    model.set_attn_implementation(attention)

    with torch.no_grad():
        for n in names:
            parent_name, _, child = n.rpartition(".")
            parent = modules[parent_name] if parent_name else model
            lin = modules[n]
            bias = None if lin.bias is None else lin.bias.data.float()
            in_dim = lin.weight.shape[1]
            outliers = peak[n].topk(min(OUTLIERS, in_dim)).indices.sort().values
            setattr(parent, child, GroupLinear(lin.weight.data.float(), outliers, bias))
        # Untie the output matrix from the table so each gets its own form.
        if getattr(model, "lm_head", None) is not None:
            model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone(), requires_grad=False)

    quantize_(
        model,
        IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0), intx_choose_qparams_algorithm="affine"),
        lambda m, fqn: isinstance(m, torch.nn.Embedding),
    )
    quantize_(
        model,
        Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4,
            weight_granularity=PerGroup(GROUP),
            # scale = max(-min/8, max/7): a group that is exactly
            # d*(q-8) gets scale d back, so the int4 values are exact.
            weight_mapping_type=MappingType.SYMMETRIC_NO_CLIPPING_ERR,
            intx_choose_qparams_algorithm="affine",
        ),
        filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn.endswith(".main"),
    )
    quantize_(
        model,
        Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int8, weight_granularity=PerAxis(0), intx_choose_qparams_algorithm="affine"
        ),
        filter_fn=lambda m, fqn: fqn == "lm_head",
    )
    unwrap_tensor_subclass(model)
    return {
        "linear": f"int4 groups of {GROUP} as symmetric int4 + f32 group offsets (Q4_1 held exactly), int8 per-token dynamic activations",
        "outlier_channels_per_input": OUTLIERS,
        "calibration_prompts": len(CALIBRATION_PROMPTS),
        "output": "int8 per row, int8 per-token dynamic activations",
        "embedding": "int8 per row",
        "projections": len(names),
    }


def patch_quantizer(quant: str, tokenizer, record: dict) -> None:
    """The 8da4w export quantizes with `quantize_8da4w` instead of
    optimum-executorch's own recipe (which agrees with llama.cpp at top-1 on
    ~0.66 of positions for SmolLM2-135M: it re-quantizes Q4_1's asymmetric
    groups onto a symmetric grid, and keeps the outlier channels in the
    per-token activation scale)."""
    if quant != "8da4w":
        return
    from optimum.exporters.executorch.tasks import causal_lm

    def arny_quantize(model, **_):
        record.update(quantize_8da4w(model, tokenizer))

    causal_lm.quantize_model_ = arny_quantize


def patch_exportable_module(max_chunk: int) -> None:
    """Two changes to optimum-executorch's decoder wrapper: `forward` keeps
    the last position's logits only, and a call takes at most `max_chunk`
    tokens (optimum sizes the dynamic length to the whole cache, and the
    memory plan with it)."""
    import torch
    from optimum.exporters.executorch import integrations

    cls = integrations.CausalLMExportableModule
    init, prepare = cls.__init__, cls._prepare_export_inputs

    def patched_init(self, model, *args, **kwargs):
        forward = model.forward

        def last_row_forward(*a, **kw):
            kw["logits_to_keep"] = 1
            return forward(*a, **kw)

        model.forward = last_row_forward
        init(self, model, *args, **kwargs)

    def patched_prepare(self):
        ids, positions, dynamic, strict = prepare(self)
        if dynamic is None:
            raise ExportError("optimum-executorch exports this model with static shapes; Arny needs a dynamic length")
        seq = torch.export.Dim("seq_length_dim", max=max_chunk)
        return ids, positions, {"input_ids": {1: seq}, "cache_position": {0: seq}}, strict

    cls.__init__ = patched_init
    cls._prepare_export_inputs = patched_prepare


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quant", default="fp32", choices=sorted(QUANTS))
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--max-chunk", type=int, help="most tokens one forward call takes (default: 256, below --max-len)")
    ap.add_argument("--adapter", type=Path, help="a GGUF LoRA adapter to merge into the weights")
    ap.add_argument("--adapter-scale", type=float, default=1.0)
    args = ap.parse_args()

    started = time.time()
    source: Path = args.source.resolve()
    if not source.is_file():
        print(f"error: {source} is not a file", file=sys.stderr)
        return 2
    if args.max_len < 16:
        print("error: --max-len must be at least 16", file=sys.stderr)
        return 2
    if args.max_chunk is None:
        args.max_chunk = min(256, args.max_len - 1)
    if not 2 <= args.max_chunk < args.max_len:
        print("error: --max-chunk must be at least 2 and below --max-len", file=sys.stderr)
        return 2
    if args.adapter is not None and not args.adapter.is_file():
        print(f"error: the adapter {args.adapter} is not a file", file=sys.stderr)
        return 2
    if not (args.adapter_scale >= 0.0 and args.adapter_scale < float("inf")):
        print("error: --adapter-scale must be a finite number >= 0", file=sys.stderr)
        return 2

    stage(1, "reading the GGUF (transformers dequantizes it to float32)")
    import gguf
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    source_sha = sha256_file(source)
    reader = gguf.GGUFReader(str(source))
    arch = gguf_scalar(reader, "general.architecture")
    bos = gguf_scalar(reader, "tokenizer.ggml.bos_token_id")
    eos = gguf_scalar(reader, "tokenizer.ggml.eos_token_id")
    add_bos = gguf_scalar(reader, "tokenizer.ggml.add_bos_token")
    name = gguf_scalar(reader, "general.name")
    trained_ctx = gguf_scalar(reader, f"{arch}.context_length")
    fixes = config_fixes(reader, arch)
    factors = rope_factors(reader)

    work = Path(tempfile.mkdtemp(prefix="arny-pte-export-"))
    try:
        # transformers wants the GGUF in a directory with a generation config.
        src_dir = work / "gguf"
        src_dir.mkdir()
        (src_dir / source.name).symlink_to(source)
        gen = {"bos_token_id": bos, "eos_token_id": eos}
        (src_dir / "generation_config.json").write_text(json.dumps(gen))
        # AutoTokenizer with gguf_file, or a directory with gguf_file, raise
        # UnboundLocalError in this transformers version; the fast tokenizer
        # class given the file itself loads it.
        gguf_path = str(src_dir / source.name)
        # Phi-3's vocabulary converter reads a padding id that its GGUF
        # files need not have.
        from transformers.integrations.ggml import GGUFTokenizerSkeleton

        if not hasattr(GGUFTokenizerSkeleton, "pad_token_id"):
            GGUFTokenizerSkeleton.pad_token_id = None
        # Vocabularies over 100k (Gemma 3's) go through a check for Mistral's
        # pre-tokenizer regex that looks for a config.json beside the given
        # name, a GGUF file here, and fails. Nothing of a GGUF source is
        # Mistral's tokenizer.json, and the program's tokenizer is the GGUF's.
        PreTrainedTokenizerFast._patch_mistral_regex = classmethod(lambda cls, tokenizer, *a, **k: tokenizer)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(gguf_path, gguf_file=gguf_path)
        tokenizer_b64 = tokenizer_gguf(reader, arch, work)
        del reader
        try:
            patch_rope_factors(arch, factors)
        except ExportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        config = AutoConfig.from_pretrained(str(src_dir), gguf_file=source.name)
        for k, v in fixes.items():
            setattr(config, k, v)
        model = AutoModelForCausalLM.from_pretrained(
            str(src_dir), gguf_file=source.name, config=config, dtype=torch.float32
        )
        model.eval()
        if any(t == "sliding_attention" for t in getattr(config, "layer_types", None) or []):
            # A chunk must fit the sliding layers' ring cache.
            args.max_chunk = min(args.max_chunk, config.sliding_window - 1)
        adapter = None
        if args.adapter is not None:
            try:
                adapter = merge_lora(model, args.adapter.resolve(), args.adapter_scale, arch)
            except ExportError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        parameters = sum(p.numel() for p in model.parameters())
        hf_dir = work / "hf"
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        del model

        # None for a base model: the engine then completes plain text.
        chat_template = tokenizer.chat_template
        vocab = tokenizer.get_vocab()
        eot = sorted({eos} | {vocab[t] for t in END_OF_TURN_TEXTS if t in vocab} - {None})
        arny_config = {
            "format": 1,
            "name": name,
            "architecture": arch,
            "parameters": parameters,
            "trained_context_length": trained_ctx,
            "max_seq_len": args.max_len,
            "quantization": args.quant,
            "vocab_size": len(tokenizer),
            "bos_token_id": bos,
            "eos_token_id": eos,
            "end_of_generation_ids": eot,
            "add_bos_token": bool(add_bos) if add_bos is not None else False,
            "source_sha256": source_sha,
            "adapter": adapter,
            "config_fixes": fixes,
            "rope_factors": factors is not None,
        }

        stage(2, f"tracing with torch.export ({args.quant}, max length {args.max_len})")
        import optimum.exporters.executorch.__main__ as opt_main

        lower = opt_main.export_to_executorch

        def lower_with_arny_metadata(model, **kwargs):
            stage(3, "lowering to XNNPACK and writing the program (the long step)")
            model.metadata.update(
                {
                    "get_arny_tokenizer_gguf": tokenizer_b64,
                    "get_arny_config": json.dumps(arny_config),
                }
            )
            if chat_template is not None:
                model.metadata["get_arny_chat_template"] = chat_template
            return lower(model=model, **kwargs)

        opt_main.export_to_executorch = lower_with_arny_metadata
        patch_exportable_module(args.max_chunk)
        quant_record = {}
        patch_quantizer(args.quant, tokenizer, quant_record)
        qlinear, qembedding = QUANTS[args.quant]
        extra = {"use_custom_sdpa": True, "use_custom_kv_cache": True}
        if qlinear:
            extra["qlinear"] = qlinear
        if qembedding:
            extra["qembedding"] = qembedding
        out_tmp = work / "out"
        opt_main.main_export(
            model_name_or_path=str(hf_dir),
            task="text-generation",
            recipe="xnnpack",
            output_dir=str(out_tmp),
            max_seq_len=args.max_len,
            local_files_only=True,
            **extra,
        )

        stage(4, "writing the tokenizer files and the sidecar")
        out: Path = args.out
        out.mkdir(parents=True, exist_ok=True)
        pte = out / "model.pte"
        # Written under a temporary name and renamed, so an interrupted
        # export never leaves a half-written program under the real name.
        shutil.move(str(out_tmp / "model.pte"), str(out / "model.pte.partial"))
        for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
            if (hf_dir / f).exists():
                shutil.copy(hf_dir / f, out / f)
        import executorch
        import optimum.executorch as oe

        def version(mod, dist):
            try:
                from importlib.metadata import version as v

                return v(dist)
            except Exception:
                return getattr(mod, "__version__", "unknown")

        os.replace(out / "model.pte.partial", pte)
        stage(5, "hashing the program")
        sidecar = {
            "format": 1,
            "program": "model.pte",
            "program_sha256": sha256_file(pte),
            "program_bytes": pte.stat().st_size,
            "source": source.name,
            "source_sha256": source_sha,
            "quantization": args.quant,
            "adapter": adapter,
            "qlinear": qlinear,
            "qembedding": qembedding,
            "quantization_detail": quant_record or None,
            "max_seq_len": args.max_len,
            "recipe": "xnnpack",
            "max_chunk": args.max_chunk,
            "config_fixes": fixes,
            "rope_factors": factors is not None,
            "attention": "llama::custom_sdpa over llama::update_cache (custom KV cache; ring caches through llama::update_cache_with_indices for sliding-window layers)",
            "signature": "forward(input_ids i64[1, seq], cache_position i64[seq]) -> f32[1, 1, vocab] (last position)",
            "exporter_sha256": sha256_file(Path(__file__)),
            "versions": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "executorch": version(executorch, "executorch"),
                "optimum-executorch": version(oe, "optimum-executorch"),
                "transformers": transformers.__version__,
                "gguf": version(gguf, "gguf"),
            },
            "export_seconds": round(time.time() - started, 1),
        }
        (out / "arny-export.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        print(json.dumps(sidecar))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
