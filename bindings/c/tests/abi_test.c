/* The whole C ABI on the real model, as an app would call it.
 *
 * usage: abi_test GOOD.toml TRUNCATED_MODEL.toml FOREIGN_MODEL.toml
 * Exits 0 when every check passes; prints each failure otherwise. Built and
 * run by bindings/c/tests/c_program.rs. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arny.h"

static int failures = 0;

#define CHECK(cond, ...)                                      \
  do {                                                        \
    if (!(cond)) {                                            \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);    \
      fprintf(stderr, __VA_ARGS__);                           \
      fprintf(stderr, " (last error: %s)\n", last_error());   \
      failures++;                                             \
    }                                                         \
  } while (0)

static const char *last_error(void) {
  const char *e = arny_last_error();
  return e ? e : "(none)";
}

static const char *last_kind(void) {
  const char *k = arny_last_error_kind();
  return k ? k : "(none)";
}

struct stream {
  char text[8192];
  size_t len;
  int pieces;
  int stop_after; /* return false after this many pieces; 0 = never */
  atomic_int started;
};

static bool on_token(const char *piece, void *user_data) {
  struct stream *s = user_data;
  size_t n = strlen(piece);
  if (s->len + n < sizeof s->text) {
    memcpy(s->text + s->len, piece, n);
    s->len += n;
    s->text[s->len] = 0;
  }
  s->pieces++;
  atomic_store(&s->started, 1);
  return s->stop_after == 0 || s->pieces < s->stop_after;
}

struct canceller {
  struct stream *stream;
  ArnyCancel *cancel;
};

static void *cancel_when_started(void *arg) {
  struct canceller *c = arg;
  while (!atomic_load(&c->stream->started)) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  arny_cancel(c->cancel);
  return NULL;
}

/* Finds the first `"key":"` in JSON text and copies the string value,
 * undoing the escapes serde_json writes for text (\uXXXX only appears for
 * control characters other than these, which this test never sees). */
static const char *json_str(const char *json, const char *key, char *out, size_t cap) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":\"", key);
  const char *p = strstr(json, pat);
  if (!p) return NULL;
  p += strlen(pat);
  size_t i = 0;
  while (*p && *p != '"' && i + 1 < cap) {
    char c = *p++;
    if (c == '\\') {
      c = *p++;
      switch (c) {
        case 'n': c = '\n'; break;
        case 't': c = '\t'; break;
        case 'r': c = '\r'; break;
        case 'u': return NULL;
        default: break; /* \" \\ \/ */
      }
    }
    out[i++] = c;
  }
  out[i] = 0;
  return out;
}

static void test_arguments_and_config(void) {
  ArnyAssistant *a = NULL;
  CHECK(arny_assistant_create("/nonexistent/arny.toml", &a) == ARNY_CODE_MANIFEST,
        "a missing config is a manifest error");
  CHECK(a == NULL, "no handle on failure");
  CHECK(strstr(last_error(), "/nonexistent/arny.toml") != NULL, "the message names the file");
  CHECK(strcmp(last_kind(), "manifest") == 0, "kind is manifest, got %s", last_kind());

  CHECK(arny_assistant_create_from_toml("plan = \"hybrid\"\nmemory_budget = [", NULL, &a) ==
            ARNY_CODE_MANIFEST,
        "malformed TOML is a manifest error");
  CHECK(arny_assistant_create_from_toml("plan = \"hybrid\"\nbogus_key = 1\n", NULL, &a) ==
            ARNY_CODE_MANIFEST,
        "an unknown key is a manifest error");
  CHECK(arny_assistant_create(NULL, NULL) == ARNY_CODE_INVALID_ARGUMENT, "null out");
  CHECK(strcmp(last_kind(), "invalid_argument") == 0, "kind is invalid_argument");
  char *out = NULL;
  CHECK(arny_route(NULL, "hi", &out) == ARNY_CODE_INVALID_ARGUMENT, "null handle");
  CHECK(out == NULL, "no output on failure");
  arny_assistant_destroy(NULL);
  arny_string_free(NULL);
  arny_cancel(NULL);
  arny_cancel_free(NULL);
}

static void test_bad_model(const char *config, const char *expect_kind) {
  ArnyAssistant *a = NULL;
  /* Hybrid plan: nothing loads until a specialist is asked. */
  CHECK(arny_assistant_create(config, &a) == ARNY_CODE_OK, "create with %s", config);
  if (!a) return;
  char *out = NULL;
  ArnyCode rc = arny_generate(a, "What is 2+2?", NULL, NULL, NULL, NULL, &out);
  CHECK(rc == ARNY_CODE_LOAD_FAILED, "a bad model fails to load (%s), got %d", config, rc);
  CHECK(strcmp(last_kind(), expect_kind) == 0, "kind %s, got %s", expect_kind, last_kind());
  CHECK(out == NULL, "no answer");
  /* The assistant survives: routing needs no model. */
  rc = arny_route(a, "What is 2+2?", &out);
  CHECK(rc == ARNY_CODE_OK, "route after a failed load");
  arny_string_free(out);
  arny_assistant_destroy(a);
}

