// Drives `arny serve` with the official `openai` npm package, as a
// JavaScript app would. Usage: node openai_client.mjs BASE_URL API_KEY
import assert from "node:assert/strict";
import OpenAI from "openai";

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120_000 });

const ids = (await client.models.list()).data.map((m) => m.id);
assert.ok(ids.includes("arny") && ids.includes("math"), String(ids));

// Structured output through the package's parse helper: a strict JSON
// Schema in, `message.parsed` out.
const capital = await client.chat.completions.parse({
  model: "math",
  messages: [{ role: "user", content: "What is the capital of France? Reply in JSON." }],
  temperature: 0,
  max_tokens: 48,
  response_format: {
    type: "json_schema",
    json_schema: {
      name: "capital",
      strict: true,
      schema: {
        type: "object",
        properties: { city: { type: "string", maxLength: 20 } },
        required: ["city"],
        additionalProperties: false,
      },
    },
  },
});
assert.deepEqual(capital.choices[0].message.parsed, { city: "Paris" });

// A strict function tool: the package parses the generated arguments.
const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather in a city.",
    strict: true,
    parameters: {
      type: "object",
      properties: {
        city: { type: "string", maxLength: 30 },
        unit: { type: "string", enum: ["celsius", "fahrenheit"] },
      },
      required: ["city", "unit"],
      additionalProperties: false,
    },
  },
};
const messages = [{ role: "user", content: "What is the weather in Paris, in celsius?" }];
const called = await client.chat.completions.parse({
  model: "logistics",
  messages,
  tools: [weather],
  tool_choice: { type: "function", function: { name: "get_weather" } },
  temperature: 0,
  max_tokens: 64,
});
const choice = called.choices[0];
assert.equal(choice.finish_reason, "tool_calls");
const call = choice.message.tool_calls[0];
assert.equal(call.function.name, "get_weather");
assert.deepEqual(Object.keys(call.function.parsed_arguments).sort(), ["city", "unit"]);

// Streamed tool call: the deltas reassemble into the same kind of call.
const stream = await client.chat.completions.create({
  model: "logistics",
  messages,
  tools: [weather],
  tool_choice: "required",
  temperature: 0,
  max_tokens: 64,
  stream: true,
  stream_options: { include_usage: true },
});
let name = "", args = "", finish = null, usage = null;
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  for (const c of chunk.choices) {
    for (const tc of c.delta.tool_calls ?? []) {
      name += tc.function?.name ?? "";
      args += tc.function?.arguments ?? "";
    }
    finish = c.finish_reason ?? finish;
  }
}
assert.equal(name, "get_weather");
assert.equal(finish, "tool_calls");
assert.ok(JSON.parse(args).city, args);
assert.ok(usage && usage.completion_tokens > 0, JSON.stringify(usage));

// The result goes back as a `tool` message; the answer is prose.
const answer = await client.chat.completions.create({
  model: "logistics",
  messages: [
    ...messages,
    { role: "assistant", content: null, tool_calls: [{ id: call.id, type: "function", function: { name: call.function.name, arguments: call.function.arguments } }] },
    { role: "tool", tool_call_id: call.id, content: '{"temperature": 18}' },
  ],
  tools: [weather],
  tool_choice: "none",
  temperature: 0,
  max_tokens: 32,
});
assert.ok(answer.choices[0].message.content);

// Refusals arrive as the package's typed errors, naming the field.
await assert.rejects(
  client.chat.completions.create({ model: "math", messages, n: 2, best_of: 3 }),
  (e) => e instanceof OpenAI.BadRequestError && e.param === "best_of",
);
await assert.rejects(
  client.chat.completions.create({
    model: "math",
    messages,
    response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "object", if: { required: ["a"] }, then: { required: ["b"] } } } },
  }),
  (e) => e instanceof OpenAI.BadRequestError && e.code === "invalid_constraint" && /"if"/.test(e.message),
);
// Embeddings (the package asks for base64 and decodes it).
const emb = await client.embeddings.create({ model: "math", input: ["The cat sat on the mat.", "A cat is sitting on a mat."] });
assert.equal(emb.data.length, 2);
assert.ok(emb.data[0].embedding.length > 0 && emb.data[0].embedding.length === emb.data[1].embedding.length);
console.log("OK npm openai", JSON.stringify(capital.choices[0].message.parsed), call.function.arguments);
