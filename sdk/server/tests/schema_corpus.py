"""Checks `arny serve` structured output against a corpus of real-world JSON Schemas.

Usage: python schema_corpus.py BASE_URL API_KEY MODEL SCHEMA_DIR REPORT_JSON

Each file in SCHEMA_DIR is {"name", "source", "prompt", "schema"}. Every schema is sent as a
strict json_schema response_format through the official `openai` package. The server may
either enforce it (the answer must then validate) or refuse it up front with a 400
`invalid_constraint`; anything in between, such as an answer that does not validate, is a
failure.
"""
import json
import pathlib
import sys
import time

import openai
from jsonschema import Draft202012Validator

# The point is to show enforcement on tens of schemas, not a lucky handful: with fewer valid
# answers than this, the run proves too little even if nothing outright failed.
MIN_VALID = 30

# Generation is capped low so a small model finishes the whole corpus quickly; the schemas
# are sized so that a complete answer fits well under this.
MAX_TOKENS = 256


def reject_constant(name):
    # Python's json accepts NaN and Infinity, which are not JSON; an answer containing them
    # is not valid output whatever the schema says.
    raise ValueError(f"non-JSON constant {name}")


def formats_used(node, found):
    if isinstance(node, dict):
        if isinstance(node.get("format"), str):
            found.add(node["format"])
        for value in node.values():
            formats_used(value, found)
    elif isinstance(node, list):
        for value in node:
            formats_used(value, found)
    return found


def check_answer(schema, content):
    """Returns None when content is valid for schema, else a description of what is wrong."""
    if content is None:
        return "finish_reason is stop but content is null"
    try:
        obj = json.loads(content, parse_constant=reject_constant)
    except ValueError as e:
        return f"content is not JSON ({e}): {content!r}"
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(obj), key=lambda err: list(err.absolute_path))
    if errors:
        details = "; ".join(f"at /{'/'.join(map(str, err.absolute_path))}: {err.message}" for err in errors)
        return f"content does not match the schema ({details}): {content!r}"
    return None


def refusal_reason(e):
    """Returns (reason, None) for an accepted refusal, or (None, problem) otherwise."""
    body = e.body
    # The package normally unwraps {"error": {...}} before building the exception; accept
    # the wrapped form too so a change there does not read as a server bug.
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    if not isinstance(body, dict):
        return None, f"400 without an OpenAI-shaped error body: {body!r}"
    missing = [key for key in ("message", "type", "param", "code") if key not in body]
    if missing:
        return None, f"400 error body lacks {missing}: {body!r}"
    code = e.code if e.code is not None else body.get("code")
    if code != "invalid_constraint":
        return None, f"400 with code {code!r}, not 'invalid_constraint': {body!r}"
    if not isinstance(body["message"], str) or not body["message"]:
        return None, f"400 invalid_constraint without a message: {body!r}"
    return body["message"], None


def run_one(client, model, entry):
    """Returns (outcome, completion_tokens, detail); detail is the refusal reason or the failure."""
    schema = entry["schema"]
    try:
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": entry["prompt"]}],
            max_tokens=MAX_TOKENS,
            temperature=0,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": entry["name"], "schema": schema, "strict": True},
            },
        )
    except openai.BadRequestError as e:
        reason, problem = refusal_reason(e)
        return ("refused", None, reason) if problem is None else ("failed", None, problem)
    except Exception as e:  # a timeout, a 500 or a dropped connection all mean no enforcement was shown
        return "failed", None, f"{type(e).__name__}: {e}"

    tokens = r.usage.completion_tokens if r.usage else None
    if not r.choices:
        return "failed", tokens, "response has no choices"
    choice = r.choices[0]
    if choice.finish_reason == "length":
        # Cut off by max_tokens: the prefix may be fine but cannot be judged as a whole.
        return "incomplete", tokens, None
    if choice.finish_reason != "stop":
        return "failed", tokens, f"unexpected finish_reason {choice.finish_reason!r}"
    problem = check_answer(schema, choice.message.content)
    return ("valid", tokens, None) if problem is None else ("failed", tokens, problem)


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    base_url, key, model, schema_dir, report_path = sys.argv[1:]
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300)

    paths = sorted(pathlib.Path(schema_dir).glob("*.json"))
    if not paths:
        sys.exit(f"no *.json schema files in {schema_dir}")

    per_schema, refused, failures, formats = [], [], [], set()
    for path in paths:
        entry = json.loads(path.read_text())
        # A broken corpus file would otherwise show up as a server failure.
        Draft202012Validator.check_schema(entry["schema"])
        formats_used(entry["schema"], formats)

        start = time.monotonic()
        outcome, tokens, detail = run_one(client, model, entry)
        seconds = round(time.monotonic() - start, 3)

        per_schema.append({"name": entry["name"], "outcome": outcome, "tokens": tokens, "seconds": seconds})
        if outcome == "refused":
            refused.append({"name": entry["name"], "reason": detail})
        elif outcome == "failed":
            failures.append({"name": entry["name"], "file": path.name, "error": detail})
        print(f"{path.name}: {outcome} ({tokens} tokens, {seconds}s)", flush=True)

    valid = sum(1 for s in per_schema if s["outcome"] == "valid")
    incomplete = sum(1 for s in per_schema if s["outcome"] == "incomplete")
    report = {
        "total": len(per_schema),
        "valid": valid,
        "incomplete": incomplete,
        "refused": refused,
        "failures": failures,
        "per_schema": per_schema,
    }
    pathlib.Path(report_path).write_text(json.dumps(report, indent=2) + "\n")

    # Without the optional format packages jsonschema silently skips some formats
    # (date-time and uri, typically); say so rather than overstate what was checked.
    unchecked = sorted(formats - set(Draft202012Validator.FORMAT_CHECKER.checkers))
    reasons = "; ".join(f"{r['name']}: {r['reason']}" for r in refused) or "none"
    summary = (
        f"{len(per_schema)} schemas against {model}: {valid} valid, {incomplete} incomplete "
        f"(hit max_tokens={MAX_TOKENS}), {len(refused)} refused, {len(failures)} failed. "
        f"Refusals: {reasons}."
    )
    if unchecked:
        summary += f" Formats not checked by this jsonschema install: {', '.join(unchecked)}."
    print()
    print(summary)

    for f in failures:
        print(f"FAILED {f['file']} ({f['name']}): {f['error']}", file=sys.stderr)
    if failures:
        sys.exit(1)
    if valid < MIN_VALID:
        print(f"only {valid} schemas came back valid; at least {MIN_VALID} are needed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
