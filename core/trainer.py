"""The transformers Trainer, with padded batches grouped by length.

The Trainer's own `train_sampling_strategy="group_by_length"` works on our list datasets, but it
orders each group of 50 batches longest first, which tilts the loss curve; `LengthGroupedSampler`
shuffles the grouped batches instead (see core/batching.py)."""
from __future__ import annotations

from transformers import Trainer

from core.batching import LengthGroupedSampler


class WorkbenchTrainer(Trainer):
    def __init__(self, *args, length_grouped: bool = False, **kwargs):
        self.length_grouped = length_grouped
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.length_grouped and dataset is not None:
            lengths = [len(item["input_ids"]) for item in dataset]
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return LengthGroupedSampler(lengths, self.args.train_batch_size, seed=seed)
        return super()._get_train_sampler(train_dataset)
