"""The HTTP server as a product: several workers on one port, a bounded queue (503 + Retry-After),
request time limits, SIGTERM draining, API keys, CORS, the access log, a short run of
bench/load.py, the search page in a real headless Chromium, and workers sharing a Milvus server.
Every test talks to a real server process on 127.0.0.1 through a real HTTP client."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import ROOT, run_cli, sample_head
from dpr_paddle.common.net import free_port, wait_healthy

KEY = "s3cret-key"


class Server:
    """`python -m dpr_paddle.serve ARGS` on a free port; its output goes to a file the tests read."""

    def __init__(self, tmp, *args, env=None, key=None):
        self.port, self.key = free_port(), key
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server_{self.port}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "dpr_paddle.serve", "--port", str(self.port),
                                      *map(str, args)], cwd=ROOT, stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
        try:
            assert wait_healthy(self.url + "/health", self.proc, 180, self.headers()), self.output()[-3000:]
        except TimeoutError:
            self.stop()
            raise AssertionError("server did not start: " + self.output()[-3000:]) from None

    def headers(self):
        return {"X-API-Key": self.key} if self.key else {}

    def post(self, body, **kw):
        import httpx

        return httpx.post(self.url + "/search", json=body, headers={**self.headers(), **kw.pop("headers", {})},
                          timeout=kw.pop("timeout", 60), **kw)

    def output(self):
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_dir):
    """60 sample passages in 2 tiny-encoder shards, and the whole sample (2,200 passages) for BM25."""
    d = tmp_path_factory.mktemp("serving")
    sample_head(sample_dir, str(d), 60)
    for shard in (0, 1):
        run_cli("generate_dense_embedding.py", "--model_name_or_path", "tiny", "--ctx_file", d / "p.tsv",
                "--out_file", d / "emb", "--shard_id", shard, "--num_shards", 2, "--max_passage_length", 48)
    shutil.copy(os.path.join(sample_dir, "passages.tsv"), d / "big.tsv")
    questions = [line.split("\t")[0] for line in open(os.path.join(sample_dir, "qa_test.csv"), encoding="utf-8")]
    (d / "qa.csv").write_text("".join(q + "\t[]\n" for q in questions[:40]), encoding="utf-8")
    return d


def dense_flags(corpus):
    return ["--model_name_or_path", "tiny", "--max_passage_length", 48, "--ctx_file", corpus / "p.tsv",
            "--encoded_ctx_file", corpus / "emb_*", "--bm25_index", corpus / "bm25"]


@pytest.fixture(scope="module")
def hybrid(corpus, tmp_path_factory):
    """Two workers over one hnsw graph, dense + BM25 + hybrid, with an API key and one CORS origin."""
    server = Server(tmp_path_factory.mktemp("hybrid"), *dense_flags(corpus), "--hnsw_index", "--hybrid",
                    "--workers", 2, "--cors_origins", "http://ui.example", env={"DPR_PADDLE_API_KEY": KEY}, key=KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bm25(corpus, tmp_path_factory):
    """One BM25 worker over 2,200 passages with a queue of 2 requests, no search page."""
    server = Server(tmp_path_factory.mktemp("bm25"), "--bm25", "--ctx_file", corpus / "big.tsv", "--bm25_index",
                    corpus / "bm25_big", "--max_queue", 2, "--no_ui")
    yield server
    server.stop()


def questions(corpus, n=40):
    return [line.split("\t")[0] for line in (corpus / "qa.csv").read_text(encoding="utf-8").splitlines()][:n]


# --------------------------------------------------------------------------- workers

def test_two_workers_answer_as_the_api_does_in_every_mode(hybrid, corpus):
    import httpx

    from dpr_paddle import Retriever

    pids = set()
    for _ in range(60):  # a fresh connection each time: the kernel hands them to either worker
        h = httpx.get(hybrid.url + "/health", headers=hybrid.headers(), timeout=10).json()
        pids.add(h["pid"])
        assert h["ready"] and h["modes"] == ["dense", "bm25", "hybrid"] and h["index"] == "hnsw"
    assert len(pids) == 2, pids
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(hybrid.proc.pid)], capture_output=True, text=True)
    assert {int(p) for p in children.stdout.split()} == pids  # the parent supervises, the workers answer

    r = Retriever.load("tiny", index=str(corpus / "emb_*"), passages=str(corpus / "p.tsv"), mode="hybrid", hnsw=True,
                       bm25_index=str(corpus / "bm25"), max_passage_length=48)
    qs = questions(corpus, 8)
    for mode in ("dense", "bm25", "hybrid"):
        got = hybrid.post({"queries": qs, "k": 5, "mode": mode})
        assert got.status_code == 200 and got.json()["mode"] == mode and got.json()["took_ms"] > 0
        want = r.search(qs, k=5, mode=mode)
        assert [[h["id"] for h in row] for row in got.json()["results"]] == [[h["id"] for h in row] for row in want]
    assert hybrid.post({"queries": qs, "k": 5, "mode": "sparse"}).status_code == 422


def test_an_extra_worker_shares_the_graph_and_shards(hybrid):
    """The parent loaded the graph and mapped the shards before forking: a worker's private memory
    is its model and runtime, and the graph's pages are shared (Pss < Rss)."""
    pids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(hybrid.proc.pid)], capture_output=True, text=True)
    for pid in pids.stdout.split():
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = {line.split(":")[0]: int(line.split()[1]) for line in f if line.split()[-1] == "kB"}
        assert fields["Shared_Clean"] + fields["Shared_Dirty"] > 0


