"""The stock Hugging Face `Trainer` on the job an sft run does, written as its users write it: the
baseline that bench/compare.py times sft against.

    python bench/hf_trainer.py --data DIR --checkpoint DIR --out DIR [--finetune head_only]

At its defaults (fp32 on a CPU, random batches), or at its best for the CPU at hand (--bf16 where
the CPU has AMX, --group-by-length; --bf16-full-eval to evaluate with bf16 weights). Reads
DIR/train.csv and DIR/test.csv (columns text, label), as sft's `data.path=DIR` does; tokenizes with
truncation at --max-length and pads each batch to its longest text (DataCollatorWithPadding,
Trainer's default with a tokenizer); trains with AdamW, linear decay after a warm-up share, weight
decay on weights only, no checkpoints and no evaluation while training; then evaluates on test
(alone with --evaluate-only, --checkpoint being a fine-tuned model).
Writes OUT/result.json: train and eval samples/s, accuracy, macro-F1,
the time of the first step (epoch seconds) and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--finetune", default="full", choices=["full", "head_only", "top_k"])
    parser.add_argument("--k", type=int, default=2, help="top_k: how many top layers train")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--bf16", action="store_true", help="bf16 mixed precision (a GPU, or a CPU with AMX)"
    )
    parser.add_argument(
        "--group-by-length",
        action="store_true",
        help="batches of similar lengths (train_sampling_strategy=group_by_length)",
    )
    parser.add_argument(
        "--evaluate-only", action="store_true", help="--checkpoint is fine-tuned: predict test"
    )
    parser.add_argument(
        "--bf16-full-eval", action="store_true", help="evaluate with the whole model in bf16"
    )
    args = parser.parse_args()

    import datasets
    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    splits = ("test",) if args.evaluate_only else ("train", "test")
    files = {split: str(Path(args.data) / f"{split}.csv") for split in splits}
    raw = datasets.load_dataset("csv", data_files=files)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    if args.evaluate_only:  # the labels of the fine-tuned model
        index = AutoConfig.from_pretrained(args.checkpoint).label2id
        labels = sorted(index, key=index.get)
    else:
        labels = sorted(set(raw["train"]["label"]))
        index = {label: i for i, label in enumerate(labels)}

    def encode(batch: dict) -> dict:
        encoded = tokenizer(batch["text"], truncation=True, max_length=args.max_length)
        return {**encoded, "labels": [index[label] for label in batch["label"]]}

    data = raw.map(encode, batched=True, remove_columns=raw["test"].column_names)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.checkpoint,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=index,
    )
    if args.finetune != "full":  # the body frozen, as Trainer users do it: requires_grad
        layers = model.base_model.encoder.layer
        keep = [] if args.finetune == "head_only" else list(layers)[-args.k :]
        for p in model.base_model.parameters():
            p.requires_grad = False
        for layer in keep:
            for p in layer.parameters():
                p.requires_grad = True
        if args.finetune == "top_k" and model.base_model.pooler is not None:
            for p in model.base_model.pooler.parameters():
                p.requires_grad = True

    class FirstStep(TrainerCallback):
        at: float | None = None

        def on_step_begin(self, *_, **__):
            FirstStep.at = FirstStep.at or time.time()

    training = TrainingArguments(
        output_dir=str(Path(args.out) / "trainer"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        warmup_steps=args.warmup_ratio,  # transformers 5: a value below 1 is a share of steps
        weight_decay=0.01,
        lr_scheduler_type="linear",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to=[],
        seed=args.seed,
        bf16=args.bf16,  # on the CPU too when asked: Trainer never chooses it by itself
        use_cpu=args.bf16 and not torch.cuda.is_available(),  # what Trainer asks for bf16 on CPU
        bf16_full_eval=args.bf16_full_eval,
        train_sampling_strategy="group_by_length" if args.group_by_length else "random",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=data.get("train"),
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[FirstStep()],
    )
    train = {"train_samples_per_second": None, "train_runtime": None}
    if not args.evaluate_only:
        train = trainer.train().metrics
    start = time.perf_counter()
    prediction = trainer.predict(data["test"])
    eval_seconds = time.perf_counter() - start
    predicted = np.argmax(prediction.predictions, axis=-1)
    result = {
        "train_samples_per_second": train["train_samples_per_second"],
        "train_seconds": train["train_runtime"],
        "eval_samples_per_second": len(data["test"]) / eval_seconds,
        "accuracy": accuracy_score(prediction.label_ids, predicted),
        "f1": f1_score(prediction.label_ids, predicted, average="macro"),
        "first_step_at": FirstStep.at,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
