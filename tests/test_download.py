"""data/download_data.py against a local HTTP server on 127.0.0.1 (Range requests, gzip, checksums)."""
import gzip
import hashlib
import http.server
import importlib.util
import os
import socket
import threading

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("download_data", os.path.join(ROOT, "data", "download_data.py"))
dd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dd)

PAYLOAD = ("id\ttext\ttitle\n" + "".join(f"{i}\tpassage number {i}\tT{i}\n" for i in range(1, 5000))).encode()
GZ = gzip.compress(PAYLOAD)
FILES = {"/psgs.tsv.gz": GZ, "/qa.csv": b'q\t["a"]\n'}


class Handler(http.server.BaseHTTPRequestHandler):
    cut_after = None  # drop the connection after this many bytes (once)
    requests = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = FILES.get(self.path)
        if body is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        Handler.requests.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(body):
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        chunk = body[start:]
        if Handler.cut_after is not None:
            chunk, Handler.cut_after = chunk[: Handler.cut_after], None
            self.wfile.write(chunk)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(chunk)


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def table(base):
    return {"data.test.psgs": {"url": base + "/psgs.tsv.gz", "ext": ".tsv", "compressed": True, "desc": ""},
            "data.test.qas.qa": {"url": base + "/qa.csv", "ext": ".csv", "compressed": False, "desc": "",
                                 "sha256": hashlib.sha256(FILES["/qa.csv"]).hexdigest()}}


def test_download_unpacks_and_checks(server, tmp_path):
    t = table(server)
    out = dd.download("data.test.psgs", str(tmp_path), t)
    assert out == str(tmp_path / "downloads" / "data" / "test" / "psgs.tsv")
    assert open(out, "rb").read() == PAYLOAD
    assert not os.path.exists(out + ".part") and not [f for f in os.listdir(os.path.dirname(out)) if f.endswith(".part")]
    qa = dd.download("data.test.qas.qa", str(tmp_path), t)
    assert open(qa, "rb").read() == FILES["/qa.csv"]
    n = len(Handler.requests)
    dd.download("data.test.psgs", str(tmp_path), t)  # complete: skipped, no request
    assert len(Handler.requests) == n


def test_interrupted_download_resumes_with_range(server, tmp_path):
    t = table(server)
    Handler.cut_after = 1000
    with pytest.raises(dd.DownloadError, match="run again to resume"):
        dd.download("data.test.psgs", str(tmp_path), t)
    part = tmp_path / "downloads" / "data" / "test" / "psgs.tsv.gz.part"
    assert part.stat().st_size == 1000
    out = dd.download("data.test.psgs", str(tmp_path), t)
    assert Handler.requests[-1] == "bytes=1000-"
    assert open(out, "rb").read() == PAYLOAD


def test_checksum_mismatch_removes_file(server, tmp_path):
    t = table(server)
    t["data.test.qas.qa"]["sha256"] = "0" * 64
    with pytest.raises(dd.DownloadError, match="does not match"):
        dd.download("data.test.qas.qa", str(tmp_path), t)
    assert not list((tmp_path / "downloads" / "data" / "test" / "qas").iterdir())


def test_offline_is_one_clear_line(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = {"data.x": {"url": f"http://127.0.0.1:{port}/f.csv", "ext": ".csv", "compressed": False, "desc": ""}}
    with pytest.raises(dd.DownloadError) as e:
        dd.download("data.x", str(tmp_path), t, timeout=5)
    assert "cannot connect" in str(e.value) and "offline" in str(e.value) and "\n" not in str(e.value)


def test_http_error_and_prefix_selection(server, tmp_path):
    t = {"data.y": {"url": server + "/missing", "ext": ".csv", "compressed": False, "desc": ""}}
    with pytest.raises(dd.DownloadError, match="HTTP 404"):
        dd.download("data.y", str(tmp_path), t)
    assert dd.select("data.retriever.qas.nq") == ["data.retriever.qas.nq-dev", "data.retriever.qas.nq-test",
                                                  "data.retriever.qas.nq-train"]
    assert "data.wikipedia_split.psgs_w100" in dd.select("data.wikipedia_split.psgs_w100")
    with pytest.raises(dd.DownloadError, match="no resource matches"):
        dd.select("nope")
