"""The collator: a list of `TrainExample`s (text) to the question and passage token arrays a step takes."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from .dataset import TrainExample


class BiEncoderCollator:
    """Tokenizes a list of `TrainExample`s into question and passage tensors (numpy int64)."""

    def __init__(self, tensorizer):
        self.tensorizer = tensorizer

    def __call__(self, examples: Sequence[TrainExample]) -> Dict[str, Dict[str, np.ndarray]]:
        questions = [e.question for e in examples]
        passages = [p for e in examples for p in e.passages]  # [pos_0, neg_0.., pos_1, neg_1.., ...]
        return {
            "question": self.tensorizer.encode_questions(questions),
            "context": self.tensorizer.encode_passages(passages),
            "passages_per_question": len(examples[0].passages),
        }
