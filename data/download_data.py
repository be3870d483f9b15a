"""Download DPR's released data (the resource table of DPR's `download_data.py`).

    python data/download_data.py --resource data.wikipedia_split.psgs_w100 --output_dir data
    python data/download_data.py --resource data.retriever.nq      # every resource with this prefix
    python data/download_data.py --resource data.retriever.qas.nq
    python data/download_data.py --list

Files land where DPR puts them: OUTPUT_DIR/downloads/data/retriever/nq-dev.json etc. A download
streams into NAME.part and resumes from it (HTTP Range) after an interruption; `.gz` files are
unpacked as they are read; a file that is already complete is skipped. A SHA-256 is checked
where the table knows one (DPR publishes none for these files; `--sha256` checks your own).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
import shutil
import sys
import urllib.error
import urllib.request

logger = logging.getLogger("download_data")

DPR = "https://dl.fbaipublicfiles.com/dpr"
RESOURCES = {
    "data.wikipedia_split.psgs_w100": {
        "url": f"{DPR}/wikipedia_split/psgs_w100.tsv.gz", "ext": ".tsv", "compressed": True,
        "desc": "Wikipedia (2018-12-20) split into 21M passages of 100 words (no overlap)"},
    "data.retriever.nq-dev": {
        "url": f"{DPR}/data/retriever/biencoder-nq-dev.json.gz", "ext": ".json", "compressed": True,
        "desc": "NQ dev subset with passage pools for validation during retriever training"},
    "data.retriever.nq-train": {
        "url": f"{DPR}/data/retriever/biencoder-nq-train.json.gz", "ext": ".json", "compressed": True,
        "desc": "NQ train subset with passage pools for retriever training"},
    "data.retriever.trivia-dev": {
        "url": f"{DPR}/data/retriever/biencoder-trivia-dev.json.gz", "ext": ".json", "compressed": True,
        "desc": "TriviaQA dev subset with passage pools"},
    "data.retriever.trivia-train": {
        "url": f"{DPR}/data/retriever/biencoder-trivia-train.json.gz", "ext": ".json", "compressed": True,
        "desc": "TriviaQA train subset with passage pools"},
    "data.retriever.squad1-dev": {
        "url": f"{DPR}/data/retriever/biencoder-squad1-dev.json.gz", "ext": ".json", "compressed": True,
        "desc": "SQuAD 1.1 dev subset with passage pools"},
    "data.retriever.squad1-train": {
        "url": f"{DPR}/data/retriever/biencoder-squad1-train.json.gz", "ext": ".json", "compressed": True,
        "desc": "SQuAD 1.1 train subset with passage pools"},
    "data.retriever.qas.nq-dev": {
        "url": f"{DPR}/data/retriever/nq-dev.qa.csv", "ext": ".csv", "compressed": False,
        "desc": "NQ dev questions and answers"},
    "data.retriever.qas.nq-test": {
        "url": f"{DPR}/data/retriever/nq-test.qa.csv", "ext": ".csv", "compressed": False,
        "desc": "NQ test questions and answers"},
    "data.retriever.qas.nq-train": {
        "url": f"{DPR}/data/retriever/nq-train.qa.csv", "ext": ".csv", "compressed": False,
        "desc": "NQ train questions and answers"},
    "data.retriever.qas.trivia-dev": {
        "url": f"{DPR}/data/retriever/trivia-dev.qa.csv.gz", "ext": ".csv", "compressed": True,
        "desc": "TriviaQA dev questions and answers"},
    "data.retriever.qas.trivia-test": {
        "url": f"{DPR}/data/retriever/trivia-test.qa.csv.gz", "ext": ".csv", "compressed": True,
        "desc": "TriviaQA test questions and answers"},
    "data.retriever.qas.trivia-train": {
        "url": f"{DPR}/data/retriever/trivia-train.qa.csv.gz", "ext": ".csv", "compressed": True,
        "desc": "TriviaQA train questions and answers"},
    "data.retriever.qas.squad1-test": {
        "url": f"{DPR}/data/retriever/squad1-test.qa.csv", "ext": ".csv", "compressed": False,
        "desc": "SQuAD-open test questions and answers"},
    "data.retriever.qas.webq-test": {
        "url": f"{DPR}/data/retriever/webquestions-test.qa.csv", "ext": ".csv", "compressed": False,
        "desc": "WebQuestions test questions and answers"},
    "data.retriever.qas.curatedtrec-test": {
        "url": f"{DPR}/data/retriever/curatedtrec-test.qa.csv", "ext": ".csv", "compressed": False,
        "desc": "CuratedTREC test questions and answers (answers are regular expressions: use --match regex)"},
}

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed; the message says which URL and why, in one line."""


