"""Replaces (or appends) one `## ` section of BENCHMARKS.md, atomically."""
import os


def write_section(repo, name, section, file="BENCHMARKS.md", first=False):
    """`first`: a new section goes right after the title (the table a reader sees first)."""
    path = os.path.join(repo, file)
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    start = text.find("## " + name)
    if start >= 0:
        end = text.find("\n## ", start + 1)
        rest = text[end + 1:] if end >= 0 else ""
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" + rest if rest else "")
    elif first and text.startswith("# "):
        title_end = text.find("\n") + 1
        text = text[:title_end] + "\n" + section.rstrip("\n") + "\n\n" + text[title_end:].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
