"""Data as users bring it: the paper's countdown.json split, other columns, chat templates, several
evaluation sets, and bad data refused before any engine starts."""

import json

import pytest

from esvllm.run import main
from rewards.countdown import make_sample
from rewards.data import Formatter, load_samples, task_splits



def papers_rows(count, start=0):
    """Rows with the columns of the paper's countdown.json (target a string, as there)."""
    rows = []
    for i in range(start, start + count):
        numbers = [i % 90 + 1, (7 * i) % 90 + 2, (3 * i) % 50 + 3]
        sample = make_sample(numbers, sum(numbers))
        rows.append({"id": i, "context": sample["prompt"], "numbers": numbers, "target": str(sum(numbers)),
                     "solution": " + ".join(map(str, numbers))})
    return rows


def test_the_papers_split_is_the_first_rows_and_the_next_ones(tmp_path):
    (tmp_path / "countdown.json").write_text(json.dumps(papers_rows(12)))
    train, test = task_splits("countdown", str(tmp_path / "countdown.json"), 4, 8, seed=0)
    assert [s["id"] for s in train] == [0, 1, 2, 3] and [s["id"] for s in test] == list(range(4, 12))
    assert train[0]["prompt"] == train[0]["context"] and train[0]["target"] == str(sum(train[0]["numbers"]))


def test_other_columns_and_the_chat_template(tmp_path, tiny_model):
    rows = [{"question": "What is 2+2?", "answer": "4"}, {"question": "And 3+3?", "answer": "6"}]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    plain = load_samples(str(tmp_path / "q.jsonl"), Formatter("math", "question", "plain"))
    assert plain[0]["prompt"] == "What is 2+2?" and plain[0]["target"] == "4"
    math = load_samples(str(tmp_path / "q.jsonl"), Formatter("math", "question"))  # the task's own: qwen_math
    assert math[0]["prompt"].startswith("<|im_start|>system\nPlease reason step by step")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    tokenizer.save_pretrained(tmp_path / "chat-model")
    chat = load_samples(str(tmp_path / "q.jsonl"), Formatter("math", "question", "chat", str(tmp_path / "chat-model")))
    assert chat[1]["prompt"] == "<user>And 3+3?<assistant>"
    with pytest.raises(ValueError, match="no chat template"):
        load_samples(str(tmp_path / "q.jsonl"), Formatter("math", "question", "chat", tiny_model))


def fails_before_start(argv, monkeypatch, *fragments):
    import engines.pool

    monkeypatch.setattr(engines.pool.EnginePool, "start", lambda *a, **k: pytest.fail("an engine was started"))
    with pytest.raises(SystemExit) as info:
        main(argv)
    for fragment in fragments:
        assert fragment in str(info.value.code), str(info.value.code)


def test_a_missing_column_is_named_with_the_columns_there(tmp_path, monkeypatch):
    (tmp_path / "d.jsonl").write_text(json.dumps({"instruction": "hi", "output": "yo"}))
    fails_before_start(["--task", "conciseness", "--data", str(tmp_path / "d.jsonl"), "--data_sample", "1"],
                       monkeypatch, "no column among", "['instruction', 'output']", "--prompt_field")
    fails_before_start(["--task", "conciseness", "--data", str(tmp_path / "d.jsonl"), "--data_sample", "1",
                        "--prompt_field", "question"], monkeypatch, "no column 'question'")


def test_a_prompt_longer_than_the_model_allows_is_refused_with_its_index_and_lengths(tmp_path, monkeypatch):
    rows = [{"prompt": "short", "target": "ab"}, {"prompt": "x" * 500, "target": "ab"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    fails_before_start(["--model_name", "tiny", "--task", "conciseness", "--data", str(tmp_path / "d.jsonl"),
                        "--data_sample", "2", "--test_size", "0", "--max_tokens", "12", "--max_model_len", "64"],
                       monkeypatch, "training sample 1", "500 tokens", "512 > --max_model_len 64")


BAD_ROWS = {
    "empty_prompt": ('{"prompt": ""}', "line 2: the prompt ('prompt') is empty; fill it or remove the row"),
    "cut_short": ('{"prompt": "a", "target"', "line 2 is not valid JSON"),
    "not_text": ('{"prompt": 42}', "line 2: the prompt ('prompt') is int 42, not text"),
    "no_prompt": ('{"question_text": "a"}', "line 2: no column among"),
    "not_an_object": ('["a", "b"]', "line 2 is a list, not an object"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
@pytest.mark.parametrize("flag", ["--data", "--eval_data"])
def test_a_bad_data_row_is_named_by_file_and_line_before_anything_starts(tmp_path, monkeypatch, case, flag):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started before the data was checked"))
    line, message = BAD_ROWS[case]
    good = "\n".join(json.dumps({"prompt": f"word of {n} letters:"}) for n in range(8)) + "\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "fine"}) + "\n" + line + "\n")
    (tmp_path / "good.jsonl").write_text(good)
    data = [flag, str(bad)] + (["--data", str(tmp_path / "good.jsonl")] if flag == "--eval_data" else [])
    argv = ["--model_name", "tiny", "--task", "conciseness", "--engine", "fake", "--data_sample", "2",
            "--max_tokens", "8", "--output_dir", str(tmp_path / "runs"), *data]
    for extra in ([], ["--dry_run"]):  # the dry run reports the same
        with pytest.raises(SystemExit) as stop:
            main(argv + extra)
        assert str(stop.value.code).startswith(f"error: {bad}: ") and message in str(stop.value.code)
