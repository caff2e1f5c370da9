#!/usr/bin/env python3
"""LoRA fine-tuning of a GGUF model on the CPU, with PEFT: `arny tune`.

    python tune.py --from MODEL.gguf --data EXAMPLES.jsonl --out DIR
                   [--rank 16] [--alpha 32] [--steps 300] [--batch 8]
                   [--lr 1e-3] [--seed 0] [--holdout 0.1] [--max-len 256]
                   [--eval-n 64] [--threads N]

EXAMPLES.jsonl holds one example per line, either a chat
`{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`
or `{"prompt": ..., "completion": ...}` (a user turn and its reply). The loss
is taken on the assistant turns only. An optional `"answer"` is what task
accuracy checks: the last number of the greedy reply must equal it (or, for
a non-numeric answer, the reply must contain it); without one, the reply
must equal the reference after whitespace and case are normalized.

Writes into DIR:
    adapter.gguf    the GGUF LoRA llama.cpp loads (f16 tensors)
    peft/           the PEFT adapter (adapter_config.json + safetensors)
    arny-tune.json  the sidecar: base and data SHA-256, hyperparameters, the
                    loss curve, held-out loss and accuracy, tool versions,
                    seconds
    reference.json  PEFT's teacher-forced next-token choices (and their
                    log-probabilities) on a few held-out examples, with the
                    adapter and without: what engines are checked against

The base weights are the GGUF's, dequantized by transformers, so the adapter
is trained against exactly the weights llama.cpp runs. Progress lines on
stderr start with "ARNY-STAGE k/n " or "ARNY-PROGRESS " (JSON) so that the
CLI can draw them; everything else on stderr is the libraries' logging.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STAGES = 5
# PEFT module name -> llama.cpp tensor name, for the Llama family.
TARGETS = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
ARCHITECTURES = {"llama"}
# Tokens that end a turn in the common chat formats (as in export_pte.py).
END_OF_TURN_TEXTS = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def stage(k: int, text: str) -> None:
    print(f"ARNY-STAGE {k}/{STAGES} {text}", file=sys.stderr, flush=True)


def progress(**fields) -> None:
    print("ARNY-PROGRESS " + json.dumps(fields), file=sys.stderr, flush=True)


def fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


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


def read_examples(path: Path) -> list[dict]:
    """Examples as {"messages": [...], "answer": str|None}; errors name the line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected an object")
            if "messages" in row:
                msgs = row["messages"]
                ok = isinstance(msgs, list) and msgs and all(
                    isinstance(m, dict)
                    and m.get("role") in ("system", "user", "assistant")
                    and isinstance(m.get("content"), str)
                    for m in msgs
                )
                if not ok:
                    raise ValueError(
                        f"{path}:{n}: `messages` must be a list of "
                        "{role: system|user|assistant, content: string}"
                    )
                if msgs[-1]["role"] != "assistant":
                    raise ValueError(f"{path}:{n}: the last message must be the assistant's")
            elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
                msgs = [
                    {"role": "user", "content": row["prompt"]},
                    {"role": "assistant", "content": row["completion"]},
                ]
            else:
                raise ValueError(f"{path}:{n}: needs `messages`, or `prompt` and `completion`")
            answer = row.get("answer")
            out.append({"messages": msgs, "answer": None if answer is None else str(answer)})
    if not out:
        raise ValueError(f"{path}: no examples")
    return out


def encode(tokenizer, example: dict, add_bos: bool, bos_id, max_len: int):
    """Token ids and labels (-100 where no loss is taken): every assistant
    turn, its end-of-turn marker included, is learned; the rest is context.
    Each segment is tokenized on its own, as at inference time the reply's
    tokens are generated after the prompt's."""
    msgs = example["messages"]
    ids: list[int] = [bos_id] if add_bos and bos_id is not None else []
    labels: list[int] = [-100] * len(ids)
    done = ""
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(msgs[: k + 1], tokenize=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ValueError("the chat template does not render turns as prefixes of each other")
        context = tokenizer(prompt[len(done):], add_special_tokens=False)["input_ids"]
        reply = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        ids += context + reply
        labels += [-100] * len(context) + reply
        done = full
    return ids[:max_len], labels[:max_len]


def reference_reply(example: dict) -> str:
    return example["messages"][-1]["content"]


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str):
    found = NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def correct(reply: str, example: dict) -> bool:
    answer = example["answer"]
    if answer is not None:
        try:
            want = float(answer.replace(",", ""))
        except ValueError:
            return answer.strip().lower() in reply.lower()
        got = last_number(reply)
        return got is not None and abs(got - want) <= 1e-6 * max(1.0, abs(want))
    norm = lambda s: " ".join(s.split()).lower()  # noqa: E731
    return norm(reply) == norm(reference_reply(example))


