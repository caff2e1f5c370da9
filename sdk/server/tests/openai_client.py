"""Drives `arny serve` with the official `openai` package, as a third-party app would.

Usage: python openai_client.py BASE_URL API_KEY
"""
import sys

import openai

base_url, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)

ids = [m.id for m in client.models.list().data]
assert ids[0] == "arny" and {"math", "wellness", "logistics"} <= set(ids), ids

# Not streamed, specialist named directly.
r = client.chat.completions.create(
    model="math", messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=96
)
text = r.choices[0].message.content
assert r.object == "chat.completion" and text, r
assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0, r.usage
assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason

# Streamed, routed by the gateway; the system message is the specialist's.
stream = client.chat.completions.create(
    model="arny",
    messages=[{"role": "user", "content": "I feel anxious about my exam tomorrow"}],
    max_tokens=24,
    stream=True,
)
pieces, finish, extra = [], None, None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.choices and chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
        extra = getattr(chunk, "arny", None) or (chunk.model_extra or {}).get("arny")
assert len(pieces) > 3 and finish in ("stop", "length"), (pieces, finish)
assert extra and extra["handler"]["name"] == "wellness", extra

# Errors come back as the exceptions the package defines.
try:
    client.chat.completions.create(model="astrology", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert "astrology" in str(e), e
try:
    openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    raise AssertionError("wrong key accepted")
except openai.AuthenticationError:
    pass

# --- Structured output -------------------------------------------------------
import json

import pydantic


class Capital(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=20)
    country: str = pydantic.Field(max_length=20)


# The package's own helper: a Pydantic model in, a parsed object out.
r = client.chat.completions.parse(
    model="math",
    messages=[{"role": "user", "content": "What is the capital of France? Reply in JSON."}],
    response_format=Capital,
    temperature=0,
    max_tokens=64,
)
parsed = r.choices[0].message.parsed
assert isinstance(parsed, Capital) and parsed.city == "Paris", r

r = client.chat.completions.create(
    model="math",
    messages=[{"role": "user", "content": "Give me a JSON object describing a cat."}],
    response_format={"type": "json_object"},
    temperature=0,
    max_tokens=96,
)
if r.choices[0].finish_reason == "stop":
    assert isinstance(json.loads(r.choices[0].message.content), dict), r

# A keyword the compiler cannot enforce is refused by name, not ignored.
try:
    client.chat.completions.create(
        model="math",
        messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "not": {"required": ["a"]}}}},
    )
    raise AssertionError("unsupported schema accepted")
except openai.BadRequestError as e:
    assert e.code == "invalid_constraint" and '"not"' in str(e), e

# --- Tool calls -------------------------------------------------------------
weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
timer = {
    "type": "function",
    "function": {
        "name": "set_timer",
        "parameters": {
            "type": "object",
            "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 120}},
            "required": ["minutes"],
            "additionalProperties": False,
        },
    },
}
ask = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
    r = client.chat.completions.create(
        model="logistics", messages=ask, tools=[weather, timer], tool_choice=choice,
        temperature=0, max_tokens=64,
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.tool_calls, r
    call = c.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    if choice != "required":
        assert call.function.name == "get_weather", call
    if call.function.name == "get_weather":
        assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit"), args
    else:
        assert 1 <= args["minutes"] <= 120, args

# The result goes back as a `tool` message and the model answers in words.
r2 = client.chat.completions.create(
    model="logistics",
    messages=ask + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18, "sky": "clear"}'},
    ],
    tools=[weather, timer], tool_choice="none", max_tokens=48, temperature=0,
)
assert r2.choices[0].message.content and not r2.choices[0].message.tool_calls, r2

# `auto`: a call or prose, and either way well-formed.
r = client.chat.completions.create(
    model="logistics", messages=ask, tools=[weather], tool_choice="auto", temperature=0, max_tokens=64,
)
c = r.choices[0]
if c.message.tool_calls:
    assert c.finish_reason == "tool_calls" and json.loads(c.message.tool_calls[0].function.arguments)
else:
    assert c.message.content and not c.message.content.lstrip().startswith("{"), c

# Streamed: the call arrives as OpenAI-style deltas.
stream = client.chat.completions.create(
    model="logistics", messages=ask, tools=[weather], tool_choice="required",
    temperature=0, max_tokens=64, stream=True, stream_options={"include_usage": True},
)
name, arguments, finish, usage = None, "", None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for ch in chunk.choices:
        for tc in ch.delta.tool_calls or []:
            name = tc.function.name or name
            arguments += tc.function.arguments or ""
        finish = ch.finish_reason or finish
assert name == "get_weather" and finish == "tool_calls", (name, finish)
assert set(json.loads(arguments)) == {"city", "unit"}, arguments
assert usage and usage.completion_tokens > 0, usage

# --- Sampling and reporting options ---------------------------------------
r = client.chat.completions.create(
    model="math", messages=[{"role": "user", "content": "Name a color."}], n=2, seed=3,
    temperature=1.0, max_tokens=12, logprobs=True, top_logprobs=3,
    presence_penalty=0.5, frequency_penalty=0.5, stop=["\n\n"],
)
assert [c.index for c in r.choices] == [0, 1], r
for c in r.choices:
    lp = c.logprobs.content
    assert lp and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lp), c.logprobs
assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices), r.usage

# Legacy completions: a raw prompt, no chat template.
r = client.completions.create(model="math", prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2)
assert r.object == "text_completion" and "Paris" in r.choices[0].text, r
assert len(r.choices[0].logprobs.tokens) == r.usage.completion_tokens, r

# Nothing is dropped: unknown fields are refused by name.
try:
    client.chat.completions.create(
        model="math", messages=[{"role": "user", "content": "hi"}], extra_body={"mirostat": 2}
    )
    raise AssertionError("unknown field accepted")
except openai.BadRequestError as e:
    assert "mirostat" in str(e) and e.param == "mirostat", e
# Embeddings from llama.cpp (the package asks for base64 and decodes it).
texts = ["The cat sat on the mat.", "A cat is sitting on a mat.", "Stock prices fell sharply today."]
e = client.embeddings.create(model="math", input=texts)
vecs = [d.embedding for d in e.data]
assert len(vecs) == 3 and len(set(map(len, vecs))) == 1 and e.usage.prompt_tokens > 0, e.usage
dot = lambda a, b: sum(x * y for x, y in zip(a, b))
assert abs(dot(vecs[0], vecs[0]) - 1) < 1e-3 and dot(vecs[0], vecs[1]) > dot(vecs[0], vecs[2]), vecs
f = client.embeddings.create(model="math", input=texts[0], encoding_format="float")
assert max(abs(x - y) for x, y in zip(f.data[0].embedding, vecs[0])) < 1e-5

print("OK", len(pieces), "streamed pieces;", repr(text[:40]))