def test_short_load_run_meets_the_targets(hybrid, corpus):
    """bench/load.py with a few hundred requests: no 5xx, malformed -> 4xx JSON, equal answers, bounded RSS."""
    out = corpus / "load.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "load.py"), "--qa_file", str(corpus / "qa.csv"),
                           "--url", hybrid.url, "--pid", str(hybrid.proc.pid), "--requests", "400", "--clients", "16",
                           "--time_limit", "120", "--json", str(out), "--check"],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, DPR_PADDLE_API_KEY=KEY))
    report = json.loads(out.read_text())
    assert proc.returncode == 0, (report, proc.stderr[-2000:])
    assert report["requests"] == 400 and all(report["targets"].values())
    assert report["status"]["200"] > 250 and set(report["status"]) <= {"200", "400", "422"}


# --------------------------------------------------------------------------- access

def test_api_key_is_checked_on_every_request_but_the_page(hybrid):
    import httpx

    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for r in (httpx.get(hybrid.url + "/health", headers=headers),
                  httpx.post(hybrid.url + "/search", json={"queries": ["q"]}, headers=headers)):
            assert r.status_code == 401 and r.json() == {"detail": "unauthorized"}
    ok = httpx.post(hybrid.url + "/search", json={"queries": ["q"]}, headers={"Authorization": "Bearer " + KEY})
    assert ok.status_code == 200
    assert httpx.get(hybrid.url + "/").status_code == 200  # the static page holds no data
    assert httpx.get(hybrid.url + "/favicon.ico").status_code == 204  # nor its icon (none: no 404 either)


def test_binding_beyond_loopback_needs_a_key(corpus):
    proc = subprocess.run([sys.executable, "-m", "dpr_paddle.serve", "--bm25", "--ctx_file", str(corpus / "p.tsv"),
                           "--host", "0.0.0.0", "--port", str(free_port())], capture_output=True, text=True, cwd=ROOT,
                          env={k: v for k, v in os.environ.items() if k != "DPR_PADDLE_API_KEY"}, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--host 0.0.0.0 lets other machines in: set an API key" in proc.stderr.strip().splitlines()[-1]


def test_cors_only_for_the_origins_given(hybrid, bm25):
    import httpx

    preflight = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST"}
    r = httpx.options(hybrid.url + "/search", headers=preflight)
    assert r.headers.get("access-control-allow-origin") == "http://ui.example"
    r = httpx.post(bm25.url + "/search", json={"queries": ["q"]}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    assert httpx.options(bm25.url + "/search", headers=preflight).headers.get("access-control-allow-origin") is None


def test_each_request_is_one_log_line(hybrid):
    hybrid.post({"queries": ["log me"], "k": 3})
    hybrid.post({"queries": [""], "k": 3})
    time.sleep(0.5)
    lines = [line for line in hybrid.output().splitlines() if "dpr_paddle.serving.access" in line]
    assert any(" POST /search 200 " in line for line in lines) and any(" POST /search 422 " in line for line in lines)
    assert all(line.rstrip().endswith(" ms") for line in lines)


# --------------------------------------------------------------------------- overload, time limits, shutdown

def heavy(server, n=256, k=1000):
    body = {"queries": [f"history of the river {i} city council war" for i in range(n)], "k": k}
    return server.post(body, timeout=120)


def test_a_full_queue_answers_503_with_retry_after(bm25):
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: heavy(bm25), range(24)))
    codes = [r.status_code for r in answers]
    # the request being searched and the two waiting are answered; the rest are turned away at once
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and 503 in codes, codes
    for r in answers:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1 and r.json()["detail"] == "busy: try again shortly"
    h = bm25.post({"queries": ["still alive"], "k": 2})
    assert h.status_code == 200  # and nothing is left waiting
    assert "Traceback" not in bm25.output()


