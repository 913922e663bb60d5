"""Structured outputs: response_format (json_object, json_schema), tool_choice, and the regex /
choice extension, through the official openai client on the real default model; random schemas
fuzzed through `qwen-serve grammar` and the tiny model; refusals as 400s naming the keyword."""
import concurrent.futures
import datetime
import enum
import json
import os
import random
import re
import subprocess
import tempfile
import uuid
from typing import Literal, Optional, Union

import jsonschema
import openai
import pydantic
import pytest
from pydantic import BaseModel, Field

from conftest import BIN, Server, default_model, thinking_tiny


@pytest.fixture(scope="module")
def fast():
    """The default model with the default settings (int8 compute where the CPU allows)."""
    s = Server(default_model(), "--max-running", "16")
    yield s
    s.stop()


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)


# ---------------------------------------------------------------------------------------------
# 30 Pydantic models, each with the prompt that asks for one.

class Color(str, enum.Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Person(BaseModel):
    name: str
    age: int


class Pet(BaseModel):
    kind: Literal["cat", "dog", "fish"]
    name: str


class MaybeNick(BaseModel):
    name: str
    nickname: Optional[str]


class Address(BaseModel):
    street: str
    city: str
    zip: str = Field(pattern=r"^\d{5}$")


class Customer(BaseModel):
    name: str
    address: Address


class LineItem(BaseModel):
    product: str
    quantity: int = Field(ge=1, le=100)
    price: float = Field(ge=0)


class Order(BaseModel):
    order_id: str
    items: list[LineItem] = Field(min_length=1, max_length=4)


class TreeNode(BaseModel):
    label: str = Field(max_length=20)
    children: list["TreeNode"] = Field(max_length=2)


class Event(BaseModel):
    title: str
    day: datetime.date


class Meeting(BaseModel):
    topic: str
    starts_at: datetime.datetime


class Ticket(BaseModel):
    id: uuid.UUID
    summary: str


class Username(BaseModel):
    username: str = Field(min_length=3, max_length=12)


class Rating(BaseModel):
    stars: int = Field(ge=1, le=5)
    comment: str


class Temperature(BaseModel):
    celsius: float = Field(ge=-90, le=60)


class Flags(BaseModel):
    is_admin: bool
    is_active: bool


class Scores(BaseModel):
    scores: list[int] = Field(min_length=3, max_length=3)


class Paint(BaseModel):
    color: Color
    liters: float


class Cat(BaseModel):
    type: Literal["cat"]
    indoor: bool


class Dog(BaseModel):
    type: Literal["dog"]
    breed: str


class Owner(BaseModel):
    pet: Union[Cat, Dog]


class Product(BaseModel):
    sku: str = Field(pattern=r"^[A-Z]{3}-\d{4}$")
    name: str


class Inventory(BaseModel):
    counts: dict[str, int]


class Dice(BaseModel):
    roll: Literal[1, 2, 3, 4, 5, 6]


class Contact(BaseModel):
    email: str = Field(json_schema_extra={"format": "email"})
    name: str


class Profile(BaseModel):
    name: str
    home: Optional[Address]


class Palette(BaseModel):
    colors: list[Color] = Field(min_length=1, max_length=5)


class Company(BaseModel):
    name: str
    ceo: Person
    departments: list[str] = Field(max_length=4)


class Settings(BaseModel):
    theme: Literal["light", "dark"]
    font_size: int = Field(ge=8, le=32)
    language: str
    notifications: bool
    volume: float = Field(ge=0, le=1)
    timezone: str
    autosave: bool
    max_tabs: int = Field(ge=1, le=50)


class Greeting(BaseModel):
    language: str
    text: str


class Debt(BaseModel):
    balance: int = Field(ge=-1000, le=0)


class Tags(BaseModel):
    tags: Optional[list[str]] = Field(max_length=3)


class Folder(BaseModel):
    name: str = Field(max_length=40)
    subfolders: list["Folder"] = Field(max_length=3)


class Alarm(BaseModel):
    at: datetime.time
    label: str


CASES = [
    (Person, "Describe a fictional person."),
    (Pet, "Describe a pet."),
    (MaybeNick, "Give a name and, if any, a nickname."),
    (Customer, "Invent a customer with a US address."),
    (Order, "Invent an order of two grocery items."),
    (TreeNode, "Give a small tree of animal categories."),
    (Event, "Name an event and the day it happens."),
    (Meeting, "Schedule a meeting about budgets."),
    (Ticket, "Open a support ticket about a broken printer."),
    (Username, "Suggest a username."),
    (Rating, "Rate a restaurant."),
    (Temperature, "What is a pleasant room temperature?"),
    (Flags, "Describe a new, active, non-admin user."),
    (Scores, "Give three test scores."),
    (Paint, "Order some paint."),
    (Owner, "Describe someone's pet."),
    (Product, "Describe a product with its SKU."),
    (Inventory, "Count the fruit in a basket."),
    (Dice, "Roll a die."),
    (Contact, "Give a contact card."),
    (Profile, "Describe a user profile."),
    (Palette, "Pick a color palette."),
    (Company, "Describe a small software company."),
    (Settings, "Give settings for a text editor."),
    (Greeting, "用中文打个招呼。"),
    (Debt, "How much does the account owe?"),
    (Tags, "Tag a blog post about cooking."),
    (Folder, "Show a small project's folder structure."),
    (Alarm, "Set an alarm for the morning."),
    (Address, "Give an address in New York."),
]


def validate(instance, schema):
    jsonschema.validate(instance, schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_parse_thirty_pydantic_models_at_temperature_0_and_1(fast):
    """Every answer that finishes is valid for its model, at temperature 0 and 1. Which answers
    finish depends on the path sampled (and, at temperature 0, on the last bits of the kernels a
    CPU runs): a small model may loop inside a valid object until max_tokens. So what is asserted
    holds for any sample: `parse()` succeeds and jsonschema validates whenever finish_reason is
    "stop", a "length" answer is never parsed, and most answers finish."""
    assert len(CASES) >= 30
    cl = client(fast)

    def run(case, temperature):
        model, prompt = case
        try:
            r = cl.chat.completions.parse(model=fast.name, messages=[{"role": "user", "content": prompt}],
                                          response_format=model, temperature=temperature, seed=11, max_tokens=600)
        except openai.LengthFinishReasonError:
            return model.__name__, temperature, None
        c = r.choices[0]
        assert c.finish_reason == "stop", (model.__name__, temperature, c.message.content)
        assert c.message.parsed is not None, (model.__name__, c.message.content)
        schema = openai.lib._pydantic.to_strict_json_schema(model)
        validate(json.loads(c.message.content), schema)
        return model.__name__, temperature, c.message.content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda a: run(*a), [(c, t) for t in (0, 1) for c in CASES]))
    assert len(results) == 2 * len(CASES)
    finished = [r for r in results if r[2] is not None]
    assert len(finished) >= 0.9 * len(results), [(n, t) for n, t, c in results if c is None]
    # date-time and time have no checker in jsonschema's defaults: parse them here.
    for name, _, content in finished:
        v = json.loads(content)
        if name == "Meeting":
            datetime.datetime.fromisoformat(v["starts_at"])
        if name == "Alarm":
            datetime.time.fromisoformat(v["at"])