static void test_real_model(const char *config) {
  ArnyAssistant *a = NULL;
  CHECK(arny_assistant_create(config, &a) == ARNY_CODE_OK, "create from %s", config);
  if (!a) return;
  char label[64];
  char *out = NULL;

  /* Route. */
  CHECK(arny_route(a, "What is 2+2?", &out) == ARNY_CODE_OK, "route math");
  CHECK(out && json_str(out, "label", label, sizeof label) && strcmp(label, "math") == 0,
        "math label, got %s", out ? out : "(null)");
  arny_string_free(out);
  out = NULL;
  CHECK(arny_route(a, "I feel anxious and can't sleep at night", &out) == ARNY_CODE_OK,
        "route wellness");
  CHECK(out && json_str(out, "label", label, sizeof label) && strcmp(label, "wellness") == 0,
        "wellness label, got %s", out ? out : "(null)");
  arny_string_free(out);
  out = NULL;
  CHECK(arny_route(a, "   ", &out) == ARNY_CODE_INVALID_REQUEST, "an empty message");

  /* Generate with streaming; the pieces add up to the answer. */
  struct stream s = {0};
  ArnyCode rc = arny_generate(a, "What is 2+2?", "{\"temperature\":0}", NULL, on_token, &s, &out);
  CHECK(rc == ARNY_CODE_OK, "generate, got %d", rc);
  CHECK(strstr(s.text, "4") != NULL, "the streamed answer contains 4: %s", s.text);
  CHECK(s.pieces > 1, "streamed in pieces (%d)", s.pieces);
  CHECK(out && strstr(out, "\"label\":\"math\"") != NULL, "answer JSON has the decision: %s",
        out ? out : "(null)");
  char text[8192];
  CHECK(out && json_str(out, "text", text, sizeof text) && strcmp(text, s.text) == 0,
        "answer text equals the streamed text: %s", out ? out : "(null)");
  char finish[32];
  CHECK(out && json_str(out, "finish_reason", finish, sizeof finish) &&
            strcmp(finish, "eos") == 0,
        "finished at end of turn: %s", out ? out : "(null)");
  printf("answer: %s\n", s.text);
  arny_string_free(out);
  out = NULL;

  /* Events: the routing decision and the load are there. */
  int routed = 0, loaded = 0;
  for (;;) {
    char *ev = NULL;
    CHECK(arny_next_event(a, &ev) == ARNY_CODE_OK, "next event");
    if (!ev) break;
    if (strstr(ev, "\"event\":\"routed\"")) routed++;
    if (strstr(ev, "\"event\":\"loaded\"")) loaded++;
    arny_string_free(ev);
  }
  CHECK(routed >= 1 && loaded == 1, "events: %d routed, %d loaded", routed, loaded);

  /* Status shows the loaded model. */
  CHECK(arny_status(a, &out) == ARNY_CODE_OK, "status");
  CHECK(out && strstr(out, "\"state\":\"ready\"") != NULL, "a model is ready: %s",
        out ? out : "(null)");
  arny_string_free(out);
  out = NULL;

  /* Cancel from another thread once the first token is out. */
  struct stream c = {0};
  ArnyCancel *cancel = arny_cancel_new();
  struct canceller ctl = {&c, cancel};
  pthread_t t;
  pthread_create(&t, NULL, cancel_when_started, &ctl);
  rc = arny_generate(a, "Write a long letter to a friend about your week, in detail.",
                     "{\"specialist\":\"wellness\",\"max_tokens\":200}", cancel, on_token, &c, &out);
  pthread_join(t, NULL);
  CHECK(rc == ARNY_CODE_OK, "a cancelled generation is not an error");
  CHECK(out && json_str(out, "finish_reason", finish, sizeof finish) &&
            strcmp(finish, "cancelled") == 0,
        "finish_reason cancelled: %s", out ? out : "(null)");
  CHECK(c.pieces >= 1 && c.pieces < 100, "stopped early after %d pieces", c.pieces);
  arny_string_free(out);
  out = NULL;
  arny_cancel_free(cancel);

  /* The callback can stop it too. */
  struct stream three = {0};
  three.stop_after = 3;
  rc = arny_generate(a, "Tell me about your favourite city.", "{\"specialist\":\"logistics\"}", NULL,
                     on_token, &three, &out);
  CHECK(rc == ARNY_CODE_OK && three.pieces == 3 && out && strstr(out, "\"cancelled\""),
        "callback stop after 3 pieces: %d, %s", three.pieces, out ? out : "(null)");
  arny_string_free(out);
  out = NULL;

  /* Typed errors on bad requests. */
  rc = arny_generate(a, "hi", "{\"specialist\":\"astrology\"}", NULL, NULL, NULL, &out);
  CHECK(rc == ARNY_CODE_UNKNOWN_SPECIALIST, "unknown specialist, got %d", rc);
  CHECK(strstr(last_error(), "astrology") != NULL, "names it");
  rc = arny_generate(a, "hi", "{\"max_tokns\":3}", NULL, NULL, NULL, &out);
  CHECK(rc == ARNY_CODE_INVALID_ARGUMENT, "a misspelt option, got %d", rc);
  rc = arny_generate(a, "hi", "not json", NULL, NULL, NULL, &out);
  CHECK(rc == ARNY_CODE_INVALID_ARGUMENT, "options that are not JSON, got %d", rc);

  arny_assistant_destroy(a);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s GOOD.toml TRUNCATED.toml FOREIGN.toml\n", argv[0]);
    return 2;
  }
  CHECK(strlen(arny_version()) > 0, "version");
  test_arguments_and_config();
  test_bad_model(argv[2], "corrupt");
  test_bad_model(argv[3], "wrong_format");
  test_real_model(argv[1]);
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("all C ABI checks passed\n");
  return 0;
}
