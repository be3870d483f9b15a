"""Data: readers for DPR's formats (`readers`: biencoder records, and the errors and checks every reader
shares; `passages`: the passages TSV), for BEIR, MS MARCO and T2Ranking layouts (`corpora`), questions
in any of those layouts (`questions`), the dataset that returns text (`dataset`)
and the collator that makes token arrays (`collator`)."""
from .collator import BiEncoderCollator, RerankCollator  # noqa: F401
from .dataset import BiEncoderDataset, TrainExample, epoch_batches, rank_slice  # noqa: F401
from .passages import count_passages, iter_passage_chunks, iter_passages  # noqa: F401
from .questions import read_qa  # noqa: F401
from .readers import BiEncoderRecord, DataFormatError, Passage, QAPair, read_biencoder_records  # noqa: F401