def test_json_object_and_streaming(fast):
    cl = client(fast)
    r = cl.chat.completions.create(model=fast.name, messages=[{"role": "user", "content": "List three fruits."}],
                                   response_format={"type": "json_object"}, temperature=0, max_tokens=200)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {"type": "object", "properties": {"fruits": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
              "required": ["fruits"], "additionalProperties": False}
    rf = {"type": "json_schema", "json_schema": {"name": "fruits", "schema": schema, "strict": True}}
    chunks = list(cl.chat.completions.create(model=fast.name, messages=[{"role": "user", "content": "List three fruits."}],
                                             response_format=rf, temperature=0, max_tokens=200, stream=True, logprobs=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    validate(json.loads(text), schema)
    # Log-probabilities are the model's own (before the mask), reported as usual.
    lps = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert lps and all(t.logprob <= 0 for t in lps)


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                                          "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers",
                                      "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                                                     "required": ["a", "b"], "additionalProperties": False}}},
]


def test_tool_choice_required_named_and_single(fast):
    cl = client(fast)
    params = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    msgs = [{"role": "user", "content": "Hello there!"}]  # nothing in it asks for a tool
    for choice, parallel in (("required", None), ({"type": "function", "function": {"name": "add"}}, None), ("required", False)):
        kw = {} if parallel is None else {"parallel_tool_calls": parallel}
        r = cl.chat.completions.create(model=fast.name, messages=msgs, tools=TOOLS, tool_choice=choice, temperature=0, max_tokens=200, **kw)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls", c.message
        calls = c.message.tool_calls
        assert calls
        if parallel is False:
            assert len(calls) == 1
        for call in calls:
            if isinstance(choice, dict):
                assert call.function.name == "add"
            validate(json.loads(call.function.arguments), params[call.function.name])
    # "auto" stays free: a greeting gets words, not a call.
    r = cl.chat.completions.create(model=fast.name, messages=msgs, tools=TOOLS, tool_choice="auto", temperature=0, max_tokens=40)
    assert r.choices[0].message.content


def test_regex_and_choice_extension(fast):
    cl = client(fast)
    r = cl.chat.completions.create(model=fast.name, messages=[{"role": "user", "content": "Is this review positive? 'I loved it.'"}],
                                   temperature=0, max_tokens=10, extra_body={"choice": ["positive", "negative", "neutral"]})
    assert r.choices[0].message.content in ("positive", "negative", "neutral")
    r = cl.completions.create(model=fast.name, prompt="A US phone number: ", temperature=1, seed=3, max_tokens=30,
                              extra_body={"regex": r"\(\d{3}\) \d{3}-\d{4}"})
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", r.choices[0].text), r.choices[0].text
    r = cl.chat.completions.create(model=fast.name, messages=[{"role": "user", "content": "Pick a number."}], n=3, temperature=1, seed=5,
                                   max_tokens=10, extra_body={"guided_regex": "[1-9][0-9]?"})
    assert all(re.fullmatch("[1-9][0-9]?", c.message.content) for c in r.choices)


def test_a_schema_too_large_to_compile_is_a_400(tiny):
    # Long enums compile to a handful of nodes (a trie with literal tails); 25,000 properties do not.
    schema = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(25000)}}
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "big", "schema": schema}}}
    status, r = tiny.json("POST", "/v1/chat/completions", body)
    assert status == 400 and r["error"]["code"] == "unsupported_schema" and "too large" in r["error"]["message"], r
    # 10,000 optional properties compile, and the first step's alternatives are bounded.
    schema = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(10000)}}
    body["response_format"]["json_schema"]["schema"] = schema
    body["max_tokens"] = 8
    status, r = tiny.json("POST", "/v1/chat/completions", body)
    assert status == 200, r
    # The server goes on serving.
    assert tiny.json("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})[0] == 200


@pytest.mark.parametrize("body,param,needle", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}]}}}}}},
     "response_format", "oneOf"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "number", "multipleOf": 2}}}}, "response_format", "multipleOf"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "format": "hostname"}}}}, "response_format", "hostname"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(?!a)b"}}}}, "response_format", "look-around"),
    ({"response_format": {"type": "yaml"}}, "response_format", "yaml"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format", "name"),
    ({"response_format": {"type": "json_object"}, "regex": "a+"}, "regex", "both"),
    ({"regex": "(a"}, "regex", "("),
    ({"choice": []}, "choice", "choice"),
    ({"tool_choice": "required"}, "tool_choice", "tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"not": {}}}}}}],
      "tool_choice": "required"}, "tools", "not"),
])
def test_unsupported_constraints_are_400s_naming_the_problem(tiny, body, param, needle):
    status, r = tiny.json("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body})
    assert status == 400, r
    err = r["error"]
    assert err["param"] == param and needle in err["message"], err


# ---------------------------------------------------------------------------------------------
# Fuzz: random schemas from the supported subset.

def random_schema(rng, depth=0, defs=None):
    kinds = ["string", "integer", "number", "boolean", "null", "enum", "const"]
    if depth < 3:
        kinds += ["object", "object", "array", "anyOf"]
    k = rng.choice(kinds)
    if k == "string":
        s = {"type": "string"}
        r = rng.random()
        if r < 0.25:
            s["pattern"] = rng.choice([r"^[a-z]{1,5}$", r"\d{2}-\d{2}", r"(ab|cd)+x?", r"[A-F0-9]{4}", r"^\w+@\w+\.com$", r"[^\"\\]{0,3}é"])
        elif r < 0.45:
            s["format"] = rng.choice(["date", "date-time", "time", "uuid", "email", "ipv4"])
        if rng.random() < 0.5 and "pattern" not in s:
            lo = rng.randint(0, 3)
            s["minLength"], s["maxLength"] = lo, lo + rng.randint(0, 6)
            if "format" in s:
                s["minLength"] = 0
                s["maxLength"] = 60
        return s
    if k in ("integer", "number"):
        s = {"type": k}
        if rng.random() < 0.6:
            lo = rng.randint(-50, 50)
            s[rng.choice(["minimum", "exclusiveMinimum"])] = lo if k == "integer" else lo + rng.random()
            s[rng.choice(["maximum", "exclusiveMaximum"])] = lo + rng.randint(2, 100)
        return s
    if k in ("boolean", "null"):
        return {"type": k}
    if k == "enum":
        return {"enum": rng.sample(["a", "b", "a b", 1, 2.5, None, True, "小鹅", {"x": 1}, [1, 2]], rng.randint(1, 4))}
    if k == "const":
        return {"const": rng.choice(["fixed", 7, False, {"k": "v"}])}
    if k == "array":
        lo = rng.randint(0, 2)
        return {"type": "array", "items": random_schema(rng, depth + 1, defs), "minItems": lo, "maxItems": lo + rng.randint(0, 3)}
    if k == "anyOf":
        return {"anyOf": [random_schema(rng, depth + 1, defs) for _ in range(rng.randint(1, 3))]}
    props = {f"p{i}": random_schema(rng, depth + 1, defs) for i in range(rng.randint(0, 4))}
    s = {"type": "object", "properties": props, "required": [p for p in props if rng.random() < 0.6], "additionalProperties": False,
         "title": "ignored", "description": "ignored"}
    if not props:
        s = {"type": "object", "additionalProperties": random_schema(rng, depth + 1, defs), "maxProperties": 2}
    return s


def test_fuzz_random_schemas_sample_valid_documents():
    rng = random.Random(1234)
    checked = 0
    with tempfile.TemporaryDirectory() as d:
        for i in range(60):
            schema = random_schema(rng)
            if rng.random() < 0.3:  # recursion through $defs
                schema = {"$defs": {"node": {"type": "object", "properties": {"v": schema, "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}},
                                             "required": ["v", "next"], "additionalProperties": False}},
                          "$ref": "#/$defs/node"}
            path = os.path.join(d, f"s{i}.json")
            with open(path, "w") as f:
                json.dump(schema, f)
            out = subprocess.run([BIN, "grammar", "--schema", path, "--sample", "15", "--seed", str(i)], capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, (schema, out.stderr)
            for line in out.stdout.split("\n")[:-1]:
                text = json.loads(line)
                if text is None:
                    continue  # a walk that ran long (free strings): nothing to check
                value = json.loads(text)
                validate(value, schema)
                checked += 1
    assert checked > 500


@pytest.mark.parametrize("schema,needle", [
    ({"type": "object", "if": {}}, "'if'"),
    ({"type": "array", "prefixItems": []}, "prefixItems"),
    ({"type": "string", "pattern": "\\bword"}, "word boundaries"),
    ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "allOf"),
])
def test_grammar_cli_refuses_unsupported_keywords_naming_the_file(schema, needle):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(schema, f)
    out = subprocess.run([BIN, "grammar", "--schema", f.name, "--sample", "1"], capture_output=True, text=True)
    os.unlink(f.name)
    assert out.returncode == 1 and f.name in out.stderr and needle in out.stderr, out.stderr


def test_tiny_model_random_outputs_follow_random_schemas(tiny):
    """The tiny random model samples nearly uniformly among the allowed tokens: a random walk over
    tokens (not bytes) through the server, batched with unconstrained requests."""
    rng = random.Random(99)
    bodies = []
    for i in range(24):
        schema = random_schema(rng)
        bodies.append((schema, {"messages": [{"role": "user", "content": f"case {i}"}], "temperature": 1, "seed": i, "max_tokens": 160,
                                "chat_template_kwargs": {"enable_thinking": False},
                                "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}))
    free = {"messages": [{"role": "user", "content": "free"}], "max_tokens": 40, "temperature": 1}

    def run(item):
        schema, body = item
        status, r = tiny.json("POST", "/v1/chat/completions", body)
        assert status == 200, r
        return schema, r

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        frees = [pool.submit(tiny.json, "POST", "/v1/chat/completions", free) for _ in range(4)]
        results = list(pool.map(run, bodies))
        assert all(f.result()[0] == 200 for f in frees)
    finished = 0
    for schema, r in results:
        c = r["choices"][0]
        if c["finish_reason"] == "length":
            continue  # a free string the random model never closed
        validate(json.loads(c["message"]["content"]), schema)
        finished += 1
    assert finished >= 10


def test_reasoning_comes_before_the_constrained_answer(tmp_path, tiny_tokenizer):
    """A thinking model (the tiny Qwen3 with Qwen3's template) must open and close its reasoning,
    then answer under the grammar; with enable_thinking false the template closes it and the
    grammar starts at once."""
    s = Server(str(thinking_tiny(tmp_path)), "--kv-cache-gb", "0.05")
    try:
        close = tiny_tokenizer.token_to_id("</think>")
        body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 1, "seed": 1, "max_tokens": 40,
                "choice": ["alpha", "beta"], "logit_bias": {str(close): 100}, "logprobs": True}
        status, r = s.json("POST", "/v1/chat/completions", body)
        assert status == 200, r
        c = r["choices"][0]
        tokens = [t["token"] for t in c["logprobs"]["content"]]
        assert tokens[0] == "<think>" and "</think>" in tokens, tokens
        assert c["finish_reason"] == "stop" and c["message"]["content"].strip() in ("alpha", "beta"), c
        body = {**body, "chat_template_kwargs": {"enable_thinking": False}, "logit_bias": {}}
        status, r = s.json("POST", "/v1/chat/completions", body)
        assert r["choices"][0]["message"]["content"] in ("alpha", "beta")
        assert r["choices"][0]["finish_reason"] == "stop"
    finally:
        s.stop()
