"""The web UI in a real browser (Debian's Chromium, headless, driven by Playwright) against the
local cluster: fill the Train form, start a short LoRA SFT job, watch its loss chart and its end,
reload the page (the job is still listed: it lives in the training service), chat with its
adapter, read the cluster's health, and see a refused job's error. Screenshots of each tab go to
``tests/web/screenshots/`` (or ``$LLAMAFLEET_WEB_SCREENSHOTS``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from llamafleet.web import forms

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("LLAMAFLEET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("LLAMAFLEET_WEB_SCREENSHOTS", Path(__file__).parent / "screenshots"))
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
JOB = "web-sft"
TIMEOUT_MS = 120_000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM}: run scripts/setup_browser.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_train_watch_and_chat_in_a_browser(browser, web_cluster, tmp_path):
    expect = playwright_api.expect
    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(web_cluster.url)
    dataset = web_cluster.dataset

    # Train: the form starts from the cluster's model and sensible defaults.
    form = page.locator("#train-form")
    expect(form.locator("[name=model_name_or_path]")).to_have_value(web_cluster.base_model)
    expect(form.locator("[name=learning_rate]")).not_to_have_value("")
    form.locator("[name=dataset_dir]").fill(web_cluster.dataset_dir)
    expect(page.locator(f"#dataset-select option[value={dataset}]")).to_have_count(1)
    form.locator("[name=dataset]").select_option(dataset)
    form.locator("[name=stage]").select_option("sft")
    form.locator("[name=finetuning_type]").select_option("lora")
    fields = {
        "job_id": JOB, "cutoff_len": "64", "lora_rank": "4", "lora_target": "q_proj,v_proj",
        "learning_rate": "0.001", "max_steps": "3", "per_device_train_batch_size": "4",
        "gradient_accumulation_steps": "1", "logging_steps": "1",
    }  # fmt: skip
    for name, value in fields.items():
        form.locator(f"[name={name}]").fill(value)
    expect(form.locator("[data-method=freeze]")).to_be_hidden()
    expect(form.locator("[data-stage=dpo]")).to_be_hidden()

    # The preview renders the first record with its trained span highlighted.
    trained = page.locator("#preview .rendered .trained")
    expect(trained).to_have_count(1)
    expect(trained).to_contain_text("w00")
    expect(page.locator("#preview .rendered .masked").first).to_contain_text("Repeat: w00")

    # The YAML shown is the job, and downloads as the same text.
    yaml_box = page.locator("#yaml")
    for line in ("stage: sft", "finetuning_type: lora", f"dataset: {dataset}", "max_steps: 3",
                 "lora_rank: 4", f"job_id: {JOB}"):  # fmt: skip
        expect(yaml_box).to_contain_text(line)
    with page.expect_download() as download:
        page.click("#yaml-download")
    saved = tmp_path / "downloaded.yaml"
    download.value.save_as(saved)
    spec, _ = forms.to_spec(saved.read_text())
    assert spec.job_id == JOB and spec.hyperparameters.max_steps == 3
    assert list(spec.finetuning.lora.target_modules) == ["q_proj", "v_proj"]
    _shot(page, "train")

    # Start: the Jobs tab follows the job; the loss chart fills and the job finishes.
    page.click("#start")
    expect(page.locator("#tab-jobs")).to_be_visible()
    expect(page.locator("#job-title")).to_have_text(JOB)
    expect(page.locator("#job-state")).to_have_text("SUCCEEDED")
    expect(page.locator("#loss-chart")).to_have_attribute("data-points", "3")
    expect(page.locator("#loss-chart circle.dot.loss")).to_have_count(3)
    expect(page.locator("#job-logs")).to_contain_text("adapter v1 published")
    expect(page.locator(f"#jobs-table tr[data-job={JOB}]")).to_contain_text("SUCCEEDED")
    _shot(page, "jobs")

    # Closing the browser loses nothing: a fresh page lists the job from the training service.
    context.close()
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(web_cluster.url)
    page.click("#tabs button[data-tab=jobs]")
    page.click(f"#jobs-table tr[data-job={JOB}]")
    expect(page.locator("#loss-chart")).to_have_attribute("data-points", "3")
    expect(page.locator("#job-state")).to_have_text("SUCCEEDED")

    # Chat with the job's adapter through the rollout service.
    page.click("#tabs button[data-tab=chat]")
    expect(page.locator(f"#chat-model option[value='{JOB}@1']")).to_have_count(1)
    page.locator("#chat-model").select_option(JOB)
    page.fill("#chat-max-tokens", "8")
    page.fill("#chat-input", "Repeat: w01")
    page.click("#chat-send")
    expect(page.locator(".msg.user")).to_contain_text("Repeat: w01")
    reply = page.locator(".msg.assistant span")
    expect(reply).to_have_count(1)
    assert reply.inner_text().strip(), "the adapter's reply is empty"
    expect(page.locator(".msg.assistant b")).to_have_text(JOB)
    expect(page.locator("#chat-error")).to_be_hidden()
    _shot(page, "chat")

    # Cluster: every service SERVING, the queues and the dead-letter count.
    page.click("#tabs button[data-tab=cluster]")
    health = page.locator("#services-table .health.SERVING")
    expect(health).to_have_count(4)
    expect(page.locator("#cluster-redis")).to_contain_text("redis: up")
    expect(page.locator("#cluster-deadletters")).to_have_text("dead letters: 0")
    _shot(page, "cluster")

    # Rewards: the functions the reward service offers, and one scored in the page.
    page.click("#tabs button[data-tab=rewards]")
    expect(page.locator("#rewards-table tr[data-function=math_verify]")).to_contain_text("yes")
    page.locator("#reward-function").select_option("math_verify")
    page.fill("#reward-form [name=completion]", "so the answer is \\boxed{\\frac{1}{2}}")
    page.fill("#reward-form [name=reference]", "0.5")
    page.click("#reward-run")
    expect(page.locator("#reward-score")).to_have_text("reward: 1")
    expect(page.locator("#reward-parts tbody")).to_contain_text("equals the reference")
    expect(page.locator("#reward-error")).to_be_hidden()
    _shot(page, "rewards")

    # A job the service refuses shows the service's message; nothing pretends it started.
    page.click("#tabs button[data-tab=train]")
    page.locator("#train-form [name=dataset_dir]").fill(web_cluster.dataset_dir)
    expect(page.locator(f"#dataset-select option[value={dataset}]")).to_have_count(1)
    page.locator("#train-form [name=dataset]").select_option(dataset)
    # GRPO: its own box and the rollout/reward box it shares with PPO; PPO's own box hidden
    page.locator("#train-form [name=stage]").select_option("grpo")
    expect(page.locator("#train-form [data-stage=grpo]")).to_be_visible()
    expect(page.locator("#train-form [data-stage='ppo grpo']")).to_be_visible()
    expect(page.locator("#train-form [data-stage=ppo]")).to_be_hidden()
    page.locator("#train-form [name=loss_type]").select_option("dr_grpo")
    expect(page.locator("#yaml")).to_contain_text("stage: grpo")
    expect(page.locator("#yaml")).to_contain_text("num_generations: 8")
    expect(page.locator("#yaml")).to_contain_text("loss_type: dr_grpo")
    expect(page.locator("#yaml")).not_to_contain_text("ppo_epochs")
    page.locator("#train-form [name=stage]").select_option("ppo")
    expect(page.locator("#train-form [data-stage=ppo]")).to_be_visible()
    expect(page.locator("#train-form [data-stage=grpo]")).to_be_hidden()
    expect(page.locator("#yaml")).to_contain_text("stage: ppo")
    expect(page.locator("#yaml")).not_to_contain_text("num_generations")
    page.click("#start")
    error = page.locator("#yaml-error")
    expect(error).to_contain_text("INVALID_ARGUMENT")
    expect(error).to_contain_text("reward_scorer")
    expect(page.locator("#tab-train")).to_be_visible()
    _shot(page, "train-error")
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def test_evaluate_tab_runs_a_benchmark_and_predictions(browser, web_cluster, tmp_path):
    """The Evaluate tab: a multiple-choice benchmark on the training service (its tables: each
    category and subject) and predictions through the fleet (their metrics), each as the JSON API
    answers the same form."""
    import json

    from tests.training.test_benchmark import write_task

    expect = playwright_api.expect
    expect.set_options(timeout=TIMEOUT_MS)
    root = Path(web_cluster.base_model).parent
    task_dir = write_task(root / "tasks")
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(web_cluster.url)
    page.click("#tabs button[data-tab=evaluate]")
    page.fill("#bench-form [name=task_dir]", str(task_dir))
    page.fill("#bench-form [name=task]", "synth")
    page.fill("#bench-form [name=n_shot]", "1")
    page.click("#bench-run")
    expect(page.locator("#bench-table tr[data-subject]")).to_have_count(2)
    expect(page.locator("#bench-table tr.category")).to_have_count(3)  # STEM, Other, Average
    expect(page.locator("#bench-table tr[data-subject=alpha] td").nth(2)).to_have_text("8")

    save = root / "web-predictions"
    page.fill("#predict-form [name=dataset]", str(Path(web_cluster.dataset_dir) / "repeat.jsonl"))
    page.fill("#predict-form [name=max_tokens]", "4")
    page.fill("#predict-form [name=save_dir]", str(save))
    page.click("#predict-run")
    expect(page.locator("#predict-table tr[data-metric='predict_bleu-4']")).to_have_count(1)
    expect(page.locator("#predict-table tr[data-metric=predict_samples] td").nth(1)).to_have_text(
        "32"
    )
    results = json.loads((save / "predict_results.json").read_text())
    shown = page.locator("#predict-table tr[data-metric='predict_rouge-l'] td").nth(1).inner_text()
    assert float(shown) == pytest.approx(results["predict_rouge-l"])
    assert len((save / "predictions.jsonl").read_text().splitlines()) == 32
    _shot(page, "evaluate")

    page.fill("#bench-form [name=task]", "missing")
    page.click("#bench-run")
    expect(page.locator("#bench-error")).to_contain_text("missing is not a folder")
    assert not errors, errors
    context.close()
