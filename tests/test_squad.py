"""SQuAD v1.1 loading, feature preparation and answer decoding with the real (uncased) MiniLM tokenizer."""

import json

import numpy as np
import pytest
import transformers

from hf_sparse.tasks.metrics import squad_metrics
from hf_sparse.tasks.squad import (
    load_squad,
    postprocess_predictions,
    prepare_eval_features,
    prepare_train_features,
)

from conftest import DATA_DIR, minilm_dir

MAX_LENGTH = 64
STRIDE = 16

SHORT_CONTEXT = (
    "The Lindenfeld Observatory was built in 1931 by the astronomer Clara Voss. "
    "Its main telescope, a refractor with a 60 cm lens, was made in Jena. "
    "In 1977 the observatory was handed over to the University of Marburg."
)
# long enough for several 64-token windows
LONG_CONTEXT = " ".join(
    f"Station number {i} of the northern railway opened in the year {1850 + 3 * i} near the river {name}."
    for i, name in enumerate(
        ["Alder", "Birch", "Cedar", "Dogwood", "Elm", "Fir", "Ginkgo", "Hazel", "Ivy", "Juniper", "Larch", "Maple"]
    )
)


def qa(qid, question, context, *answers):
    """A SQuAD question whose answer_start values are found in the context."""
    return {
        "id": qid,
        "question": question,
        "answers": [{"text": a, "answer_start": context.index(a)} for a in answers],
    }


def squad_json():
    return {
        "version": "1.1",
        "data": [
            {
                "title": "Lindenfeld_Observatory",
                "paragraphs": [
                    {
                        "context": SHORT_CONTEXT,
                        "qas": [
                            qa("obs-1", "When was the observatory built?", SHORT_CONTEXT, "1931"),
                            qa("obs-2", "Who built it?", SHORT_CONTEXT, "the astronomer Clara Voss", "Clara Voss"),
                            qa("obs-3", "   Where was the telescope made?", SHORT_CONTEXT, "Jena"),
                            qa("obs-4", "Who received it in 1977?", SHORT_CONTEXT, "University of Marburg"),
                        ],
                    }
                ],
            },
            {
                "title": "Northern_Railway",
                "paragraphs": [
                    {
                        "context": LONG_CONTEXT,
                        "qas": [
                            qa("rail-1", "Which river is station 0 near?", LONG_CONTEXT, "Alder"),
                            qa("rail-2", "When did station 6 open?", LONG_CONTEXT, "1868"),
                            qa("rail-3", "Which river is the last station near?", LONG_CONTEXT, "Maple"),
                        ],
                    }
                ],
            },
        ],
    }


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(minilm_dir())


@pytest.fixture
def examples(tmp_path):
    path = tmp_path / "tiny-squad.json"
    path.write_text(json.dumps(squad_json()), encoding="utf-8")
    return load_squad(path)


def features(examples, fn, tokenizer, **kwargs):
    kwargs = {"tokenizer": tokenizer, "max_length": MAX_LENGTH, "stride": STRIDE, **kwargs}
    return examples.map(fn, batched=True, remove_columns=examples.column_names, fn_kwargs=kwargs)


def squashed(text: str) -> str:
    """Lowercased without whitespace: `decode` puts spaces around punctuation such as '–'."""
    return "".join(text.lower().split())


def oracle_logits(train_features, peak: float = 10.0):
    """Start/end logits padded with -100 that peak on the labelled span (all zero if it is CLS)."""
    width = max(len(ids) for ids in train_features["input_ids"])
    start = np.full((len(train_features), width), -100.0)
    end = np.full((len(train_features), width), -100.0)
    rows = zip(train_features["input_ids"], train_features["start_positions"], train_features["end_positions"])
    for i, (ids, s, e) in enumerate(rows):
        start[i, : len(ids)] = 0.0
        end[i, : len(ids)] = 0.0
        if s > 0:
            start[i, s] = peak
            end[i, e] = peak
    return start, end


# ----------------------------------------------------------------------------- loading


def test_load_squad(examples):
    assert examples.column_names == ["id", "title", "context", "question", "answers"]
    assert len(examples) == 7
    row = examples[1]
    assert row["id"] == "obs-2"
    assert row["title"] == "Lindenfeld_Observatory"
    assert row["context"] == SHORT_CONTEXT
    assert row["answers"] == {
        "text": ["the astronomer Clara Voss", "Clara Voss"],
        "answer_start": [SHORT_CONTEXT.index("the astronomer"), SHORT_CONTEXT.index("Clara")],
    }
    for row in examples:
        for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"]):
            assert row["context"][start : start + len(text)] == text


