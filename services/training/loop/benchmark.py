"""The benchmark a job scores at each evaluation point (``spec.eval_benchmark``).

``RunBenchmark``'s scoring (``evaluation.benchmark.run_benchmark``) over the trainer's model in
memory, i.e. the weights the adapter version saved at that step holds, with prompts rendered by
the data service the job streams its batches from (the client of its ``DataServiceSource``). The
metrics are ``eval/benchmark/accuracy`` and ``eval/benchmark/<subject>`` (accuracies in [0, 1]);
the tables of each evaluation go to ``<save_dir>/step-<N>/results.{json,log}``. Rank 0 scores
alone; the trainer decides when.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from services.training.evaluation import choices
from services.training.evaluation.benchmark import Render, client_render, run_benchmark, save
from services.training.loop.batches import BatchSource, DataServiceSource

logger = logging.getLogger(__name__)

PREFIX = "eval/benchmark/"


class BenchmarkEval:
    def __init__(self, options: dict, tokenizer, render: Render, save_dir: Path) -> None:
        self.options, self.tokenizer, self.render = options, tokenizer, render
        self.save_dir = save_dir

    def __call__(self, model, step: int) -> dict[str, float]:
        """Score the benchmark on ``model`` (in eval mode); its metrics."""
        started = time.perf_counter()
        result = run_benchmark(self.options, model, self.tokenizer, self.render)
        save(result, self.save_dir / f"step-{step}")
        logger.info(
            "benchmark %s at step %d: accuracy %.4f over %d questions (%.1f s)",
            self.options["task"], step, result["accuracy"], result["total"],
            time.perf_counter() - started,
        )  # fmt: skip
        metrics = {PREFIX + "accuracy": result["accuracy"]}
        for subject in result["subjects"]:
            metrics[PREFIX + subject["subject"]] = subject["accuracy"]
        return metrics


def open_benchmark(
    options: dict, source: BatchSource, base_model: str, tokenizer, output_dir: Path
) -> BenchmarkEval:
    """The job's benchmark; its prompts need the data service the job reads from."""
    if not isinstance(source, DataServiceSource):
        raise ValueError(
            "spec.eval_benchmark: benchmark prompts are rendered by the data service, and this "
            "job reads its rows without one (--data-address file://...); give the runner a data "
            "service address"
        )
    task_dir = Path(options["task_dir"])
    choices.load_task(task_dir, options["task"], options["split"])  # bad files fail at the start
    render = client_render(source.client, base_model, options["template"])
    save_dir = Path(options["save_dir"]) if options["save_dir"] else output_dir / "eval_benchmark"
    return BenchmarkEval(options, tokenizer, render, save_dir)
