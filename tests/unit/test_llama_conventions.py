"""A released Llama 3 Instruct's token conventions on the HF backend: no pad token (batches still pad),
generation stops at every EOS of generation_config.json, as vLLM stops (tests/engine/test_families.py),
and Countdown's built-in prompts go through its chat template with --template chat."""

import dataclasses

from engines.local import LocalPool
from tests.helpers import engine_options, llama3_conventions

PROMPTS = ["Using the numbers [3, 5, 7]", "12+7="]  # the first is the longest: the second is padded
GREEDY = {"temperature": 0.0, "max_tokens": 8}


def test_the_hf_engine_pads_without_a_pad_token_and_stops_at_the_generation_configs_eos(tmp_path):
    from transformers import AutoTokenizer

    model, stop = llama3_conventions(tmp_path, PROMPTS[0])
    assert AutoTokenizer.from_pretrained(model).pad_token_id is None
    options = dataclasses.replace(engine_options(), backend="hf", in_process=True)
    engine = LocalPool.start(model, options).engines[0]
    first, second = engine.generate(PROMPTS, GREEDY)
    assert first == {"text": "", "tokens": 1}  # its first token is an EOS of the generation config
    alone = engine.generate(PROMPTS[1:], GREEDY)[0]  # unpadded: what the padded row must equal
    assert second == alone and second["tokens"] >= 1


def test_countdown_runs_on_a_llama_with_its_chat_template_and_final_keeps_its_eos_ids(tmp_path):
    import json

    from esvllm.run import main
    from rewards.countdown import PROMPT, format_numbers
    from tests.helpers import LLAMA3_CHAT_TEMPLATE

    model, stop = llama3_conventions(tmp_path, PROMPTS[0])
    run = main(["--task", "countdown", "--model_name", model, "--engine", "hf", "--in_process", "--template", "chat",
                "--population_size", "2", "--num_iterations", "1", "--data_sample", "4", "--test_size", "2",
                "--max_tokens", "8", "--eval_every", "1", "--output_dir", str(tmp_path / "runs")])
    rows = [json.loads(line) for line in (run / "eval" / "iter_000001.jsonl").read_text().splitlines()]
    for row in rows:  # the paper's prompt as the user's turn of Llama's template, the assistant's header last
        user = PROMPT.format(numbers=format_numbers(row["sample"]["numbers"]), target=row["sample"]["target"])
        assert row["prompt"] == ("<|start_header_id|>user<|end_header_id|>\n\n" + user + "<|eot_id|>"
                                 "<|start_header_id|>assistant<|end_header_id|>\n\n")
    final = run / "final"
    assert json.loads((final / "generation_config.json").read_text())["eos_token_id"][1] == stop
    assert json.loads((final / "tokenizer_config.json").read_text())["chat_template"] == LLAMA3_CHAT_TEMPLATE


def test_esvllm_eval_puts_the_built_in_prompts_through_the_chat_template_too(tmp_path):
    import json

    from esvllm.eval import main as evaluate

    model, _ = llama3_conventions(tmp_path, PROMPTS[0])
    out = tmp_path / "eval.jsonl"
    evaluate(["--model", model, "--task", "countdown", "--engine", "hf", "--in_process", "--template", "chat",
              "--data_sample", "4", "--test_size", "2", "--max_tokens", "4", "--output", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    assert all(r["prompt"].startswith("<|start_header_id|>user<|end_header_id|>\n\nYou are a helpful assistant.")
               and r["prompt"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n") for r in rows)
