#!/usr/bin/env python3
"""make console-demo: the web console's "done when", on the default model, in headless Chromium.
Chats with the model (token view on), uploads ../shared/data/self_cognition from the Fine-tuning
page, starts a job with the page's defaults and follows its live charts, opens the fine-tune in
Chat, and compares it with the base model side by side. Screenshots go to --out (the README's
come from here; Debian's fonts-noto-cjk draws the Chinese answers); the answers before and after are printed."""
import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "Tests", "api"))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "self_cognition")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(REPO, ".build", "release", "qwen-serve"))
    ap.add_argument("--out", default=os.path.join(REPO, ".build", "console-demo"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--skip-train", action="store_true", help="reuse the last job that succeeded in --out's state (new screenshots only)")
    a = ap.parse_args()
    if not os.path.exists(os.path.join(DATA, "train.jsonl")):
        print(f"skipped: {DATA}/train.jsonl is not there (the reference data lives in ../shared)")
        return
    os.makedirs(a.out, exist_ok=True)
    os.environ["QWEN_SERVE_BIN"] = a.binary
    from conftest import Server
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    import test_console as tc

    model = subprocess.run([a.binary, "fetch", "default"], check=True, capture_output=True, text=True).stdout.strip()
    s = Server(model, "--state-dir", os.path.join(a.out, "state"))
    o = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        o.add_argument(arg)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)
    shot = lambda name: d.save_screenshot(os.path.join(a.out, name + ".png"))  # noqa: E731
    try:
        tc.open_console(d, s, key=None, admin=None)
        out = tc.chat(d, "Write a Python function that checks whether a string is a palindrome, ignoring case and spaces.",
                      max_tokens=160, tokens=True, timeout=300)
        print("chat:", out.get_attribute("data-raw")[:300])
        shot("chat")
        if a.skip_train:
            jobs = s.json("GET", "/v1/fine_tuning/jobs?limit=100")[1]["data"]
            job = next(j["id"] for j in jobs if j["status"] == "succeeded")
            d.get(s.url + "/#tuning")
            tc.wait(d, lambda: d.find_elements(By.CSS_SELECTOR, f"#jobs-table tr[data-job='{job}']"), what="the job listed")
            d.find_element(By.CSS_SELECTOR, f"#jobs-table tr[data-job='{job}']").click()
            tc.wait(d, lambda: tc.q(d, "job-status").text == "succeeded", what="the job page")
            time.sleep(2)
            shot("fine-tuning")
        else:
            d.get(s.url + "/#tuning")
            for name in ("train.jsonl", "valid.jsonl"):
                tc.q(d, "job-upload").send_keys(os.path.join(DATA, name))
                tc.wait(d, lambda: name in tc.q(d, "upload-status").text and "ok" in tc.q(d, "upload-status").get_attribute("class"),
                        what=name)
            tc.wait(d, lambda: "valid.jsonl" in tc.q(d, "job-valid").text, what="the file choices")
            Select(tc.q(d, "job-train")).select_by_visible_text("train.jsonl (87 examples)")
            Select(tc.q(d, "job-valid")).select_by_visible_text("valid.jsonl (21 examples)")
            tc.set_field(d.find_element(By.ID, "job-epochs"), a.epochs)
            tc.set_field(d.find_element(By.ID, "job-suffix"), "xiaoe")
            tc.set_field(d.find_element(By.ID, "job-seed"), 0)
            tc.q(d, "job-create").click()
            job = tc.wait(d, lambda: tc.q(d, "job-title").text.startswith("ftjob-") and tc.q(d, "job-title").text, what="the job page")
            t0 = time.time()
            shot_at = 60
            while tc.q(d, "job-status").text not in ("succeeded", "failed", "cancelled"):
                time.sleep(2)
                if time.time() - t0 > shot_at:
                    shot("fine-tuning-running")
                    shot_at = 1e9
                print(f"\r{tc.q(d, 'job-progress').text} {d.find_element(By.ID, 'job-speed').text} {d.find_element(By.ID, 'job-eta').text}   ",
                      end="", flush=True)
            print(f"\n{job}: {tc.q(d, 'job-status').text} in {time.time() - t0:.0f} s")
            time.sleep(2)
            shot("fine-tuning")
        st, j = s.json("GET", f"/v1/fine_tuning/jobs/{job}")
        tuned = j["fine_tuned_model"]
        d.get(s.url + "/#compare")
        tc.wait(d, lambda: tuned in tc.q(d, "compare-model-b").text, what="the fine-tune listed")
        Select(tc.q(d, "compare-model-a")).select_by_value(s.name)
        Select(tc.q(d, "compare-model-b")).select_by_value(tuned)
        for question in ("What is your name?", "你叫什么名字？"):
            tc.set_field(tc.q(d, "compare-input"), question)
            d.find_element(By.ID, "compare-send").click()
            time.sleep(0.5)
            tc.wait(d, lambda: d.find_element(By.ID, "compare-send").is_enabled(), timeout=300, what="both answers")
            print(f"Q: {question}\n  base: {tc.q(d, 'compare-output-a').get_attribute('data-raw')[:200]}\n"
                  f"  tuned: {tc.q(d, 'compare-output-b').get_attribute('data-raw')[:200]}")
        shot("compare")
        d.get(s.url + "/#server")
        time.sleep(6)
        shot("server")
    finally:
        d.quit()
        s.stop()


if __name__ == "__main__":
    main()
