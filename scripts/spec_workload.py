"""The prompts `make bench-spec` sends: code edits whose answer repeats most of the prompt (rename,
type hints, a bug fix, a docstring, a loop rewritten, a translation of names), and free chat with
nothing to copy. Written for this benchmark."""

INVENTORY = '''class Inventory:
    def __init__(self):
        self.items = {}
        self.history = []

    def add(self, name, count, price):
        if count <= 0:
            raise ValueError("count must be positive")
        entry = self.items.get(name)
        if entry is None:
            self.items[name] = {"count": count, "price": price}
        else:
            entry["count"] += count
            entry["price"] = price
        self.history.append(("add", name, count))

    def remove(self, name, count):
        entry = self.items.get(name)
        if entry is None or entry["count"] < count:
            raise KeyError(name)
        entry["count"] -= count
        if entry["count"] == 0:
            del self.items[name]
        self.history.append(("remove", name, count))

    def value(self):
        total = 0
        for name, entry in self.items.items():
            total += entry["count"] * entry["price"]
        return total

    def report(self):
        lines = []
        for name in sorted(self.items):
            entry = self.items[name]
            lines.append(f"{name}: {entry['count']} at {entry['price']:.2f}")
        return "\\n".join(lines)
'''

PARSER = '''def parse_config(text):
    result = {}
    section = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            result[section] = {}
            continue
        if "=" not in line:
            raise ValueError(f"line {number}: expected key = value")
        key, value = line.split("=", 1)
        key = key.strip()
        value = value.strip()
        if value.isdigit():
            value = int(value)
        elif value.lower() in ("true", "false"):
            value = value.lower() == "true"
        target = result if section is None else result[section]
        target[key] = value
    return result
'''

STATS = '''function summarize(values) {
  if (values.length == 0) {
    return null;
  }
  let total = 0;
  let smallest = values[0];
  let largest = values[0];
  for (let i = 0; i < values.length; i++) {
    total += values[i];
    if (values[i] < smallest) {
      smallest = values[i];
    }
    if (values[i] > largest) {
      largest = values[i];
    }
  }
  const mean = total / values.length;
  let squares = 0;
  for (let i = 0; i < values.length; i++) {
    squares += (values[i] - mean) * (values[i] - mean);
  }
  const spread = Math.sqrt(squares / values.length);
  return { count: values.length, mean: mean, min: smallest, max: largest, spread: spread };
}
'''

QUEUE = '''def schedule(tasks, workers):
    queue = sorted(tasks, key=lambda t: t["priority"])
    assignments = {w: [] for w in workers}
    load = {w: 0 for w in workers}
    for task in queue:
        worker = min(workers, key=lambda w: load[w])
        assignments[worker].append(task["name"])
        load[worker] += task["cost"]
    busiest = max(load.values())
    return assignments, busiest
'''

EDITS = [
    ("Rename the method `value` to `total_value` everywhere in this class and return the whole class, nothing else.", INVENTORY, "python"),
    ("Add type hints to every method of this class. Return the whole class, nothing else.", INVENTORY, "python"),
    ("This parser crashes on a `key = value` line that comes before any section header only if a section with the "
     "same name appears later. Also it ignores lines with `;` comments. Fix both and return the whole function.", PARSER, "python"),
    ("Replace `==` with `===` and `let` with `const` where the variable is never reassigned. Return the whole function.", STATS, "javascript"),
    ("Add a docstring to this function and rename `queue` to `ordered`. Return the whole function.", QUEUE, "python"),
    ("Rename the variable `entry` to `record` everywhere and return the whole class.", INVENTORY, "python"),
]

CHATS = [
    "Write a short story (about 200 words) about a lighthouse keeper who finds a message in a bottle.",
    "Explain, in a few paragraphs, how a hash table handles collisions, with the trade-offs of each approach.",
    "Give me ten ideas for a weekend project that teaches a teenager about electronics, one sentence each.",
]


def edit_messages(nonce):
    """Chat messages for every edit; `nonce` starts the system prompt so no server reuses an earlier round's prefix."""
    return [[{"role": "system", "content": f"Session {nonce}. You are a careful coding assistant."},
             {"role": "user", "content": f"{task}\n\n```{lang}\n{code}```"}] for task, code, lang in EDITS]


def chat_messages(nonce):
    return [[{"role": "system", "content": f"Session {nonce}. You are a helpful assistant."}, {"role": "user", "content": c}]
            for c in CHATS]