@pytest.mark.parametrize(
    "content, where",
    [
        ('{"data": [{"title": "t"}]}', "missing key 'paragraphs'"),
        ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "x", "answers": []}]}]}]}', "qas\\[0\\]"),
        ("[1, 2]", "top level"),
        ("{not json", "not valid JSON"),
    ],
)
def test_load_squad_bad_layout(tmp_path, content, where):
    path = tmp_path / "broken.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json") as err:
        load_squad(path)
    assert err.match(where)


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_train_features_point_at_the_answer(examples, padding_side):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir(), padding_side=padding_side)
    train = features(examples, prepare_train_features, tokenizer)
    evaluation = features(examples, prepare_eval_features, tokenizer)
    assert train.column_names == ["input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"]
    assert len(train) == len(evaluation) > len(examples)
    answers = dict(zip(examples["id"], examples["answers"]))
    contexts = dict(zip(examples["id"], examples["context"]))
    found = set()
    for feature, eval_feature in zip(train, evaluation):
        ids, start, end = feature["input_ids"], feature["start_positions"], feature["end_positions"]
        assert len(ids) <= MAX_LENGTH
        assert all(feature["attention_mask"])  # not padded
        assert ids[0] == tokenizer.cls_token_id
        example_id = eval_feature["example_id"]
        text = answers[example_id]["text"][0]
        answer_start = answers[example_id]["answer_start"][0]
        offsets = eval_feature["offset_mapping"]
        window = [o for o in offsets if o is not None]
        inside = window[0][0] <= answer_start and answer_start + len(text) <= window[-1][1]
        if not inside:
            assert start == end == 0
            continue
        found.add(example_id)
        assert 0 < start <= end
        assert squashed(tokenizer.decode(ids[start : end + 1])) == squashed(text)
        assert contexts[example_id][offsets[start][0] : offsets[end][1]] == text
    assert found == set(examples["id"])  # every answer lies fully inside at least one window


def test_left_padding_puts_context_first(examples):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir(), padding_side="left")
    evaluation = features(examples, prepare_eval_features, tokenizer)
    first = evaluation[0]
    # context is segment 0 (right after CLS), the question segment 1 at the end
    assert first["offset_mapping"][0] is None and first["offset_mapping"][1] is not None
    assert first["token_type_ids"][1] == 0 and first["token_type_ids"][-2] == 1


def test_long_context_overflows_with_stride(examples, tokenizer):
    evaluation = features(examples, prepare_eval_features, tokenizer)
    rail = [f for f in evaluation if f["example_id"] == "rail-1"]
    assert len(rail) >= 3
    assert all(len(f["input_ids"]) <= MAX_LENGTH for f in rail)
    spans = [[k for k, o in enumerate(f["offset_mapping"]) if o is not None] for f in rail]
    for (prev, prev_span), (nxt, next_span) in zip(zip(rail, spans), zip(rail[1:], spans[1:])):
        # the next window starts with the last STRIDE context tokens of the previous one
        tail = [prev["input_ids"][k] for k in prev_span[-STRIDE:]]
        head = [nxt["input_ids"][k] for k in next_span[:STRIDE]]
        assert head == tail
        assert nxt["offset_mapping"][next_span[0]] == prev["offset_mapping"][prev_span[-STRIDE]]
    # together the windows cover the whole context
    assert rail[0]["offset_mapping"][spans[0][0]][0] == 0
    assert rail[-1]["offset_mapping"][spans[-1][-1]][1] == len(LONG_CONTEXT)
    # the short context fits in one window
    assert sum(f["example_id"] == "obs-1" for f in evaluation) == 1