def test_a_request_waiting_past_its_time_limit_gets_503(corpus, tmp_path):
    server = Server(tmp_path, "--bm25", "--ctx_file", corpus / "big.tsv", "--bm25_index", corpus / "bm25_big",
                    "--max_batch", 1, "--request_timeout", 0.2, "--no_ui")
    try:
        with ThreadPoolExecutor(6) as pool:  # one at a time (max_batch 1): the later ones wait too long
            answers = list(pool.map(lambda _: heavy(server), range(6)))
        late = [r for r in answers if r.status_code == 503]
        assert {r.status_code for r in answers} <= {200, 503} and late, [r.status_code for r in answers]
        assert all(r.json()["detail"] == "not answered within 0.2 s: try again shortly" and r.headers["retry-after"]
                   for r in late)
        assert server.post({"queries": ["after"], "k": 1}, timeout=60).status_code in (200, 503)
    finally:
        server.stop()


def test_the_batcher_does_not_start_a_request_past_its_deadline():
    """The time limit holds even when the search thread keeps the GIL (the asyncio timer then fires late
    and, on Python 3.11, hands back the late answer): the batcher itself refuses a request whose
    deadline passed while it waited."""
    from dpr_paddle.serving.http import MicroBatcher, TimedOut

    class BusyRetriever:  # a search that computes in Python for 0.3 s, as BM25 scoring does
        def search(self, questions, k, mode=None):
            end = time.monotonic() + 0.3
            while time.monotonic() < end:
                sum(range(1000))
            return [[{"q": q}] for q in questions]

    batcher = MicroBatcher(BusyRetriever(), max_batch=1, max_queue=8, timeout=0.1)
    futures = [batcher.submit([f"q{i}"], 1) for i in range(3)]
    assert futures[0].result(timeout=10) == [[{"q": "q0"}]]  # started at once, within its limit
    for late in futures[1:]:  # their turn came 0.3 s and 0.6 s after they were queued
        with pytest.raises(TimedOut):
            late.result(timeout=10)
    assert batcher.submit(["after"], 1).result(timeout=10) == [[{"q": "after"}]]


def test_no_search_page_with_no_ui(bm25):
    import httpx

    assert httpx.get(bm25.url + "/").status_code == 404


def test_sigterm_lets_in_flight_requests_finish(corpus, tmp_path):
    import httpx

    server = Server(tmp_path, "--bm25", "--ctx_file", corpus / "big.tsv", "--bm25_index", corpus / "bm25_big",
                    "--max_batch", 1)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(heavy(server, k=500))) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.time() + 30
    while time.time() < deadline:  # wait until every request is in the server's hands (or answered)
        h = httpx.get(server.url + "/health").json()
        if h["queued"] + h["in_flight"] >= 3 and h["queued"] + h["in_flight"] + len(answers) >= 6:
            break
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=120)
    assert [r.status_code for r in answers] == [200] * 6
    # uvicorn raises the signal again once drained: the process ends "terminated by SIGTERM", as managers expect
    assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/health", timeout=2)


# --------------------------------------------------------------------------- the search page, in Chromium

