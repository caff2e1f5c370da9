"""The C ABI through Python's ctypes, on the real model.

usage: python3 test_ctypes.py LIBARNY GOOD.toml TRUNCATED.toml FOREIGN.toml

Run by bindings/c/tests/python_ctypes.rs. Doubles as an example of calling
the library from a language with a C FFI.
"""

import ctypes as C
import json
import sys
import threading

OK, INVALID_ARGUMENT, MANIFEST, UNKNOWN_SPECIALIST = 0, 1, 2, 3
LOAD_FAILED, INVALID_REQUEST, INVALID_CONSTRAINT = 5, 11, 13

TOKEN_CB = C.CFUNCTYPE(C.c_bool, C.c_char_p, C.c_void_p)


def load(path):
    lib = C.CDLL(path)
    handle = C.c_void_p
    out_str = C.POINTER(C.c_void_p)  # freed with arny_string_free
    sigs = {
        "arny_version": ([], C.c_char_p),
        "arny_last_error": ([], C.c_char_p),
        "arny_last_error_kind": ([], C.c_char_p),
        "arny_assistant_create": ([C.c_char_p, C.POINTER(handle)], C.c_int),
        "arny_assistant_create_from_toml": ([C.c_char_p, C.c_char_p, C.POINTER(handle)], C.c_int),
        "arny_assistant_destroy": ([handle], None),
        "arny_route": ([handle, C.c_char_p, out_str], C.c_int),
        "arny_generate": (
            [handle, C.c_char_p, C.c_char_p, C.c_void_p, TOKEN_CB, C.c_void_p, out_str],
            C.c_int,
        ),
        "arny_status": ([handle, out_str], C.c_int),
        "arny_next_event": ([handle, out_str], C.c_int),
        "arny_cancel_new": ([], C.c_void_p),
        "arny_cancel": ([C.c_void_p], None),
        "arny_cancel_free": ([C.c_void_p], None),
        "arny_string_free": ([C.c_void_p], None),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


class ArnyError(Exception):
    def __init__(self, code, kind, message):
        super().__init__(f"{kind} ({code}): {message}")
        self.code, self.kind, self.message = code, kind, message


class Assistant:
    """A thin Pythonic wrapper: what an app's binding layer looks like."""

    def __init__(self, lib, config):
        self.lib = lib
        self.h = C.c_void_p()
        self._check(lib.arny_assistant_create(config.encode(), C.byref(self.h)))

    def _check(self, code):
        if code != OK:
            kind = self.lib.arny_last_error_kind().decode()
            raise ArnyError(code, kind, self.lib.arny_last_error().decode())

    def _take(self, ptr):
        if not ptr.value:
            return None
        try:
            return json.loads(C.string_at(ptr.value).decode())
        finally:
            self.lib.arny_string_free(ptr)

    def route(self, text):
        out = C.c_void_p()
        self._check(self.lib.arny_route(self.h, text.encode(), C.byref(out)))
        return self._take(out)

    def generate(self, text, on_piece=None, cancel=None, **options):
        def cb(piece, _user):
            # Only an explicit False stops (list.append returns None).
            return not on_piece or on_piece(piece.decode()) is not False

        callback = TOKEN_CB(cb)  # kept alive for the call
        out = C.c_void_p()
        opts = json.dumps(options).encode() if options else None
        self._check(
            self.lib.arny_generate(self.h, text.encode(), opts, cancel, callback, None, C.byref(out))
        )
        return self._take(out)

    def status(self):
        out = C.c_void_p()
        self._check(self.lib.arny_status(self.h, C.byref(out)))
        return self._take(out)

    def events(self):
        while True:
            out = C.c_void_p()
            self._check(self.lib.arny_next_event(self.h, C.byref(out)))
            e = self._take(out)
            if e is None:
                return
            yield e

    def close(self):
        if self.h:
            self.lib.arny_assistant_destroy(self.h)
            self.h = C.c_void_p()


failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print(f"FAIL: {what}", file=sys.stderr)


def expect_error(fn, code, kind=None):
    try:
        fn()
    except ArnyError as e:
        check(e.code == code, f"code {code}, got {e}")
        if kind:
            check(e.kind == kind, f"kind {kind}, got {e.kind}")
        return e
    check(False, f"expected error {code}")
    return None


def main():
    lib_path, good, truncated, foreign = sys.argv[1:5]
    lib = load(lib_path)
    check(lib.arny_version().decode().count(".") == 2, "version")

    # Bad configs and arguments.
    e = expect_error(lambda: Assistant(lib, "/nonexistent/arny.toml"), MANIFEST, "manifest")
    check(e and "/nonexistent/arny.toml" in e.message, "message names the file")
    h = C.c_void_p()
    check(lib.arny_assistant_create_from_toml(b"plan = [", None, C.byref(h)) == MANIFEST, "bad toml")
    check(lib.arny_route(None, b"hi", None) == INVALID_ARGUMENT, "null handle")

    # Broken model files: a typed load error, and the assistant survives.
    for config, kind in [(truncated, "corrupt"), (foreign, "wrong_format")]:
        a = Assistant(lib, config)
        expect_error(lambda: a.generate("What is 2+2?"), LOAD_FAILED, kind)
        check(a.route("What is 2+2?")["label"] == "math", "routes after a failed load")
        a.close()

    a = Assistant(lib, good)
    check(a.route("What is 2+2?")["label"] == "math", "math label")
    check(
        a.route("I feel anxious and can't sleep at night")["label"] == "wellness",
        "wellness label",
    )
    expect_error(lambda: a.route("  "), INVALID_REQUEST)

    pieces = []
    answer = a.generate("What is 2+2?", pieces.append, temperature=0)
    print("answer:", answer["text"])
    check("4" in answer["text"], f"answer contains 4: {answer['text']!r}")
    check("".join(pieces).startswith(answer["text"]), "streamed pieces make the answer")
    check(len(pieces) > 1, "streamed in pieces")
    check(answer["decision"]["label"] == "math", "decision in the answer")
    check(answer["finish_reason"] == "eos", f"finish {answer['finish_reason']}")
    kinds = [e["event"] for e in a.events()]
    check("routed" in kinds and kinds.count("loaded") == 1, f"events {kinds}")
    status = a.status()
    check(any(m["state"] == "ready" for m in status["memory"]["models"]), "status: ready")

    # Cancel from another thread after the first piece.
    cancel = lib.arny_cancel_new()
    started = threading.Event()
    got = []

    def on_piece(p):
        got.append(p)
        started.set()
        return True

    t = threading.Thread(target=lambda: (started.wait(), lib.arny_cancel(cancel)))
    t.start()
    answer = a.generate(
        "Write a long letter to a friend about your week, in detail.",
        on_piece,
        cancel,
        specialist="wellness",
        max_tokens=200,
    )
    t.join()
    lib.arny_cancel_free(cancel)
    check(answer["finish_reason"] == "cancelled", f"cancelled: {answer['finish_reason']}")
    check(1 <= len(got) < 100, f"stopped early after {len(got)} pieces")

    expect_error(lambda: a.generate("hi", specialist="astrology"), UNKNOWN_SPECIALIST)

    # Structured output: the schema is enforced; an unenforceable one is
    # refused with its own code, naming the keyword.
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    answer = a.generate(
        "What is the capital of France? Reply in JSON.",
        specialist="math",
        temperature=0,
        max_tokens=32,
        json_schema=schema,
    )
    check(not answer["incomplete"], f"complete: {answer}")
    obj = json.loads(answer["text"])
    check(
        set(obj) == {"city"} and isinstance(obj["city"], str) and len(obj["city"]) <= 20,
        f"structured: {answer['text']!r}",
    )
    e = expect_error(
        lambda: a.generate("hi", specialist="math", json_schema={"type": "object", "not": {}}),
        INVALID_CONSTRAINT,
        "invalid_constraint",
    )
    check(e and '"not"' in e.message, "the refusal names the keyword")
    expect_error(lambda: a.generate("hi", max_tokns=3), INVALID_ARGUMENT)
    a.close()

    if failures:
        print(f"{failures} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("all ctypes checks passed")


if __name__ == "__main__":
    main()
