"""The collator: a list of `TrainExample`s (text) to the question and passage token arrays a step takes."""
from __future__ import annotations

import hashlib
from typing import Dict, Sequence, Tuple

import numpy as np

from .dataset import TrainExample


def passage_keys(passages: Sequence[Tuple[str, str]]) -> np.ndarray:
    """A 64-bit key per (title, text): equal keys are the same passage, wherever in a batch it stands. [P]"""
    return np.array([int.from_bytes(hashlib.blake2b(f"{title}\x1f{text}".encode(), digest_size=8).digest(), "little",
                                    signed=True) for title, text in passages], dtype=np.int64)


class BiEncoderCollator:
    """Tokenizes a list of `TrainExample`s into question and passage tensors (numpy int64)."""

    def __init__(self, tensorizer):
        self.tensorizer = tensorizer

    def __call__(self, examples: Sequence[TrainExample]) -> Dict[str, Dict[str, np.ndarray]]:
        questions = [e.question for e in examples]
        passages = [p for e in examples for p in e.passages]  # [pos_0, neg_0.., pos_1, neg_1.., ...]
        batch = {
            "question": self.tensorizer.encode_questions(questions),
            "context": self.tensorizer.encode_passages(passages),
            "passages_per_question": len(examples[0].passages),
            "passage_keys": passage_keys(passages),  # [P]: in-batch copies of a positive are not its negatives
        }
        if examples[0].teacher_scores is not None:
            batch["teacher"] = np.array([e.teacher_scores for e in examples], dtype=np.float32)  # [Q, n]
        return batch


class RerankCollator:
    """Tokenizes `TrainExample`s into one array of (question, passage) pairs for a cross-encoder: each
    question's group is its positive then its negatives, groups in example order."""

    def __init__(self, tensorizer, max_length: int):
        self.tensorizer, self.max_length = tensorizer, max_length

    def __call__(self, examples: Sequence[TrainExample]) -> Dict[str, object]:
        questions = [e.question for e in examples for _ in e.passages]
        passages = [p for e in examples for p in e.passages]  # [q0: pos, neg.., q1: pos, neg.., ...]
        pairs = self.tensorizer.pad(self.tensorizer.encode_pairs_ids(questions, passages, self.max_length))
        return {"pairs": pairs, "group_size": len(examples[0].passages)}
