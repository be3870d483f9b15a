"""DPR tensorizer: questions alone, passages as (title, text) pairs, dynamic padding.

Passages are always encoded as a pair, so an empty title still gives `[CLS] [SEP] text [SEP]`
(the framing our MiniLM reference fixture records). Truncation is `longest_first` to the
maximum length; padding goes to the longest sequence in the batch, not to the maximum.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

DEFAULT_MAX_QUERY_LENGTH = 32  # NQ questions average ~10 WordPiece tokens; 32 truncates <0.1%
DEFAULT_MAX_PASSAGE_LENGTH = 256  # DPR's sequence_length for 100-word passages


class Tensorizer:
    """Turns questions and (title, text) passages into padded int64 numpy arrays."""

    def __init__(self, tokenizer, max_query_length: int = DEFAULT_MAX_QUERY_LENGTH,
                 max_passage_length: int = DEFAULT_MAX_PASSAGE_LENGTH):
        if max_query_length < 3 or max_passage_length < 4:
            raise ValueError("max lengths must leave room for [CLS]/[SEP] (query >= 3, passage >= 4)")
        self.tokenizer = tokenizer
        self.max_query_length = max_query_length
        self.max_passage_length = max_passage_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _ids(self, first: Sequence[str], second: Sequence[str] = None, max_length: int = 0) -> List[Tuple[List[int], List[int]]]:
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

    def encode_questions(self, questions: Sequence[str]) -> Dict[str, np.ndarray]:
        """Padded arrays for a list of questions."""
        return self.pad(self.encode_questions_ids(questions))

    def encode_passages(self, passages: Sequence[Tuple[str, str]]) -> Dict[str, np.ndarray]:
        """Padded arrays for a list of (title, text) passages."""
        return self.pad(self.encode_passages_ids(passages))
