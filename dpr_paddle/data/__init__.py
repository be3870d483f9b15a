"""Data: readers for DPR's formats, datasets that return text, and the collator that makes tensors."""
from .readers import (  # noqa: F401
    BiEncoderRecord,
    DataFormatError,
    Passage,
    QAPair,
    count_passages,
    iter_passage_chunks,
    iter_passages,
    read_biencoder_records,
    read_qa,
)
from .dataset import BiEncoderCollator, BiEncoderDataset, TrainExample, epoch_batches, rank_slice  # noqa: F401,E402
