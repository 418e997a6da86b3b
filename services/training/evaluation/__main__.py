"""``python -m services.training.evaluation --request FILE --data-address ADDR``: one
``RunBenchmark``, in its own process (the service never imports torch).

FILE is the JSON the service wrote: ``base_model``, ``adapter_path`` (empty = base), ``task_dir``,
``task``, ``split``, ``n_shot``, ``lang``, ``template``, ``save_dir`` and ``out`` (where the
result goes: the tables, or ``{"error": "..."}`` with exit code 1). Prompts are rendered by the
data service (``PreviewExample`` of a PROMPT example in OpenAI message form, the template named,
the generation prompt appended: the rendering training uses); its token comes from
``LLAMAFLEET_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from services.training.evaluation import choices
from services.training.evaluation.benchmark import data_service_render, run_benchmark, save

logger = logging.getLogger(__name__)


def load_model(base_model: str, adapter_path: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype, use_safetensors=True)
    if adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(base_model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.training.evaluation")
    parser.add_argument("--request", required=True, type=Path)
    parser.add_argument("--data-address", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    request = json.loads(args.request.read_text())
    out = Path(request["out"])
    try:
        model, tokenizer = load_model(request["base_model"], request["adapter_path"])
        render = data_service_render(
            args.data_address,
            os.environ.get("LLAMAFLEET_TOKEN", ""),
            request["base_model"],
            request["template"],
        )
        result = run_benchmark(request, model, tokenizer, render)
        if request["save_dir"]:
            save(result, Path(request["save_dir"]))
        out.write_text(json.dumps(result))
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure reaches the caller as one line
        logger.error("benchmark failed:\n%s", traceback.format_exc())
        kind = "invalid" if isinstance(exc, choices.BenchmarkError) else "failed"
        out.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}", "kind": kind}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
