"""The default model (Qwen2.5-Coder-0.5B-Instruct) behind the real server."""
import openai


def test_real_model_answers_and_streams_consistently(real):
    cl = openai.OpenAI(base_url=real.url + "/v1", api_key="unused", max_retries=0)
    msgs = [{"role": "user", "content": "What is 2+2? Answer with the number only."}]
    r = cl.chat.completions.create(model=real.name, messages=msgs, max_tokens=8, temperature=0, logprobs=True)
    assert "4" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    s = list(cl.chat.completions.create(model=real.name, messages=msgs, max_tokens=8, temperature=0, stream=True, logprobs=True))
    assert "".join(c.choices[0].delta.content or "" for c in s if c.choices) == r.choices[0].message.content
    a = [t.logprob for c in s if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    b = [t.logprob for t in r.choices[0].logprobs.content]
    assert len(a) == len(b) and all(abs(x - y) < 1e-4 for x, y in zip(a, b))


def test_real_model_tool_call(real):
    cl = openai.OpenAI(base_url=real.url + "/v1", api_key="unused", max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    r = cl.chat.completions.create(model=real.name, messages=[{"role": "user", "content": "What's the weather in Paris right now?"}],
                                   tools=tools, max_tokens=60, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c.message
    assert c.message.tool_calls[0].function.name == "get_weather"
    import json
    assert json.loads(c.message.tool_calls[0].function.arguments)["city"].lower().startswith("paris")