def select(prefix: str, table: dict = RESOURCES) -> list:
    """Resource keys equal to or starting with `prefix` (DPR's matching)."""
    keys = [k for k in table if k == prefix or k.startswith(prefix)]
    if not keys:
        raise DownloadError(f"no resource matches {prefix!r}; see --list")
    return keys


def target_path(key: str, spec: dict, output_dir: str) -> str:
    """OUTPUT_DIR/downloads/<dotted path>/<name><ext>, as DPR lays them out."""
    parts = key.split(".")
    return os.path.join(output_dir, "downloads", *parts[:-1], parts[-1] + spec["ext"])


def _open(url: str, offset: int, timeout: float):
    req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http/https URLs from our table or the user)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part file is already complete
            return None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"{url}: cannot connect ({reason}); are you offline? "
                            "Download the file elsewhere and place it at the path shown by --list") from None


def fetch(url: str, part: str, timeout: float = 60.0) -> str:
    """Stream `url` into `part`, continuing a partial file with an HTTP Range request."""
    from tqdm import tqdm

    offset = os.path.getsize(part) if os.path.exists(part) else 0
    resp = _open(url, offset, timeout)
    if resp is None:
        return part
    with resp:
        status = getattr(resp, "status", 200)
        if offset and status != 206:  # the server ignored Range: start over
            logger.info("%s: server does not resume; downloading from the start", url)
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                                            desc=os.path.basename(url), dynamic_ncols=True) as bar:
            try:
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        break
                    f.write(block)
                    bar.update(len(block))
            except OSError as e:
                raise DownloadError(f"{url}: connection lost after {f.tell()} bytes ({e}); run again to resume") from None
        if total is not None and os.path.getsize(part) < total:
            raise DownloadError(f"{url}: got {os.path.getsize(part)} of {total} bytes; run again to resume")
    return part


def sha256_of(path: str) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download(key: str, output_dir: str, table: dict = RESOURCES, sha256: str = None, timeout: float = 60.0) -> str:
    """Download (and unpack) one resource; returns the final path. Complete files are skipped."""
    spec = table[key]
    final = target_path(key, spec, output_dir)
    if os.path.exists(final):
        logger.info("%s exists; skipped", final)
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    name = os.path.basename(spec["url"])
    part = os.path.join(os.path.dirname(final), name + ".part")
    fetch(spec["url"], part, timeout)
    expected = sha256 or spec.get("sha256")
    if expected:
        got = sha256_of(part)
        if got != expected:
            os.remove(part)  # a corrupt file must not be resumed
            raise DownloadError(f"{spec['url']}: SHA-256 {got} does not match the expected {expected}; removed it")
    tmp = final + ".tmp"
    if spec["compressed"]:
        try:
            with gzip.open(part, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
        except (OSError, EOFError) as e:
            os.remove(tmp)
            raise DownloadError(f"{part}: not a complete gzip file ({e}); delete it and run again") from None
        os.remove(part)
    else:
        os.replace(part, tmp)
    os.replace(tmp, final)
    logger.info("wrote %s", final)
    return final


def main(argv=None) -> int:
    """CLI entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resource", help="a resource key or a prefix of keys (e.g. data.retriever.qas.nq)")
    ap.add_argument("--output_dir", default=".", help="root of the downloads/ tree (default: .)")
    ap.add_argument("--sha256", help="expected SHA-256 of the downloaded file (one resource)")
    ap.add_argument("--list", action="store_true", help="list the resources and where they go")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args(argv)
    if args.list or not args.resource:
        for key, spec in RESOURCES.items():
            print(f"{key:42s} {target_path(key, spec, args.output_dir)}  {spec['desc']}")
        return 0
    try:
        for key in select(args.resource):
            download(key, args.output_dir, sha256=args.sha256, timeout=args.timeout)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
