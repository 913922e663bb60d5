"""The deployment examples say only what this build accepts: every flag the Kubernetes manifest
passes is one `qwen-serve serve` knows, the replicas share the database the manifest runs, and
their secrets are mounted files."""
import os
import re
import subprocess

import yaml

from conftest import BIN, REPO


def test_the_kubernetes_manifest_passes_only_known_flags_and_shares_its_database():
    docs = [d for d in yaml.safe_load_all(open(os.path.join(REPO, "deploy", "kubernetes.yaml"))) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "qwen-serve"), ("Service", "qwen-serve"), ("PodDisruptionBudget", "qwen-serve"),
            ("StatefulSet", "qwen-postgres"), ("Service", "qwen-postgres")} <= kinds
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] >= 2
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = c["args"]
    known = set(re.findall(r"--[a-z0-9-]+", subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True).stdout))
    flags = [a for a in args if a.startswith("--")]
    assert set(flags) <= known, set(flags) - known
    opt = {f: args[args.index(f) + 1] for f in flags if args.index(f) + 1 < len(args) and not args[args.index(f) + 1].startswith("--")}
    assert opt["--state-db"].startswith("postgres://") and "@qwen-postgres:5432/" in opt["--state-db"]
    assert ":" not in opt["--state-db"].split("//")[1].split("@")[0], "no password in the URL"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts[os.path.dirname(opt["--state-db-password-file"])] == "db"
    assert opt["--node-id"] == "$(POD_NAME)" and any(e["name"] == "POD_NAME" for e in c["env"])
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    pg = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    pg_secrets = {v["name"]: v["secret"]["secretName"] for v in pg["volumes"] if "secret" in v}
    assert secrets["db"] == pg_secrets["db"], "both read the same password"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
