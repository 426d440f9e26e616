import pytest

from core.formats import RowProblem, detect, format_from_mapping, mapping_fields, normalize, variant


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
    assert sample["tools"] == [{"name": "w"}]


def test_empty_tools_are_dropped_and_bad_tools_are_a_row_problem():
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    assert "tools" not in normalize({"conversations": turns, "tools": "[]"}, "sharegpt")
    with pytest.raises(RowProblem, match="not valid JSON"):
        normalize({"conversations": turns, "tools": "[{name: w}]"}, "sharegpt")


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


def test_llamafactory_dpo_pairs_train_on_the_chosen_turn():
    row = {"conversations": [{"from": "system", "value": "Teach."}, {"from": "human", "value": "Q"}],
           "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}
    assert detect([row]).format == "preference" and variant(row, "preference") == "sharegpt"
    msgs = normalize(row, "preference")["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"] and msgs[-1]["content"] == "good"


def test_trl_preference_with_message_lists():
    row = {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "good"}],
           "rejected": [{"role": "assistant", "content": "bad"}]}
    assert variant(row, "preference") == "messages"
    assert [m["content"] for m in normalize(row, "preference")["messages"]] == ["Q", "good"]


def test_a_pair_without_its_rejected_side_is_a_row_problem():
    with pytest.raises(RowProblem, match="missing field 'rejected'"):
        normalize({"instruction": "Q", "chosen": "good", "rejected": None}, "preference")


def test_role_tags_name_the_role_values():
    row = {"dialog": [{"speaker": "customer", "text": "Q"}, {"speaker": "agent", "text": "A"}]}
    mapping = {"messages": "dialog", "role": "speaker", "content": "text", "user_tag": "customer",
               "assistant_tag": "agent"}
    assert format_from_mapping(mapping) == "messages"
    msgs = normalize(row, "sharegpt", mapping)["messages"]
    assert msgs == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


def test_wrong_types_are_named_in_json_words():
    with pytest.raises(RowProblem, match="got a list"):
        normalize({"instruction": "Q", "output": ["A"]}, "alpaca")
    with pytest.raises(RowProblem, match="turn 2: 'content' should be text, got a number") as info:
        normalize({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": 5.5}]},
                  "messages")
    assert info.value.field == "content"


def test_mapping_fields_list_what_a_form_shows():
    fields = {f["field"]: f for f in mapping_fields("alpaca")}
    assert fields["instruction"]["required"] and not fields["input"]["required"]
    assert any(f["kind"] == "role value" for f in mapping_fields("sharegpt"))
