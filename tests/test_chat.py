"""The chat engine: one base model, adapters switched by name, streaming equal to greedy."""
import threading

import pytest

from conftest import ROOT
from core.chat import ChatEngine, GenerationOptions
from core.chat_service import ChatService
from core.config import RunConfig
from core.train import run

DATA = ROOT / "presets" / "data"
ASK = [{"role": "user", "content": "Who are you?"}]
GREEDY = GenerationOptions(max_new_tokens=12)


def train(tiny_model, out, seed, lr=5e-3):
    cfg = RunConfig.from_dict({"model": str(tiny_model), "datasets": [str(DATA / "identity.jsonl")],
                               "output_dir": str(out), "train": {"max_steps": 6, "batch_size": 4,
                                                                 "learning_rate": lr, "seed": seed}})
    return run(cfg).adapter


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_HOME", str(tmp_path_factory.mktemp("chat-ws")))
        root = tmp_path_factory.mktemp("chat")
        yield train(tiny_model, root / "a", seed=1), train(tiny_model, root / "b", seed=2, lr=2e-2)


def reference(tiny_model, adapter=None):
    """A fresh engine with only this adapter (or none): the answer switching must reproduce."""
    engine = ChatEngine(str(tiny_model))
    if adapter:
        engine.add_adapter(adapter)
    return engine.reply(ASK, GREEDY)


def test_switching_adapters_gives_each_adapters_own_output(tiny_model, adapters):
    a, b = adapters
    want_a, want_b, want_base = reference(tiny_model, a), reference(tiny_model, b), reference(tiny_model)
    assert len({want_a, want_b, want_base}) == 3, "the two adapters and the base should answer differently"
    engine = ChatEngine(str(tiny_model))
    name_a, name_b = engine.add_adapter(a, "a"), engine.add_adapter(b, "b")
    for _ in range(2):
        assert engine.reply(ASK, GREEDY, adapter=name_a) == want_a
        assert engine.reply(ASK, GREEDY, adapter=None) == want_base
        assert engine.reply(ASK, GREEDY, adapter=name_b) == want_b


def test_streaming_yields_the_same_text_as_greedy_generation(tiny_model, adapters):
    engine = ChatEngine(str(tiny_model))
    name = engine.add_adapter(adapters[0])
    updates = list(engine.stream(ASK, GREEDY, adapter=name))
    assert updates and updates[-1]["text"] == engine.reply(ASK, GREEDY, adapter=name)
    assert updates[-1]["tokens"] >= 1 and updates[0]["ttft_s"] > 0
    assert [len(u["text"]) for u in updates] == sorted(len(u["text"]) for u in updates)


def test_stop_ends_a_stream_early(tiny_model):
    engine = ChatEngine(str(tiny_model))
    stop = threading.Event()
    seen = 0
    for update in engine.stream(ASK, GenerationOptions(max_new_tokens=400), stop):
        seen = update["tokens"]
        stop.set()
    assert seen < 400


def test_a_stream_whose_reader_goes_away_ends_its_generation(tiny_model):
    """A closed page closes the reply's generator; the generation must not run on holding the model."""
    engine = ChatEngine(str(tiny_model))
    stream = engine.stream(ASK, GenerationOptions(max_new_tokens=4000))
    next(stream)
    stream.close()
    assert engine.lock.acquire(timeout=10)
    engine.lock.release()


def test_two_chats_loading_two_adapters_at_once_each_get_their_own(tiny_model, adapters):
    service = ChatService()
    engine = service.ensure_base(str(tiny_model))
    names = {}

    def load(path):
        names[path] = service.adapter_name(engine, path)
    threads = [threading.Thread(target=load, args=(path,)) for path in adapters]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(names.values())) == 2
    assert all(engine.adapters[name] == str(path) for path, name in names.items())
    assert service.adapter_name(engine, adapters[0]) == names[adapters[0]]


def test_service_keeps_the_base_loaded_and_loads_each_adapter_once(tiny_model, adapters):
    service = ChatService()
    list(service.stream(str(tiny_model), adapters[0], ASK, GREEDY))
    engine = service.engine
    list(service.stream(str(tiny_model), adapters[1], ASK, GREEDY))
    list(service.stream(str(tiny_model), adapters[0], ASK, GREEDY))
    assert service.engine is engine and len(engine.adapters) == 2


def test_a_conversation_sent_back_as_content_parts_gets_the_same_answer(tiny_model):
    """Chat UIs hand earlier turns back as lists of parts; text-only chat templates need strings."""
    engine = ChatEngine(str(tiny_model))
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "Who are you?"}]
    parts = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in turns]
    assert engine.reply(parts, GREEDY) == engine.reply(turns, GREEDY)


def test_a_run_that_cannot_be_estimated_counts_nothing_against_the_chat(tmp_path):
    from core.chat_service import _estimate_gib

    good, damaged = tmp_path / "good.yaml", tmp_path / "damaged.yaml"
    good.write_text("model: Qwen2.5-0.5B\n")
    damaged.write_text("model: [unclosed\n")
    assert _estimate_gib(good) > 1 and _estimate_gib(damaged) == 0.0 == _estimate_gib(tmp_path / "gone.yaml")


def test_one_shot_chat_takes_the_bases_tokenizer_for_an_adapter_that_ships_none(adapters, tmp_path):
    import shutil

    from core.chat import one_shot
    from core.models import TOKENIZER_FILES

    plain = tmp_path / "plain"
    shutil.copytree(adapters[0], plain)
    for name in (*TOKENIZER_FILES, "special_tokens_map.json", "chat_template.jinja"):
        (plain / name).unlink(missing_ok=True)
    assert one_shot(plain, "Who are you?", max_new_tokens=8) == one_shot(adapters[0], "Who are you?", max_new_tokens=8)


def test_a_column_whose_adapter_is_gone_is_named_before_either_column_answers(workspace, tiny_model):
    """Side by side, B's checkpoint belongs to a run removed from the list: the message names B's box,
    neither column takes the turn, and the question is not taken from the box."""
    from types import SimpleNamespace

    from webui.chat_tab import respond

    replies = list(respond("Hi", [], [], str(tiny_model), "", "checkpoint:gone-run/4", True, "", 0, 0.95, 50, 8,
                           1.0, "en", SimpleNamespace(session_hash="s")))
    assert len(replies) == 1
    hist_a, hist_b, _, _, status, prompt = replies[0]
    assert hist_a == [] and hist_b == [] and status.startswith("Error: **Compare with**: the run of this checkpoint")
    assert not isinstance(prompt, str)          # gr.skip(): the box keeps the question


def test_stop_side_by_side_ends_the_reply_underway_and_the_other_column_still_answers(workspace, tiny_model):
    """Before, Stop cancelled the whole turn: column B kept a question with no reply, and the two
    columns' histories drifted apart."""
    from types import SimpleNamespace

    from webui.chat_tab import on_stop, respond

    request = SimpleNamespace(session_hash="stopper")
    replies, stopped = [], False
    for out in respond("Hi", [], [], str(tiny_model), "", "", True, "", 0, 0.95, 50, 64, 1.0, "en", request):
        replies.append(out)
        if not stopped and out[0] and out[0][-1]["content"]:       # column A has begun its reply
            on_stop(request)
            stopped = True
    hist_a, hist_b = replies[-1][0], replies[-1][1]
    assert [m["role"] for m in hist_a] == [m["role"] for m in hist_b] == ["user", "assistant"]
    assert hist_b[-1]["content"] and len(hist_a[-1]["content"]) < len(hist_b[-1]["content"]), (hist_a, hist_b)
