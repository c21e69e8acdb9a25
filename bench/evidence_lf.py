"""LLaMA-Factory in the evidence experiment's own process: its template for the text pretraining, and task B's
teacher-forced answer accuracy on the samples exactly as its SFT stage encodes and batches them.

Teacher-forced answer accuracy: a held-out sample counts as right when, fed the prompt and the reference answer,
the model's most likely next token is the reference token at every answer position, the end-of-turn token
included. That is the same as greedy decoding producing exactly the answer and stopping (LLaMA-Factory's
``do_predict`` with generation needs ``jieba``, ``nltk`` and ``rouge-chinese``, which the project does not
install).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TEMPLATE = "llava"
NO_LABEL = -100


def text_encoder(tokenizer: Any) -> Any:
    """``encode(user, answer)``: the token ids of one text-only turn as LLaMA-Factory's template renders it."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=TEMPLATE, default_system=""))

    def encode(user: str, answer: str) -> list[int]:
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        prompt, response = template.encode_oneturn(tokenizer, messages)
        return prompt + response

    return encode


class AnswerScorer:
    """One dataset of ``dataset_dir`` encoded once by LLaMA-Factory's SFT data path (its template, image plugin,
    collator); ``accuracy(model_dir)`` scores a saved model on it."""

    def __init__(
        self, model_dir: Path, dataset_dir: Path, dataset: str, work: Path, cutoff: int, batch: int = 32
    ) -> None:
        from llamafactory.data import SFTDataCollatorWith4DAttentionMask, get_dataset, get_template_and_fix_tokenizer
        from llamafactory.hparams import get_train_args
        from llamafactory.model import load_tokenizer

        model_args, data_args, training_args, _, _ = get_train_args(
            {
                "model_name_or_path": str(model_dir),
                "stage": "sft",
                "do_train": True,  # the samples come back as the train split, in file order
                "finetuning_type": "full",
                "dataset": dataset,
                "dataset_dir": str(dataset_dir),
                "template": TEMPLATE,
                "default_system": "",
                "cutoff_len": cutoff,
                "overwrite_cache": True,
                "preprocessing_num_workers": 1,
                "output_dir": str(work),
                "report_to": "none",
            }
        )
        modules = load_tokenizer(model_args)
        template = get_template_and_fix_tokenizer(modules["tokenizer"], data_args)
        encoded = get_dataset(template, model_args, data_args, training_args, stage="sft", **modules)["train_dataset"]
        collate = SFTDataCollatorWith4DAttentionMask(
            template=template, model=None, label_pad_token_id=NO_LABEL, attn_implementation="eager", **modules
        )
        rows = [encoded[i] for i in range(len(encoded))]
        self.batches = [collate(rows[i : i + batch]) for i in range(0, len(rows), batch)]
        self.size = len(rows)

    @torch.no_grad()
    def correct(self, model: torch.nn.Module) -> list[bool]:
        """Per sample, in file order: every answer token (end of turn included) the argmax under teacher forcing."""
        model.eval()
        where = next(model.parameters()).device
        right: list[bool] = []
        for batch in self.batches:
            inputs = {k: v.to(where) for k, v in batch.items() if k != "labels" and isinstance(v, torch.Tensor)}
            predicted = model(**inputs).logits[:, :-1].argmax(-1).cpu()
            targets = batch["labels"][:, 1:]
            scored = targets != NO_LABEL
            right += ((predicted == targets) | ~scored).all(-1).tolist()
        return right
