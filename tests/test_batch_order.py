"""benchmarks/batch_order.py: the padding it reports is counted from the Trainer's own batches."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import batch_order  # noqa: E402
import transfer  # noqa: E402


def _trainer(tmp_path, tokenizer, lengths, **order):
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    rows = [{"input_ids": [2] + [5 + i % 90] * (n - 2) + [3], "label": i % 2} for i, n in enumerate(lengths)]
    rows = [{**row, "attention_mask": [1] * len(row["input_ids"])} for row in rows]
    model = BertForSequenceClassification(BertConfig(vocab_size=99, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True, report_to="none", seed=0, **order)
    return Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=DataCollatorWithPadding(tokenizer))


def test_padding_counts_real_tokens_exactly_and_grouping_pads_less(tmp_path, tiny_tokenizer):
    lengths = [3, 40, 4, 38, 5, 36, 6, 34] * 50  # random batches mix short and long; 400 examples: mega-batches of 100
    random = batch_order.padding(_trainer(tmp_path, tiny_tokenizer, lengths))
    grouped = batch_order.padding(_trainer(tmp_path, tiny_tokenizer, lengths, **transfer.group_by_length_arguments()))
    for counts in (random, grouped):
        assert counts["batches"] == 100 and counts["real_tokens"] == sum(lengths)
        assert counts["token_slots"] >= counts["real_tokens"]
    assert grouped["token_slots"] < random["token_slots"]
    assert grouped["slots_per_real_token"] < 1.1


def test_group_by_length_flags_match_the_arguments():
    flags = transfer._group_by_length()
    arguments = transfer.group_by_length_arguments()
    assert len(flags) == 2 * len(arguments) == 2
    name = flags[0].removeprefix("--")
    assert name in arguments and flags[1] == ("true" if arguments[name] is True else arguments[name])


def test_table_reports_both_arms():
    result = {
        "command": "python benchmarks/batch_order.py --task sst2 --steps 10 --repeats 1", "task": "sst2", "train_examples": 100,
        "max_length": 64, "batch_size": 32, "steps": 10, "repeats": 1, "precision": "fp32", "threads": 2,
        "cpu": {"model": "Some CPU"}, "versions": {"transformers": "4.57.6"},
        "median_seconds": {"random": 9.0, "grouped": 4.0}, "speedup_grouped": 2.25,
        "padding_one_epoch": {"random": {"slots_per_real_token": 2.9}, "grouped": {"slots_per_real_token": 1.01}},
    }
    text = batch_order.table(result)
    assert "| random | 2.90 | 9.0 | 1.00x |" in text and "| grouped | 1.01 | 4.0 | 2.25x |" in text and "Some CPU" in text
