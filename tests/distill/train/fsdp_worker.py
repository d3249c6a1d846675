"""One process of test_sharded_loss: the chunked loss on an FSDP2-sharded model (gloo, CPU)
against the full computation on an unsharded copy. Run by torch.distributed.run."""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoConfig, AutoModelForCausalLM

from distill.train.trainer import loss_sums
from tests.distill.train.test_chunked_loss import _packed_batch, full_loss_sums


def with_policy(batch: dict, seed: int) -> dict:
    """The batch as an on-policy step sees it: the teacher's log-prob of each sampled token."""
    trained = int(batch["shift_labels"].ne(-100).sum())
    teacher = -torch.rand(trained, generator=torch.Generator().manual_seed(100 + seed)) * 5
    return {**batch, "teacher": teacher}


def full_policy_sums(model, batch: dict):
    """The policy-gradient loss from all trained positions' full logits (the reference)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "shift_labels", "teacher")}
    trained = batch["shift_labels"].ne(-100)
    logits = model(**inputs, use_cache=False, logits_to_keep=trained).logits.reshape(trained.sum(), -1)
    s = torch.log_softmax(logits.float(), -1).gather(1, batch["shift_labels"][trained].unsqueeze(1)).squeeze(1)
    return -((batch["teacher"] - s.detach()) * s).sum(), None, None, int(trained.sum())


def main(folder: str, tied: bool, head_alone: bool, out: str, policy: bool = False) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    config = AutoConfig.from_pretrained(folder)
    config.tie_word_embeddings = tied
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(AutoModelForCausalLM.from_config(config))
    model, reference = models
    for layer in model.model.layers:
        fully_shard(layer)
    if head_alone:  # the head as its own FSDP unit: its weight is sharded outside its own forward
        fully_shard(model.lm_head)
    fully_shard(model)
    # each process its own batch, as in data-parallel training; FSDP averages the gradients
    batches = [_packed_batch(config.vocab_size, seed=s) for s in range(dist.get_world_size())]
    if policy:  # on-policy: the student's log-probs of the sampled tokens come from inside the head's forward
        batches = [with_policy(b, s) for s, b in enumerate(batches)]
    total, _, _, n = loss_sums(model, batches[dist.get_rank()])
    (total / n).backward()
    for batch in batches:
        want, _, _, m = (full_policy_sums if policy else full_loss_sums)(reference, batch)
        (want / m / len(batches)).backward()
    worst = max((p.grad.full_tensor() - q.grad).abs().max().item()
                for p, q in zip(model.parameters(), reference.parameters()))
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"worst_gradient_difference": worst, "sharded": type(model.lm_head.weight).__name__}, f)
    # Both processes past their last collective before either tears gloo down: without it one
    # process now and then aborted at exit ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "tied", sys.argv[3] == "head-alone", sys.argv[4], sys.argv[5:] == ["policy"])
