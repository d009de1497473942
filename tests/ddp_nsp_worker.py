"""Worker for test_upstream.py: the upstream trainer with BERT's next-sentence loss under `torchrun --nproc_per_node 2`
or `accelerate launch` (CPU, gloo). The head is trained with the student, so both ranks must end with the same head."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import build, end_two_process_worker, make_pair_blocks, make_tiny_tokenizer  # noqa: E402

from hf_sparse.distillation import DistillationConfig  # noqa: E402
from hf_sparse.upstream import NextSentenceHead, UpstreamTrainer  # noqa: E402

out = Path(sys.argv[1])
tokenizer = make_tiny_tokenizer(out)
_, dataset = make_pair_blocks(tokenizer, texts=40)

torch.manual_seed(0)  # the same initial student and head on both ranks
student = build("SparseBertForMaskedLM", 0.5, vocab_size=tokenizer.vocab_size)
student.next_sentence_head = NextSentenceHead(student.config.hidden_size, student.config.initializer_range)
initial = {k: v.detach().clone() for k, v in student.next_sentence_head.state_dict().items()}
args = transformers.TrainingArguments(
    output_dir=str(out), per_device_train_batch_size=4, learning_rate=5e-3, max_steps=4, report_to=[], logging_steps=1,
    save_strategy="no", seed=0, use_cpu=True, disable_tqdm=True, ddp_backend="gloo", remove_unused_columns=False,
)
trainer = UpstreamTrainer(
    model=student, args=args, train_dataset=dataset, nsp_weight=1.0,
    data_collator=transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
    distillation=DistillationConfig(task_weight=1.0, kd_weight=0.0),
)
trainer.train()
assert dist.get_world_size() == 2
rank = dist.get_rank()
head = {f"head.{k}": v.detach().contiguous() for k, v in student.next_sentence_head.state_dict().items()}
encoder = {f"encoder.{k}": v.detach().contiguous() for k, v in student.bert.encoder.state_dict().items()}
save_file({**head, **encoder}, str(out / f"rank{rank}.safetensors"))
if rank == 0:
    save_file({f"head.{k}": v.contiguous() for k, v in initial.items()}, str(out / "initial.safetensors"))
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history))
end_two_process_worker()  # both ranks have written their files
