// OpenAI API conformance with the official JavaScript SDK against a live slmserve.
// Run by tests/e2e/test_js_conformance.py: SLMSERVE_BASE_URL, SLMSERVE_MODEL and
// SLMSERVE_ENGINE (gguf | onnx) say what to test. Plain node:test, no other dependency.
import assert from "node:assert/strict";
import { test } from "node:test";
import OpenAI from "openai";

const baseURL = process.env.SLMSERVE_BASE_URL;
const model = process.env.SLMSERVE_MODEL;
const engine = process.env.SLMSERVE_ENGINE;
const client = new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: "unused", maxRetries: 0 });
const ask = [{ role: "user", content: "What is the weather in Paris?" }];
const person = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 20 },
    age: { type: "integer", minimum: 0, maximum: 120 },
    city: { type: "string", enum: ["Paris", "Lima", "Oslo"] },
  },
  required: ["name", "age", "city"],
  additionalProperties: false,
};
const weatherTool = {
  type: "function",
  function: {
    name: "get_weather",
    parameters: {
      type: "object",
      properties: { city: { type: "string", maxLength: 20 } },
      required: ["city"],
      additionalProperties: false,
    },
  },
};

function checkPerson(value) {
  assert.deepEqual(Object.keys(value).sort(), ["age", "city", "name"]);
  assert.equal(typeof value.name, "string");
  assert.ok(value.name.length <= 20);
  assert.ok(Number.isInteger(value.age) && value.age >= 0 && value.age <= 120);
  assert.ok(["Paris", "Lima", "Oslo"].includes(value.city));
}

test("chat, non-stream and stream give the same greedy text", async () => {
  const plain = await client.chat.completions.create({ model, messages: ask, max_tokens: 12, temperature: 0 });
  assert.equal(plain.object, "chat.completion");
  assert.ok(plain.choices[0].message.content.length > 0);
  assert.equal(plain.usage.total_tokens, plain.usage.prompt_tokens + plain.usage.completion_tokens);
  const stream = await client.chat.completions.create({
    model, messages: ask, max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  let text = "";
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      text += choice.delta.content ?? "";
      finish = choice.finish_reason ?? finish;
    }
  }
  assert.equal(text, plain.choices[0].message.content);
  assert.equal(finish, plain.choices[0].finish_reason);
  assert.equal(usage.completion_tokens, plain.usage.completion_tokens);
});

test("completions, stream and echo", async () => {
  const done = await client.completions.create({ model, prompt: "The sea is", max_tokens: 6, temperature: 0 });
  assert.equal(done.object, "text_completion");
  const stream = await client.completions.create({ model, prompt: "The sea is", max_tokens: 6, temperature: 0, stream: true });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
  assert.equal(text, done.choices[0].text);
  const echoed = await client.completions.create({ model, prompt: "Once", max_tokens: 2, echo: true });
  assert.ok(echoed.choices[0].text.startsWith("Once"));
});

test("n choices and logprobs", async () => {
  const several = await client.chat.completions.create({ model, messages: ask, max_tokens: 4, n: 2, seed: 1 });
  assert.deepEqual(several.choices.map((c) => c.index), [0, 1]);
  const scored = await client.chat.completions.create({
    model, messages: ask, max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 2,
  });
  const entries = scored.choices[0].logprobs.content;
  assert.equal(entries.length, 4);
  for (const entry of entries) {
    assert.ok(entry.logprob <= 0);
    assert.equal(entry.top_logprobs.length, 2);
    assert.equal(entry.top_logprobs[0].token, entry.token);
  }
});

test("json_schema output, stream and non-stream", async () => {
  const response_format = { type: "json_schema", json_schema: { name: "person", schema: person, strict: true } };
  const messages = [{ role: "user", content: "Give me a person as JSON." }];
  const plain = await client.chat.completions.create({ model, messages, max_tokens: 80, temperature: 0, response_format });
  checkPerson(JSON.parse(plain.choices[0].message.content));
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 80, temperature: 0.8, seed: 4, response_format, stream: true,
  });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
  checkPerson(JSON.parse(text));
});

test("forced tool call, and the SDK's stream helper rebuilds it", async () => {
  const forced = await client.chat.completions.create({
    model, messages: ask, tools: [weatherTool], tool_choice: "required", max_tokens: 60, temperature: 0,
  });
  const choice = forced.choices[0];
  assert.equal(choice.finish_reason, "tool_calls");
  assert.equal(choice.message.tool_calls[0].function.name, "get_weather");
  assert.equal(typeof JSON.parse(choice.message.tool_calls[0].function.arguments).city, "string");
  const runner = client.chat.completions.stream({
    model, messages: ask, tools: [weatherTool],
    tool_choice: { type: "function", function: { name: "get_weather" } }, max_tokens: 60, temperature: 0,
  });
  const final = await runner.finalChatCompletion();
  const call = final.choices[0].message.tool_calls[0];
  assert.ok(call.id.startsWith("call_"));
  assert.equal(typeof JSON.parse(call.function.arguments).city, "string");
});

test("embeddings, or the exact 400", async () => {
  if (engine === "onnx") {
    await assert.rejects(
      client.embeddings.create({ model, input: "hello" }),
      (error) => error instanceof OpenAI.BadRequestError && /cannot produce embeddings/.test(error.message),
    );
    return;
  }
  const result = await client.embeddings.create({ model, input: ["a cat", "a kitten"] });
  assert.equal(result.data.length, 2);
  const [a] = result.data.map((d) => d.embedding);
  const norm = Math.sqrt(a.reduce((sum, v) => sum + v * v, 0));
  assert.ok(Math.abs(norm - 1) < 1e-4);
});

test("errors: unknown model and too long a prompt", async () => {
  await assert.rejects(
    client.chat.completions.create({ model: "no-such-model", messages: ask }),
    (error) => error instanceof OpenAI.NotFoundError && error.code === "model_not_found",
  );
  await assert.rejects(
    client.chat.completions.create({ model, messages: [{ role: "user", content: "word ".repeat(2000) }] }),
    (error) => error instanceof OpenAI.BadRequestError && error.code === "context_length_exceeded",
  );
});
