import pytest

from core.formats import RowProblem, detect, normalize


def test_alpaca_joins_instruction_and_input_and_keeps_history():
    row = {"instruction": "Translate", "input": "hello", "output": "bonjour", "system": "Be brief.",
           "history": [["hi", "hello!"]]}
    assert detect([row]).format == "alpaca"
    msgs = normalize(row, "alpaca")["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[3]["content"] == "Translate\n\nhello" and msgs[4]["content"] == "bonjour"


def test_openai_messages():
    row = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    assert detect([row]).format == "messages"
    assert normalize(row, "messages")["messages"][-1] == {"role": "assistant", "content": "A"}


def test_sharegpt_with_system_and_tools():
    row = {"conversations": [{"from": "human", "value": "weather?"},
                             {"from": "function_call", "value": '{"name": "w"}'},
                             {"from": "observation", "value": "sunny"},
                             {"from": "gpt", "value": "It is sunny."}],
           "system": "You help.", "tools": '[{"name": "w"}]'}
    assert detect([row]).format == "sharegpt"
    sample = normalize(row, "sharegpt")
    assert [m["role"] for m in sample["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert sample["tools"] == '[{"name": "w"}]'


def test_preference_pairs_train_on_the_chosen_reply():
    row = {"instruction": "Pick", "input": "", "chosen": "good", "rejected": "bad"}
    assert detect([row]).format == "preference"
    assert normalize(row, "preference")["messages"][-1]["content"] == "good"


def test_plain_text():
    assert detect([{"text": "abc"}]).format == "text"
    assert normalize({"text": "abc"}, "text") == {"text": "abc"}


def test_column_mapping_reads_other_names():
    row = {"question": "Q?", "answer": "A."}
    msgs = normalize(row, "alpaca", {"instruction": "question", "output": "answer"})["messages"]
    assert msgs[-2]["content"] == "Q?" and msgs[-1]["content"] == "A."


@pytest.mark.parametrize("row,fmt,words", [
    ({"messages": [{"role": "user", "content": "Q"}]}, "messages", "does not end with an assistant"),
    ({"messages": [{"role": "wizard", "content": "Q"}, {"role": "assistant", "content": "A"}]}, "messages",
     "unknown role"),
    ({"instruction": "Q", "output": ""}, "alpaca", "is empty"),
    ({"instruction": "Q"}, "alpaca", "missing field 'output'"),
    ({"instruction": ["Q"], "output": "A"}, "alpaca", "should be text"),
])
def test_row_problems_say_what_is_wrong(row, fmt, words):
    with pytest.raises(RowProblem) as info:
        normalize(row, fmt)
    assert words in str(info.value)


def test_detection_reports_mixed_formats():
    d = detect([{"text": "a"}, {"instruction": "q", "output": "a"}, {"instruction": "q", "output": "b"}])
    assert d.format == "alpaca" and d.confidence < 1 and d.counts["text"] == 1
