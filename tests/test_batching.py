import torch

from core.batching import FlattenCollator, PadCollator, pack
from core.encode import IGNORE


def items(lengths):
    return [{"input_ids": list(range(1, n + 1)), "labels": list(range(1, n + 1))} for n in lengths]


def test_pack_fills_rows_without_overflow_and_keeps_every_sample():
    rows = pack(items([30, 10, 25, 5, 40, 12, 8]), max_len=50)
    assert all(len(r["input_ids"]) <= 50 for r in rows)
    assert sum(len(r["input_ids"]) for r in rows) == 130 and len(rows) == 3
    assert sum(r["position_ids"].count(0) for r in rows) == 7


def test_packed_batches_give_the_same_loss_as_padded_ones_with_no_padding(tiny_model):
    """Correct attention boundaries: packing changes neither the loss nor any sample's view."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    torch.manual_seed(0)
    samples = []
    for n in (7, 19, 4, 13, 25, 9):
        ids = torch.randint(3, model.config.vocab_size, (n,)).tolist()
        samples.append({"input_ids": ids, "labels": [IGNORE] * (n // 2) + ids[n // 2:]})
    padded = PadCollator(pad_id=0)(samples)
    flat = FlattenCollator()(pack(samples, max_len=40))
    with torch.no_grad():
        loss_padded = model(**padded).loss
        loss_packed = model(**flat).loss
    assert torch.allclose(loss_padded, loss_packed, atol=1e-5)
    pad_tokens = int((padded["attention_mask"] == 0).sum())
    assert pad_tokens > 0 and flat["input_ids"].numel() == sum(len(s["input_ids"]) for s in samples)


def test_packing_without_boundaries_would_change_the_loss(tiny_model):
    """The check above can fail: one long sequence without position resets gives another loss."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    torch.manual_seed(1)
    a, b = (torch.randint(3, model.config.vocab_size, (n,)).tolist() for n in (12, 12))
    samples = [{"input_ids": a, "labels": a}, {"input_ids": b, "labels": b}]
    flat = FlattenCollator()(pack(samples, max_len=40))
    joined = dict(flat, position_ids=torch.arange(24).unsqueeze(0))
    with torch.no_grad():
        assert not torch.allclose(model(**flat).loss, model(**joined).loss, atol=1e-4)