def permute(w, n_head: int):
    """llama.cpp's row order for the Q and K projections (rotary halves
    interleaved per head), applied to LoRA B as the converter applies it to
    the weight: W' = P·W, so W' + P·B·A needs B' = P·B."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf_lora(path: Path, arch: str, alpha: float, config, lora: dict, meta: dict) -> int:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    for key, value in meta.items():
        writer.add_string(f"arny.tune.{key}", value)
    count = 0
    pattern = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.default)?\.weight$")
    for name, tensor in sorted(lora.items()):
        m = pattern.search(name)
        if not m:
            raise ValueError(f"unexpected LoRA tensor {name}")
        layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
        w = tensor.detach().float().cpu().numpy()
        if ab == "B" and module == "q_proj":
            w = permute(w, config.num_attention_heads)
        elif ab == "B" and module == "k_proj":
            w = permute(w, config.num_key_value_heads)
        out = f"blk.{layer}.{TARGETS[module]}.weight.lora_{ab.lower()}"
        writer.add_tensor(out, np.ascontiguousarray(w.astype(np.float16)))
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--eval-n", type=int, default=64)
    ap.add_argument("--eval-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    started = time.time()
    source: Path = args.source.resolve()
    for path, what in [(source, "--from"), (args.data, "--data")]:
        if not path.is_file():
            return fail(f"{what} {path} is not a file")
    if args.rank < 1 or args.steps < 1 or args.batch < 1 or args.max_len < 16:
        return fail("--rank, --steps and --batch must be positive, --max-len at least 16")
    if not 0.0 <= args.holdout < 1.0:
        return fail("--holdout must be in [0, 1)")
    try:
        examples = read_examples(args.data)
    except ValueError as e:
        return fail(str(e))

    stage(1, "reading the base model (transformers dequantizes the GGUF to float32)")
    import gguf
    import peft
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    reader = gguf.GGUFReader(str(source))
    arch = gguf_scalar(reader, "general.architecture")
    kind = gguf_scalar(reader, "general.type")
    bos = gguf_scalar(reader, "tokenizer.ggml.bos_token_id")
    eos = gguf_scalar(reader, "tokenizer.ggml.eos_token_id")
    add_bos = bool(gguf_scalar(reader, "tokenizer.ggml.add_bos_token") or False)
    del reader
    if kind == "adapter":
        return fail(f"{source} is an adapter, not a base model")
    if arch not in ARCHITECTURES:
        return fail(f"tuning `{arch}` models is not supported (supported: {', '.join(sorted(ARCHITECTURES))})")

    work = Path(tempfile.mkdtemp(prefix="arny-tune-"))
    try:
        src_dir = work / "gguf"
        src_dir.mkdir()
        (src_dir / source.name).symlink_to(source)
        (src_dir / "generation_config.json").write_text(
            json.dumps({"bos_token_id": bos, "eos_token_id": eos})
        )
        gguf_path = str(src_dir / source.name)
        tokenizer = AutoTokenizer.from_pretrained(str(src_dir), gguf_file=source.name)
        if tokenizer.chat_template is None:
            return fail("the GGUF has no chat template")
        model = AutoModelForCausalLM.from_pretrained(
            str(src_dir), gguf_file=source.name, dtype=torch.float32
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    config = model.config

    # A fixed split: the same data and seed hold out the same examples.
    order = list(range(len(examples)))
    random.Random(args.seed).shuffle(order)
    n_hold = int(round(len(examples) * args.holdout))
    if args.holdout > 0 and len(examples) >= 2:
        n_hold = max(1, n_hold)
    held = [examples[i] for i in order[:n_hold]]
    train = [examples[i] for i in order[n_hold:]]
    if not train:
        return fail("no training examples left after the held-out split")
    try:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        enc_train = [encode(tokenizer, e, add_bos, bos, args.max_len) for e in train]
        enc_held = [encode(tokenizer, e, add_bos, bos, args.max_len) for e in held]
    except ValueError as e:
        return fail(str(e))
    if not any(any(l != -100 for l in lab) for _, lab in enc_train):
        return fail(f"no assistant tokens fit in --max-len {args.max_len}")

    lcfg = peft.LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=list(TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(model, lcfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def batch_of(items):
        width = max(len(ids) for ids, _ in items)
        ids = torch.full((len(items), width), pad, dtype=torch.long)
        lab = torch.full((len(items), width), -100, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (i, l) in enumerate(items):
            ids[row, : len(i)] = torch.tensor(i)
            lab[row, : len(l)] = torch.tensor(l)
            mask[row, : len(i)] = 1
        return ids, lab, mask

    def held_loss() -> float | None:
        if not enc_held:
            return None
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for k in range(0, len(enc_held), args.batch):
                ids, lab, mask = batch_of(enc_held[k : k + args.batch])
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
                target = lab[:, 1:]
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                    ignore_index=-100, reduction="sum",
                )
                total += loss.item()
                count += int((target != -100).sum())
        model.train()
        return total / max(1, count)

    vocab = tokenizer.get_vocab()
    stop_ids = sorted({eos} | {vocab[t] for t in END_OF_TURN_TEXTS if t in vocab} - {None})

    def accuracy(items) -> tuple[float | None, list]:
        if not items:
            return None, []
        model.eval()
        samples, right = [], 0
        with torch.no_grad():
            for e in items:
                prompt = tokenizer.apply_chat_template(
                    e["messages"][:-1], tokenize=False, add_generation_prompt=True
                )
                ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                if add_bos and bos is not None:
                    ids = [bos] + ids
                out = model.generate(
                    input_ids=torch.tensor([ids]),
                    attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                    max_new_tokens=args.eval_tokens, do_sample=False,
                    eos_token_id=stop_ids,
                    pad_token_id=pad,
                )
                reply = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()
                ok = correct(reply, e)
                right += ok
                if len(samples) < 8:
                    samples.append({"question": e["messages"][-2]["content"], "reply": reply, "correct": ok})
        model.train()
        return right / len(items), samples

    stage(2, f"training: {len(train)} examples, {n_hold} held out, rank {args.rank}, "
             f"{trainable / 1e6:.2f} M trainable parameters, {args.steps} steps of {args.batch}")
    start_loss = held_loss()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))

    rng = random.Random(args.seed + 1)
    pool: list[int] = []
    curve = []
    t_train = time.time()
    model.train()
    for step in range(args.steps):
        if len(pool) < args.batch:
            fresh = list(range(len(enc_train)))
            rng.shuffle(fresh)
            pool += fresh
        picked, pool = pool[: args.batch], pool[args.batch :]
        ids, lab, mask = batch_of([enc_train[i] for i in picked])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = loss.item()
        curve.append(round(value, 4))
        elapsed = time.time() - t_train
        progress(step=step + 1, steps=args.steps, loss=round(value, 4),
                 eta_s=round(elapsed / (step + 1) * (args.steps - step - 1), 1))
    train_s = time.time() - t_train

    stage(3, f"evaluating on {n_hold} held-out examples")
    end_loss = held_loss()
    acc, samples = accuracy(held[: args.eval_n])

    # Teacher-forced references for the engines' conformance checks: the
    # next-token choice and its log-probability at every position of a few
    # held-out examples, with the adapter and without it.
    reference = {"examples": []}
    model.eval()
    with torch.no_grad():
        for ids, _ in (enc_held or enc_train)[:4]:
            row = {"tokens": ids}
            for name, ctx in [("tuned", None), ("base", model.disable_adapter)]:
                with ctx() if ctx else _null():
                    out = model(input_ids=torch.tensor([ids])).logits[0].float()
                logp = torch.log_softmax(out, dim=-1)
                top = logp.argmax(dim=-1)
                row[name] = {
                    "top1": top.tolist(),
                    "logp": [round(x, 5) for x in logp.gather(1, top[:, None])[:, 0].tolist()],
                }
            reference["examples"].append(row)
    model.train()

    stage(4, "writing the GGUF LoRA, the PEFT adapter and the sidecar")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    base_sha = sha256_file(source)
    data_sha = sha256_file(args.data)
    model.save_pretrained(str(out / "peft"))
    lora = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    partial = out / "adapter.gguf.partial"
    count = write_gguf_lora(partial, arch, args.alpha, config, lora,
                            {"base_sha256": base_sha, "data_sha256": data_sha})
    partial.replace(out / "adapter.gguf")

    sidecar = {
        "format": 1,
        "base": {"file": source.name, "sha256": base_sha, "architecture": arch},
        "data": {"file": args.data.name, "sha256": data_sha, "examples": len(examples),
                 "train": len(train), "held_out": n_hold},
        "hyperparameters": {
            "rank": args.rank, "alpha": args.alpha, "dropout": args.dropout,
            "targets": list(TARGETS), "steps": args.steps, "batch": args.batch,
            "lr": args.lr, "warmup": args.warmup, "schedule": "cosine",
            "seed": args.seed, "max_len": args.max_len,
        },
        "trainable_parameters": trainable,
        "gguf_tensors": count,
        "adapter_bytes": (out / "adapter.gguf").stat().st_size,
        "loss_curve": curve,
        "held_out_loss": {"before": start_loss, "after": end_loss},
        "held_out_accuracy": {"examples": min(len(held), args.eval_n), "accuracy": acc,
                              "samples": samples},
        "tools": {"torch": torch.__version__, "transformers": transformers.__version__,
                  "peft": peft.__version__, "gguf": importlib.metadata.version("gguf"),
                  "python": sys.version.split()[0]},
        "threads": torch.get_num_threads(),
        "seconds": {"train": round(train_s, 1), "total": round(time.time() - started, 1)},
    }
    (out / "reference.json").write_text(json.dumps(reference) + "\n")
    (out / "arny-tune.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    stage(5, "done")
    summary = {"held_out_loss_before": start_loss, "held_out_loss_after": end_loss,
               "accuracy": acc, "adapter": str(out / "adapter.gguf")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
