"""Batches: padded to the longest sample, or flattened without padding.

Flattened batches put every sample of a batch one after another in a single row, with
position ids that restart at each sample; transformers turns those into a block-diagonal
attention mask (flash-attention varlen on GPU, a packed SDPA mask elsewhere), so samples never
see each other. `pack` fills rows of up to max_len tokens with several samples (best-fit
decreasing), for fewer, fuller steps. Padded batches go through `LengthGroupedSampler`, so
samples of like length share a batch and little compute goes to padding.
"""
from __future__ import annotations

import bisect

import torch

from core.encode import IGNORE, Encoded


def as_item(enc: Encoded) -> dict:
    return {"input_ids": enc.input_ids, "labels": enc.labels}


def pack(items: list[dict], max_len: int) -> list[dict]:
    """Best-fit decreasing bin packing of samples into rows of at most max_len tokens."""
    order = sorted(range(len(items)), key=lambda i: -len(items[i]["input_ids"]))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []          # sorted (space left, bin index)
    for i in order:
        size = len(items[i]["input_ids"])
        k = bisect.bisect_left(free, (size, -1))
        if k < len(free):
            space, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (space - size, b))
        else:
            bins.append([i])
            bisect.insort(free, (max_len - size, len(bins) - 1))
    return [_join([items[i] for i in members]) for members in bins]


def _join(members: list[dict]) -> dict:
    ids, labels, pos = [], [], []
    for m in members:
        ids += m["input_ids"]
        labels += m["labels"]
        pos += m.get("position_ids") or list(range(len(m["input_ids"])))
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


class PadCollator:
    """Pad to the longest sample in the batch (optionally to a multiple of 8 for tensor cores)."""

    def __init__(self, pad_id: int, multiple_of: int | None = None):
        self.pad_id = pad_id
        self.multiple_of = multiple_of

    def __call__(self, batch: list[dict]) -> dict:
        longest = max(len(x["input_ids"]) for x in batch)
        if self.multiple_of:
            longest = -(-longest // self.multiple_of) * self.multiple_of
        ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), longest), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, x in enumerate(batch):
            n = len(x["input_ids"])
            ids[row, :n] = torch.tensor(x["input_ids"])
            labels[row, :n] = torch.tensor(x["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class FlattenCollator:
    """Concatenate the batch into one row with restarting position ids and no attention mask.

    transformers' DataCollatorWithFlattening numbers each row from 0, which would join the samples
    of a packed row (it carries its own position ids) into one; this keeps the row's own numbering.

    The first label of every sample is masked: in a flat row it would otherwise be predicted
    from the previous sample's last token. `use_cache=False` travels with the batch because
    transformers only derives the per-sample mask from position ids when no cache is in use."""

    def __call__(self, batch: list[dict]) -> dict:
        ids, labels, pos = [], [], []
        for x in batch:
            x_pos = x.get("position_ids") or list(range(len(x["input_ids"])))
            x_labels = list(x["labels"])
            for k, p in enumerate(x_pos):
                if p == 0:
                    x_labels[k] = IGNORE
            ids += x["input_ids"]
            labels += x_labels
            pos += x_pos
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([pos]), "use_cache": False}


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Indices such that each run of `batch_size` holds samples of similar length, batches in random order.

    transformers' LengthGroupedSampler sorts each group of 50 batches longest first, so for 50
    steps at a time the batches shrink and the loss curve drifts with sample length; here the
    batches are shuffled after grouping. The batch with the longest sample still comes first, so
    running out of memory shows at step 1. The order depends only on the seed and the epoch (the
    Trainer calls set_epoch), so a resumed run skips exactly the batches it already trained on."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, group: int = 50):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=gen).tolist()
        span = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), span):
            group = sorted(order[start:start + span], key=lambda i: -self.lengths[i])
            batches += [group[k:k + self.batch_size] for k in range(0, len(group), self.batch_size)]
        short = [b for b in batches if len(b) < self.batch_size]     # at most one: it must stay last
        full = [b for b in batches if len(b) == self.batch_size]
        full = [full[i] for i in torch.randperm(len(full), generator=gen).tolist()]
        if full:
            longest = max(range(len(full)), key=lambda k: max(self.lengths[i] for i in full[k]))
            full[0], full[longest] = full[longest], full[0]
        return iter([i for batch in full + short for i in batch])
