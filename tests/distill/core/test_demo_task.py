"""The demo task: deterministic, disjoint splits whose answers follow from their worked lines and
whose worked lines follow from the question."""

from __future__ import annotations

import re

import pytest

from distill.core.demo_task import SPLIT_SIZES, Difficulty, generate, load_split

LINE = re.compile(r"^(\d+) ([-+*]) (\d+) = (\d+)$")
SENTENCE_OPS = [(re.compile(r"gets (\d+) more"), "+"), (re.compile(r"gives away (\d+)"), "-"),
                (re.compile(r"doubles them"), ("*", 2)), (re.compile(r"triples them"), ("*", 3)),
                (re.compile(r"quadruples them"), ("*", 4))]


def steps_in_question(question: str) -> tuple[int, list[tuple[str, int]]]:
    """The starting amount and the (op, operand) of each "Then ..." sentence, read from the text."""
    start = int(re.match(r"^\w+ has (\d+) \w+\.", question).group(1))
    steps = []
    for sentence in question.split(". Then ")[1:]:
        for pattern, op in SENTENCE_OPS:
            m = pattern.search(sentence)
            if m:
                steps.append(op if isinstance(op, tuple) else (op, int(m.group(1))))
                break
        else:
            raise AssertionError(f"unreadable step: {sentence!r}")
    return start, steps


@pytest.fixture(scope="module")
def splits():
    return {name: load_split(name) for name in ("train", "test")}


def test_splits_have_their_sizes_and_unique_ids(splits):
    for name, rows in splits.items():
        assert len(rows) == SPLIT_SIZES[name]
        assert len({r["id"] for r in rows}) == len(rows)
        assert set(rows[0]) >= {"id", "question", "answer", "reasoning", "solution"}


def test_splits_are_disjoint(splits):
    train = {r["question"] for r in splits["train"]}
    test = {r["question"] for r in splits["test"]}
    assert len(test) == len(splits["test"])
    assert not train & test


def test_splits_are_deterministic(splits):
    assert load_split("test") == splits["test"]
    assert generate("train", n=50) == splits["train"][:50]


def test_longer_train_stream_extends_the_train_split(splits):
    # The teacher learns from a longer stream of the train generator; its head is the split.
    longer = generate("train", n=len(splits["train"]) + 100)
    assert longer[:len(splits["train"])] == splits["train"]
    assert not {r["question"] for r in longer} & {r["question"] for r in splits["test"]}


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="validation"):
        load_split("validation")


@pytest.mark.parametrize("name", ["train", "test"])
def test_worked_lines_recompute_the_answer_from_the_question(splits, name):
    for row in splits[name]:
        start, steps = steps_in_question(row["question"])
        lines = row["reasoning"].split("\n")
        assert len(lines) == len(steps), row
        value = start
        for line, (op, operand) in zip(lines, steps):
            a, line_op, b, result = LINE.match(line).groups()
            assert (int(a), line_op, int(b)) == (value, op, operand), row
            value = {"+": value + operand, "-": value - operand, "*": value * operand}[op]
            assert int(result) == value, row
            assert value >= 0
        assert row["answer"] == str(value)
        assert row["solution"] == f"{row['reasoning']}\n#### {value}"


def test_problems_need_several_steps(splits):
    counts = {len(r["reasoning"].split("\n")) for r in splits["test"]}
    default = Difficulty()
    assert counts == set(range(default.min_steps, default.max_steps + 1))
    assert default.min_steps >= 2
    ops = {line.split()[1] for r in splits["test"] for line in r["reasoning"].split("\n")}
    assert ops == {"+", "-", "*"}


def test_difficulty_knobs_change_the_problems():
    hard = Difficulty(min_steps=4, max_steps=4, max_start=90)
    rows = generate("test", n=30, difficulty=hard)
    assert all(len(r["reasoning"].split("\n")) == 4 for r in rows)
    assert max(steps_in_question(r["question"])[0] for r in rows) > 30
