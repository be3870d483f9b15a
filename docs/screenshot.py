"""The README's picture of the search page: a server on SQuAD-open (zero-shot MiniLM + BM25, hybrid),
one question asked in a headless Chromium, the page saved as PNG.

    .venv/bin/python docs/screenshot.py --data ../shared/data/squad1_open --emb 'runs/serve/emb_minilm_*' \\
        --out docs/search_page.png

Needs Debian's chromium and chromium-driver (apt) and selenium (requirements-dev.txt); the shards
are generate_dense_embedding.py --model_name_or_path minilm of DATA/passages.tsv.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))


def main() -> None:
    from load import start_server  # bench/load.py: a server on a free port, once /health answers
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--emb", required=True)
    ap.add_argument("--question", default="When did Dyrrachium fall to the Normans?")
    ap.add_argument("--answer", default="1082")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "search_page.png"))
    args = ap.parse_args()

    log = os.path.join(tempfile.mkdtemp(), "server.log")
    server, url = start_server(["--model_name_or_path", "minilm", "--encoded_ctx_file", args.emb, "--ctx_file",
                                os.path.join(args.data, "passages.tsv"), "--hnsw_index", "--hybrid"], log)
    try:
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,1050"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            query = urllib.parse.urlencode({"q": args.question, "k": args.k, "answer": args.answer})
            driver.get(f"{url}/?{query}")
            WebDriverWait(driver, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-searched"))
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(args.out)


if __name__ == "__main__":
    main()
