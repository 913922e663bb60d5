#!/usr/bin/env python3
"""A stand-in for the Hugging Face hub on loopback, for the download tests.

Serves one directory as the repository given on the command line, with the two routes
the downloader uses (the file listing and /resolve/), the sha256 of each safetensors
file as X-Linked-Etag, and Range requests. --corrupt NAME serves wrong bytes for NAME.
Prints the port on its first line, then one line per request: "GET path range".
"""
import argparse
import hashlib
import http.server
import json
import os
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--dir", required=True)
ap.add_argument("--repo", required=True)
ap.add_argument("--corrupt", default="")
a = ap.parse_args()
files = sorted(f for f in os.listdir(a.dir) if os.path.isfile(os.path.join(a.dir, f)))


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        rng = self.headers.get("Range", "")
        print(f"GET {self.path} {rng}", flush=True)
        if self.path == f"/api/models/{a.repo}/revision/main":
            return self.send(200, json.dumps({"id": a.repo, "siblings": [{"rfilename": f} for f in files]}).encode())
        prefix = f"/{a.repo}/resolve/main/"
        if not self.path.startswith(prefix) or self.path[len(prefix):] not in files:
            return self.send(404, b'{"error":"not found"}')
        name = self.path[len(prefix):]
        data = open(os.path.join(a.dir, name), "rb").read()
        headers = {}
        if name.endswith(".safetensors"):
            headers["X-Linked-Etag"] = '"' + hashlib.sha256(data).hexdigest() + '"'
        if name == a.corrupt:
            data = bytes(reversed(data))
        if rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self.send(206, data[start:], headers)
        self.send(200, data, headers)

    def send(self, status, body, headers=None):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
