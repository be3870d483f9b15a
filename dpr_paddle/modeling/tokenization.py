"""DPR tensorizer: questions alone, passages as (title, text) pairs, dynamic padding.

Passages are always encoded as a pair, so an empty title still gives `[CLS] [SEP] text [SEP]`
(the framing our MiniLM reference fixture records). Truncation is `longest_first` to the
maximum length; padding goes to the longest sequence in the batch, not to the maximum.

Token ids come from HF `tokenizers` (Rust) when the PaddleNLP tokenizer is a WordPiece BERT or
ERNIE tokenizer it can reproduce (`FastWordPiece`): the same normalisation, the same splitting
(PaddleNLP also splits symbols, which HF's BERT pre-tokenizer does not), the same vocabulary
and unknown-word rule; [CLS]/[SEP] framing and longest-first truncation are done here exactly as
PaddleNLP does them. Anything else uses PaddleNLP's Python tokenizer (one log line says so).
Check a corpus before a long run: `python -m dpr_paddle.tokenization --verify CTX_FILE`.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MAX_QUERY_LENGTH = 32  # NQ questions average ~10 WordPiece tokens; 32 truncates <0.1%
DEFAULT_MAX_PASSAGE_LENGTH = 256  # DPR's sequence_length for 100-word passages


# PaddleNLP's BasicTokenizer splits on punctuation *and* symbols (`_is_symbol`: category S* and
# these code points), after lowercasing and accent stripping; it isolates these CJK blocks
_SPLIT_CHARS = r"\p{P}\p{S}!-/:-@\[-`{-~\x{00AD}\x{00B2}\x{00BA}\x{3007}\x{00B5}\x{00D8}\x{014B}\x{01B1}"
_CJK = (r"\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}"
        r"\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}")
FAST_TOKENIZER_CLASSES = ("BertTokenizer", "ErnieTokenizer")


def longest_first(n1: int, n2: int, limit: int) -> Tuple[int, int]:
    """Lengths after PaddleNLP's `longest_first` truncation of a pair to `limit` tokens: one token at
    a time from the longer sequence, from the second when they are equally long."""
    extra = n1 + n2 - limit
    if extra <= 0:
        return n1, n2
    cut = min(extra, abs(n1 - n2))  # first down to equal lengths
    if n1 > n2:
        n1 -= cut
    else:
        n2 -= cut
    extra -= cut
    return n1 - extra // 2, n2 - (extra + 1) // 2  # then alternately, the second first


class FastWordPiece:
    """PaddleNLP BERT/ERNIE WordPiece ids from HF `tokenizers` (see the module doc)."""

    def __init__(self, tokenizer):
        from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import WordPiece

        basic = tokenizer.basic_tokenizer
        lower = bool(basic.do_lower_case)
        strip = lower if basic.strip_accents is None else bool(basic.strip_accents)
        vocab = dict(tokenizer.vocab.token_to_idx)
        self.hf = Tokenizer(WordPiece(vocab, unk_token=tokenizer.unk_token, max_input_chars_per_word=100))
        self.hf.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False,
                                                        strip_accents=strip, lowercase=lower)
        split = f"[{_SPLIT_CHARS}{_CJK if basic.tokenize_chinese_chars else ''}]"
        self.hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(split), behavior="isolated")])
        # special tokens in a text are single tokens, matched before any normalisation, as PaddleNLP does
        self.hf.add_special_tokens(list(dict.fromkeys(tokenizer.all_special_tokens)))
        self.cls, self.sep = tokenizer.cls_token_id, tokenizer.sep_token_id

    def ids(self, texts: Sequence[str]) -> List[List[int]]:
        """WordPiece ids of each text, without special tokens or truncation."""
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)  # no character offsets: ~10% faster
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def unique_ids(self, texts: Sequence[str]) -> List[List[int]]:
        """`ids`, tokenizing each distinct text once (titles repeat: every passage of a page has its title)."""
        distinct = list(dict.fromkeys(texts))
        if len(distinct) == len(texts):
            return self.ids(texts)
        table = dict(zip(distinct, self.ids(distinct)))
        return [table[t] for t in texts]

    def encode(self, first: Sequence[str], second: Optional[Sequence[str]], max_length: int):
        """(input_ids, token_type_ids) per item, framed and truncated as PaddleNLP frames and truncates."""
        if second is None:
            return [([self.cls] + a[: max_length - 2] + [self.sep], [0] * (min(len(a), max_length - 2) + 2))
                    for a in self.ids(first)]
        out = []
        for a, b in zip(self.unique_ids(first), self.ids(second)):
            n1, n2 = longest_first(len(a), len(b), max_length - 3)
            out.append(([self.cls] + a[:n1] + [self.sep] + b[:n2] + [self.sep], [0] * (n1 + 2) + [1] * (n2 + 1)))
        return out


def fast_word_piece(tokenizer) -> Optional[FastWordPiece]:
    """The fast path for `tokenizer`, or None (logged) when it cannot reproduce it."""
    if os.environ.get("DPR_PADDLE_FAST_TOKENIZER", "1") == "0":
        return None
    name = type(tokenizer).__name__
    why = None
    if name not in FAST_TOKENIZER_CLASSES or not getattr(tokenizer, "do_basic_tokenize", True):
        why = f"{name} is not a WordPiece BERT/ERNIE tokenizer"
    elif getattr(tokenizer, "truncation_side", "right") != "right":
        why = "it truncates on the left"
    else:
        try:
            return FastWordPiece(tokenizer)
        except ImportError:
            why = "the tokenizers package is not installed (pip install tokenizers)"
    logger.info("tokenizing with PaddleNLP's Python %s (about 10x slower): %s", name, why)
    return None


class Tensorizer:
    """Turns questions and (title, text) passages into padded int64 numpy arrays."""

    def __init__(self, tokenizer, max_query_length: int = DEFAULT_MAX_QUERY_LENGTH,
                 max_passage_length: int = DEFAULT_MAX_PASSAGE_LENGTH, fast: bool = True):
        if max_query_length < 3 or max_passage_length < 4:
            raise ValueError("max lengths must leave room for [CLS]/[SEP] (query >= 3, passage >= 4)")
        self.tokenizer = tokenizer
        self.max_query_length = max_query_length
        self.max_passage_length = max_passage_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.fast = fast_word_piece(tokenizer) if fast else None

    def _ids(self, first: Sequence[str], second: Sequence[str] = None, max_length: int = 0) -> List[Tuple[List[int], List[int]]]:
        if self.fast is not None:
            return self.fast.encode(first, second, max_length)
        out = []
        for i, a in enumerate(first):
            enc = self.tokenizer(a, text_pair=None if second is None else second[i],
                                 max_length=max_length, truncation=True, return_token_type_ids=True)
            out.append((enc["input_ids"], enc["token_type_ids"]))
        return out

    def pad(self, encoded: List[Tuple[List[int], List[int]]]) -> Dict[str, np.ndarray]:
        """Pad (ids, type_ids) lists to the longest: input_ids, token_type_ids, attention_mask [B, L]."""
        length = max(len(ids) for ids, _ in encoded)
        n = len(encoded)
        input_ids = np.full((n, length), self.pad_id, dtype=np.int64)
        token_type_ids = np.zeros((n, length), dtype=np.int64)
        attention_mask = np.zeros((n, length), dtype=np.int64)
        for i, (ids, types) in enumerate(encoded):
            input_ids[i, : len(ids)] = ids
            token_type_ids[i, : len(types)] = types
            attention_mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}

    def encode_questions_ids(self, questions: Sequence[str]):
        """Unpadded (ids, type_ids) per question."""
        return self._ids(list(questions), None, self.max_query_length)

    def encode_passages_ids(self, passages: Sequence[Tuple[str, str]]):
        """Unpadded (ids, type_ids) per (title, text) passage."""
        titles = [t or "" for t, _ in passages]
        texts = [x for _, x in passages]
        return self._ids(titles, texts, self.max_passage_length)

    def encode_pairs_ids(self, questions: Sequence[str], passages: Sequence[Tuple[str, str]], max_length: int):
        """Unpadded (ids, type_ids) per (question, (title, text)) pair for a cross-encoder:
        `[CLS] question [SEP] title [SEP] text [SEP]`, cut longest first to `max_length`."""
        sep = self.tokenizer.sep_token
        second = [f"{t} {sep} {x}" if t else x for t, x in passages]
        return self._ids(list(questions), second, max_length)

    def encode_questions(self, questions: Sequence[str]) -> Dict[str, np.ndarray]:
        """Padded arrays for a list of questions."""
        return self.pad(self.encode_questions_ids(questions))

    def encode_passages(self, passages: Sequence[Tuple[str, str]]) -> Dict[str, np.ndarray]:
        """Padded arrays for a list of (title, text) passages."""
        return self.pad(self.encode_passages_ids(passages))


# --------------------------------------------------------------------------- checking the fast path on a corpus

def verify(ctx_file: str, tokenizer, limit: int, max_length: int, show: int = 3) -> dict:
    """Tokenize the first `limit` passages (0 = all) of `ctx_file` as (title, text) pairs with both
    paths; count the passages whose ids differ and time each path."""
    import itertools
    import time

    from ..data.passages import iter_passages

    slow = Tensorizer(tokenizer, max_passage_length=max_length, fast=False)
    fast = Tensorizer(tokenizer, max_passage_length=max_length)
    if fast.fast is None:
        raise SystemExit(f"no fast path for {type(tokenizer).__name__}: nothing to verify")
    passages = list(itertools.islice(iter_passages(ctx_file), limit or None))
    pairs = [(p.title, p.text) for p in passages]
    t0 = time.perf_counter()
    want = slow.encode_passages_ids(pairs)
    t1 = time.perf_counter()
    got = fast.encode_passages_ids(pairs)
    t2 = time.perf_counter()
    differ = [i for i, (a, b) in enumerate(zip(want, got)) if a != b]
    for i in differ[:show]:
        a, b = want[i][0], got[i][0]
        at = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        logger.warning("passage %s: ids differ from token %d: slow %s, fast %s", passages[i].id, at,
                       tokenizer.convert_ids_to_tokens(a[at : at + 5]), tokenizer.convert_ids_to_tokens(b[at : at + 5]))
    return {"passages": len(pairs), "differ": len(differ), "slow_per_s": round(len(pairs) / max(t1 - t0, 1e-9), 1),
            "fast_per_s": round(len(pairs) / max(t2 - t1, 1e-9), 1), "max_length": max_length}