def test_eval_features(examples, tokenizer):
    evaluation = features(examples, prepare_eval_features, tokenizer)
    columns = {"input_ids", "token_type_ids", "attention_mask", "offset_mapping", "example_id"}
    assert set(evaluation.column_names) == columns
    assert sorted(set(evaluation["example_id"])) == sorted(examples["id"])
    question = "When was the observatory built?"
    n_question = len(tokenizer(question)["input_ids"])  # [CLS] question [SEP]
    first = evaluation[0]
    assert first["example_id"] == "obs-1"
    offsets = first["offset_mapping"]
    assert len(offsets) == len(first["input_ids"])
    assert offsets[:n_question] == [None] * n_question and offsets[-1] is None  # CLS, question, SEP; final SEP
    assert all(o is not None for o in offsets[n_question:-1])
    # the leading whitespace of a question is stripped
    obs3 = evaluation[list(evaluation["example_id"]).index("obs-3")]
    assert tokenizer.decode(obs3["input_ids"]).startswith("[CLS] where was the telescope made?")


def test_preprocessing_errors(examples, tokenizer):
    with pytest.raises(ValueError, match="stride"):
        prepare_train_features(examples[:2], tokenizer, max_length=32, stride=32)
    slow = transformers.BertTokenizer(vocab_file=str(minilm_dir() / "vocab.txt"))
    if slow.is_fast:  # transformers 5 has no slow BERT tokenizer: BertTokenizer is the fast one
        slow = type("SlowTokenizer", (), {"is_fast": False, "padding_side": "right"})()
    with pytest.raises(ValueError, match="fast tokenizer"):
        prepare_eval_features(examples[:2], slow)


# ----------------------------------------------------------------------------- postprocessing


def test_postprocess_oracle_logits_give_gold_answers(examples, tokenizer):
    train = features(examples, prepare_train_features, tokenizer)
    evaluation = features(examples, prepare_eval_features, tokenizer)
    start, end = oracle_logits(train)
    predictions = postprocess_predictions(examples, evaluation, start, end)
    gold = {row["id"]: row["answers"]["text"][0] for row in examples}
    assert predictions == gold
    references = dict(zip(examples["id"], examples["answers"]))
    assert squad_metrics(predictions, references) == {"exact_match": 100.0, "f1": 100.0}
    # ragged rows (a list of 1-D arrays, one per feature) work as well
    ragged_start = [row[: len(ids)] for row, ids in zip(start, evaluation["input_ids"])]
    ragged_end = [row[: len(ids)] for row, ids in zip(end, evaluation["input_ids"])]
    assert postprocess_predictions(examples, evaluation, ragged_start, ragged_end) == gold


def test_postprocess_wrong_span_scores_lower(examples, tokenizer):
    train = features(examples, prepare_train_features, tokenizer)
    evaluation = features(examples, prepare_eval_features, tokenizer)
    # start two tokens before the gold start: the answer picks up extra words
    shifted = train.map(lambda f: {"start_positions": max(f["start_positions"] - 2, 0)})
    start, end = oracle_logits(shifted)
    predictions = postprocess_predictions(examples, evaluation, start, end)
    references = dict(zip(examples["id"], examples["answers"]))
    scores = squad_metrics(predictions, references)
    assert scores["exact_match"] == 0.0
    assert 0.0 < scores["f1"] < 100.0
    assert predictions["obs-1"] == "built in 1931"
    assert predictions["obs-4"] == "to the University of Marburg"


def test_postprocess_constraints(examples, tokenizer):
    evaluation = features(examples, prepare_eval_features, tokenizer)
    first = evaluation[0]  # obs-1, a single window
    context_tokens = [k for k, o in enumerate(first["offset_mapping"]) if o is not None]
    start = np.zeros((len(evaluation), MAX_LENGTH))
    end = np.zeros((len(evaluation), MAX_LENGTH))
    # highest logits on question tokens must be ignored
    start[0, 1] = end[0, 2] = 100.0
    # by default the 12-token span a..b (10 + 10 = 20) wins
    a, b = context_tokens[0], context_tokens[11]
    start[0, a] = end[0, b] = 10.0
    start[0, a + 3] = end[0, a + 4] = 4.0
    offsets = first["offset_mapping"]
    context = examples[0]["context"]
    long_text = context[offsets[a][0] : offsets[b][1]]
    short_text = context[offsets[a + 3][0] : offsets[a + 4][1]]
    assert postprocess_predictions(examples, evaluation, start, end)["obs-1"] == long_text
    # with at most 11 tokens: start a (10) + end a+4 (4) = 14 beats a+3..a+4 (4 + 4 = 8)
    capped = context[offsets[a][0] : offsets[a + 4][1]]
    assert postprocess_predictions(examples, evaluation, start, end, max_answer_length=11)["obs-1"] == capped
    # an end before the start is never chosen: (b, a) would score 20, a+3..a+4 scores 10, the rest <= 0
    start2, end2 = np.full_like(start, -10.0), np.full_like(end, -10.0)
    start2[0, b] = end2[0, a] = 10.0
    start2[0, a + 3] = end2[0, a + 4] = 5.0
    assert postprocess_predictions(examples, evaluation, start2, end2)["obs-1"] == short_text
    # nothing valid -> empty answer; an example without features -> empty answer
    assert postprocess_predictions(examples, evaluation, start, end, max_answer_length=0)["obs-1"] == ""
    subset = evaluation.select(range(1, len(evaluation)))
    assert postprocess_predictions(examples, subset, start[1:], end[1:])["obs-1"] == ""


