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
print("OK", len(pieces), "streamed pieces;", repr(text[:40]))
