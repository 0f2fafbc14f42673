"""Math (the paper's second version: Qwen2.5-Math-7B on MATH levels 3-5): reward 1 when the last
\\boxed{...} of the completion equals the reference answer, graded with math-verify.

As the paper's library (its grader comes from OAT-Zero): the prompt is the Qwen math chat format
with the system message "Please reason step by step, and put your final answer within \\boxed{}.",
the reward is binary (no format reward: it could be hacked), and an answer is right when its
normalised text equals the reference's or math-verify finds them mathematically equal (fractions,
decimals, sets, intervals, text answers). Each math-verify call has a 1 s time limit; an answer that
cannot be parsed scores 0, never raises. A boxed answer over 1,000 characters scores 0 unread, so
any completion is scored in linear time.
"""

from __future__ import annotations

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
MAX_ANSWER_CHARS = 1000


def qwen_math_prompt(question: str) -> str:
    """The paper library's math prompt (its `qwen_math_template`), character for character."""
    return ("<|im_start|>system\n" + SYSTEM + "<|im_end|>\n<|im_start|>user\n" + question
            + "<|im_end|>\n<|im_start|>assistant\n")


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}), braces matched; None if there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start == -1:
        return None
    opening = text.find("{", start)
    if opening == -1:
        return None
    depth = 0
    for i in range(opening, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[opening + 1 : i]
    return None


def math_reward(completion: str, sample: dict) -> dict:
    answer = last_boxed(completion)
    if answer is None or len(answer) > MAX_ANSWER_CHARS:
        return {"reward": 0.0, "format": 0.0 if answer is None else 1.0, "answer": 0.0}
    references = sample["answer"] if isinstance(sample.get("answer"), list) else [sample.get("answer", sample.get("target"))]
    right = any(equal(answer, str(reference)) for reference in references if reference is not None)
    return {"reward": 1.0 if right else 0.0, "format": 1.0, "answer": 1.0 if right else 0.0}


def equal(given: str, reference: str) -> bool:
    """Normalised text equality, else math-verify's equivalence; any failure is 'not equal'."""
    if "\\boxed" in reference:
        reference = last_boxed(reference) or reference
    if normalise(given) == normalise(reference):
        return True
    try:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

        def parsed(text: str):
            text = text.replace("\n", "")
            return parse(text if "$" in text else f"${text}$",
                         extraction_config=(LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()),
                         fallback_mode="no_fallback", extraction_mode=["first_match"], parsing_timeout=1)

        return bool(verify(parsed(reference), parsed(given), timeout_seconds=1))
    except Exception:  # malformed LaTeX, a timeout, anything: the answer is not shown equal
        return False


def normalise(text: str) -> str:
    """Spaces, \\text{}, \\left/\\right, dollar signs and a trailing period do not change an answer."""
    text = text.strip().rstrip(".")
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "$", " "):
        text = text.replace(token, "")
    if text.startswith("\\text{") and text.endswith("}"):
        text = text[len("\\text{") : -1]
    return text