def test_postprocess_errors(examples, tokenizer):
    evaluation = features(examples, prepare_eval_features, tokenizer)
    logits = np.zeros((len(evaluation) - 1, MAX_LENGTH))
    with pytest.raises(ValueError, match="one row of logits per feature"):
        postprocess_predictions(examples, evaluation, logits, logits)
    with pytest.raises(ValueError, match="example_id"):
        postprocess_predictions(examples, examples, logits, logits)


# ----------------------------------------------------------------------------- real data


@pytest.mark.real
def test_real_squad_dev_oracle_round_trip(tokenizer):
    path = DATA_DIR / "squad_v1.1" / "dev-v1.1.json"
    examples = load_squad(path)
    assert len(examples) == 10_570
    subset = examples.select(range(200))
    kwargs = {"tokenizer": tokenizer, "max_length": 256, "stride": 64}
    train = subset.map(prepare_train_features, batched=True, remove_columns=subset.column_names, fn_kwargs=kwargs)
    evaluation = subset.map(prepare_eval_features, batched=True, remove_columns=subset.column_names, fn_kwargs=kwargs)
    assert len(train) == len(evaluation) >= 200
    assert train["input_ids"] == evaluation["input_ids"]
    references = dict(zip(subset["id"], subset["answers"]))

    # 1. labels of the training features: tokens start..end cover the first gold answer
    contexts = dict(zip(subset["id"], subset["context"]))
    labelled = 0
    for feature, eval_feature in zip(train, evaluation):
        s, e = feature["start_positions"], feature["end_positions"]
        if s == 0:
            continue
        labelled += 1
        answer = references[eval_feature["example_id"]]
        offsets = eval_feature["offset_mapping"]
        char_start = answer["answer_start"][0]
        assert offsets[s][0] <= char_start < offsets[s][1]
        assert offsets[e][0] < char_start + len(answer["text"][0]) <= offsets[e][1]
        assert answer["text"][0] in contexts[eval_feature["example_id"]][offsets[s][0] : offsets[e][1]]
    assert labelled >= 200

    # 2. oracle logits from gold spans located through the offsets: the first gold answer whose
    #    boundaries fall on token boundaries (a few first answers cut a token, e.g. "8" in "20–18")
    width = max(len(ids) for ids in evaluation["input_ids"])
    start = np.full((len(evaluation), width), -100.0)
    end = np.full((len(evaluation), width), -100.0)
    for i, feature in enumerate(evaluation):
        offsets = feature["offset_mapping"]
        start[i, : len(offsets)] = 0.0
        end[i, : len(offsets)] = 0.0
        token_starts = {o[0]: k for k, o in enumerate(offsets) if o is not None}
        token_ends = {o[1]: k for k, o in enumerate(offsets) if o is not None}
        answer = references[feature["example_id"]]
        for text, char_start in zip(answer["text"], answer["answer_start"]):
            char_end = char_start + len(text)
            if char_start in token_starts and char_end in token_ends:
                start[i, token_starts[char_start]] = 10.0
                end[i, token_ends[char_end]] = 10.0
                break
    predictions = postprocess_predictions(subset, evaluation, start, end)
    scores = squad_metrics(predictions, references)
    assert scores["exact_match"] >= 97.0, scores
    assert scores["f1"] >= 98.0, scores

    # 3. the training labels used as oracle logits: exact except where the first answer cuts a token
    train_start, train_end = oracle_logits(train)
    scores = squad_metrics(postprocess_predictions(subset, evaluation, train_start, train_end), references)
    assert scores["exact_match"] >= 95.0, scores