def chrome():
    """A headless Chromium driven by Selenium (Debian's chromium + chromium-driver; .ci/run installs them)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing on CI (.ci/run installs them)")
        pytest.skip("apt install chromium chromium-driver for the browser test")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def test_search_page_shows_what_the_api_answers(hybrid, corpus, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    question = questions(corpus, 3)[2]
    driver = chrome()
    try:
        driver.get(hybrid.url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "key").is_displayed())  # the server wants a key
        driver.find_element(By.ID, "key").send_keys(KEY)
        driver.find_element(By.ID, "q").send_keys(question)
        k = driver.find_element(By.ID, "k")
        k.clear()
        k.send_keys("7")
        driver.find_element(By.ID, "answer").send_keys("the")
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-searched") == "1")
        shown = {}
        for col in driver.find_elements(By.CSS_SELECTOR, ".col"):
            assert col.get_attribute("data-state") == "done", col.text
            assert col.find_element(By.CSS_SELECTOR, ".ms").text.endswith("ms)")  # each retriever's latency
            shown[col.get_attribute("data-mode")] = [li.get_attribute("data-id") for li in
                                                     col.find_elements(By.CSS_SELECTOR, "li[data-id]")]
        assert list(shown) == ["dense", "bm25", "hybrid"]
        for mode, ids in shown.items():
            want = hybrid.post({"queries": [question], "k": 7, "mode": mode}).json()["results"][0]
            assert ids == [h["id"] for h in want], mode
        assert driver.find_elements(By.CSS_SELECTOR, "mark.answer")  # the typed answer is highlighted
        driver.save_screenshot(str(tmp_path / "page.png"))
        # nothing visible to search: said, and the last question's results go (the server's own rule)
        driver.find_element(By.ID, "q").clear()
        driver.find_element(By.ID, "q").send_keys("\u200b \u3164")
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: "Nothing to search" in d.find_element(By.ID, "status").text)
        assert not driver.find_elements(By.CSS_SELECTOR, "li[data-id]")
        # a reload keeps the key for the tab's session (and searches the question in the address again)
        driver.refresh()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-searched") == "1")
        assert driver.find_element(By.ID, "key").get_attribute("value") == KEY
        assert "passages" in driver.find_element(By.ID, "about").text

        def submitted(n):
            driver.find_element(By.ID, "go").click()
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-searched") == str(n))

        # an error is said once, in plain words, with the limit; no column shows it as a result
        driver.execute_script("document.getElementById('q').value = 'why ' + 'x'.repeat(2100);")
        submitted(2)
        status = driver.find_element(By.ID, "status").text
        assert status == "This question is too long: 2104 characters, and the server takes at most 2000."
        assert not driver.find_elements(By.CSS_SELECTOR, "li")
        # a wrong key is told apart from a missing one
        driver.find_element(By.ID, "key").clear()
        driver.find_element(By.ID, "key").send_keys("wrong-key")
        driver.find_element(By.ID, "q").clear()
        driver.find_element(By.ID, "q").send_keys(question)
        submitted(3)
        assert driver.find_element(By.ID, "status").text == "The server refused this API key: check it, then search again."
    finally:
        driver.quit()


# --------------------------------------------------------------------------- workers on a Milvus server

def test_two_workers_share_a_milvus_server(corpus, milvus_server, tmp_path):
    from dpr_paddle import Retriever

    server = Server(tmp_path, *dense_flags(corpus), "--index", "milvus", "--milvus_uri", milvus_server,
                    "--milvus_collection", "serving_workers", "--milvus_index_type", "FLAT", "--workers", 2)
    try:
        qs = questions(corpus, 6)
        exact = Retriever.load("tiny", index=str(corpus / "emb_*"), passages=str(corpus / "p.tsv"),
                               max_passage_length=48).search(qs, k=10)
        for _ in range(4):  # the random tiny encoder ties scores to 1e-6: equal up to ties
            for got, want in zip(server.post({"queries": qs, "k": 4}).json()["results"], exact):
                np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want[:4]], atol=1e-5)
                score_of = {h["id"]: h["score"] for h in want}
                assert all(abs(score_of[h["id"]] - h["score"]) <= 1e-5 for h in got)
        assert "Traceback" not in server.output()
    finally:
        server.stop()


def test_the_listening_socket_says_it_is_tcp():
    """asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP; with proto 0 every response
    waited ~40 ms for the client's delayed ACK (measured: 48 ms against 6.5 ms for one question)."""
    from dpr_paddle.serving.workers import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
