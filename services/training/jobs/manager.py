"""The job manager: creates jobs, runs each one's runner in its own process group, watches it.

A job lives in ``<jobs_dir>/<job_id>/`` (a symlink to ``spec.output_dir`` when the spec names
one). The manager writes ``spec.binpb`` and the QUEUED event, launches the runner
(``launch.runner_command`` unless a test injects another launcher) with
``start_new_session`` and its output in ``runner.log``, records ``runner.pid``, and when the runner
exits appends the final state from the runner's ``result.json``; no result means the runner died,
and the job is FAILED with a message that says how and that ``resume`` continues from the last
checkpoint. Cancel sends SIGTERM to the process group and SIGKILL after ``cancel_grace_s``; the
job ends CANCELLED either way. A watchdog thread polls the runners; a crashing runner never
touches the service. On start-up every job folder is read back: a live runner is re-attached, a
dead one's job is finished as above, a job queued but never launched is launched.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from llamafleet.training.v1 import training_pb2 as pb

from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    invalid,
)
from services.training.adapters import store as adapter_store
from services.training.config import TrainingConfig
from services.training.jobs import access, process
from services.training.jobs.events import EventLog
from services.training.jobs.process import (
    DEFAULT_BASE_ENV,
    LOG_FILE,
    PID_FILE,
    PPO_REDIS_URL_ENV,
    Launcher,
    RunnerProcess,
    attach,
    death_message,
    default_launcher,
)
from services.training.jobs.store import (
    RESULT_FILE,
    SPEC_FILE,
    JobView,
    read_result,
    repair_event_log,
    write_spec,
)
from services.training.spec.normalize import normalize, same_spec
from services.training.spec.normalize import validate as validate_request
from services.training.spec.settings import INIT_ADAPTER_DIR
from services.training.spec.validation import validate

logger = logging.getLogger(__name__)

CANCEL_FILE = "cancel_requested"
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000
MAX_PAGE_BYTES = 2 << 20  # a ListTrainingJobs page stops growing past this (the limit is 4 MiB)
MAX_LISTED_JOB_BYTES = 256 << 10  # a larger job is listed with its spec trimmed


class JobManager:
    def __init__(
        self,
        config: TrainingConfig,
        launcher: Launcher = default_launcher,
        validator: Callable[[pb.TrainingJobSpec], None] = validate,
    ) -> None:
        self.config = config
        self.root = Path(config.jobs_dir).resolve()
        self._launcher, self._validator = launcher, validator
        self._lock = threading.RLock()
        self._jobs: dict[str, JobView] = {}
        self._runs: dict[str, RunnerProcess] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._load()

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> JobManager:
        self._thread = threading.Thread(target=self._watchdog, name="job-watchdog", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop watching (runners keep running; a new manager re-attaches them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _load(self) -> None:
        if not self.root.is_dir():
            return  # created with the first job
        for entry in sorted(self.root.iterdir()):
            if not (entry / SPEC_FILE).is_file():
                continue
            try:
                view = JobView(entry.resolve())
            except Exception:
                logger.exception("job folder %s is unreadable; skipped", entry)
                continue
            if view.job.last_event_sequence == 0:
                logger.warning("job folder %s was never fully created; removed", entry)
                _remove_job_dir(entry)
                continue
            self._jobs[view.id] = view
            if view.terminal:
                continue
            run = attach(view.dir)
            if run is not None:
                self._runs[view.id] = run
                if (view.dir / CANCEL_FILE).exists():
                    run.kill_at = time.monotonic() + self.config.cancel_grace_s
                logger.info("job %s: re-attached to runner pid %d", view.id, run.pid)
            elif not (view.dir / PID_FILE).exists() and view.state == pb.JOB_STATE_QUEUED:
                logger.info("job %s was queued but never launched; launching", view.id)
                self._launch_or_fail(view)
            else:
                self._finish(view, None)

    # --- queries ---------------------------------------------------------------------------

    def view(self, job_id: str) -> JobView:
        with self._lock:
            found = self._jobs.get(job_id)
        if found is None:
            raise NotFound(f"no training job {job_id!r}", reason="JOB_NOT_FOUND")
        return found

    def get(self, job_id: str) -> pb.TrainingJob:
        view = self.view(job_id)
        view.hash_adapters()  # slow for big adapters: outside the lock (describe hits the cache)
        with self._lock:
            return view.describe()

    def progress(self, job_id: str) -> tuple[int, int]:
        """(state, last event sequence) of a job, current."""
        view = self.view(job_id)
        with self._lock:
            view.refresh()
            return view.state, view.job.last_event_sequence

    def list(
        self, states: list[int], page_size: int, page_token: str
    ) -> tuple[list[pb.TrainingJob], str]:
        if page_size < 0:
            raise invalid("page_size", "must be >= 0")
        for i, state in enumerate(states):
            if state == pb.JOB_STATE_UNSPECIFIED or state not in pb.JobState.values():
                raise invalid(f"states[{i}]", "must be a JobState other than UNSPECIFIED")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_token(page_token) if page_token else None
        with self._lock:
            views = list(self._jobs.values())
            for view in views:
                view.refresh()
        keyed = sorted(
            ((-v.job.create_time.ToNanoseconds(), v.id), v)
            for v in views
            if not states or v.state in states
        )
        if after is not None:
            keyed = [kv for kv in keyed if kv[0] > after]
        page = keyed[:size]
        for _, view in page:
            view.hash_adapters()
        with self._lock:
            described = [view.describe() for _, view in page]
        # A page stays well under the message limit, however large the jobs are (specs are
        # bounded now; jobs written before that are listed with a trimmed spec).
        jobs: list[pb.TrainingJob] = []
        total = 0
        for job in described:
            if job.ByteSize() > MAX_LISTED_JOB_BYTES:
                job = _trimmed(job)
            if jobs and total + job.ByteSize() > MAX_PAGE_BYTES:
                break
            jobs.append(job)
            total += job.ByteSize()
        more = len(jobs) < len(described) or len(keyed) > size
        token = _encode_token(page[len(jobs) - 1][0]) if more and jobs else ""
        return jobs, token

    # --- commands --------------------------------------------------------------------------

    def create(self, spec: pb.TrainingJobSpec) -> pb.TrainingJob:
        # Everything is checked before anything is created, written or launched: the bounds of
        # the whole spec (unknown enum values, NaN, sizes), its paths under the roots, what the
        # service sees on its own, then the whole spec recipe by recipe.
        access.check_bounds(spec, self.config)
        resolved, unresolved = access.resolve_paths(spec, self.config)
        self._name_resumed_job(resolved)
        spec = normalize(resolved)
        try:
            validate_request(spec)
        except InvalidArgument as err:
            err.violations = _merged(unresolved, err.violations)
            raise
        if unresolved:
            raise InvalidArgument(
                "the training job spec is invalid", reason="INVALID_JOB_SPEC", violations=unresolved
            )
        self._validator(spec)
        address = self.config.data_address.strip()
        if spec.HasField("eval_benchmark") and (not address or address.startswith("file://")):
            raise FailedPrecondition(
                "spec.eval_benchmark: benchmark prompts are rendered by the data service, and "
                "this training service has no data service (data_address "
                f"{address or 'empty'}); set LLAMAFLEET_TRAINING_DATA_ADDRESS",
                reason="NO_DATA_SERVICE",
            )
        if spec.stage in (pb.STAGE_PPO, pb.STAGE_GRPO) and not self.config.redis_url:
            raise FailedPrecondition(
                f"{pb.Stage.Name(spec.stage)} reaches the rollout and reward workers through Redis, and this training "
                "service has none: set redis_url (LLAMAFLEET_TRAINING_REDIS_URL)",
                reason="NO_WORK_QUEUE",
            )
        with self._lock:
            existing = self._jobs.get(spec.job_id)
            if existing is not None:
                return self._create_existing(existing, spec)
            start = self._starting_adapter(spec)
            self._check_resume_folder(spec)
            job_dir = self._make_job_dir(spec)
            try:
                note = _import_adapter(job_dir, *start) if start else ""
                argv, env = self._launcher(spec, job_dir, self.config.data_address, self._token)
            except BaseException:
                _remove_job_dir(self.root / spec.job_id if spec.output_dir else job_dir)
                raise
            EventLog(job_dir).append(
                pb.TrainingEvent(
                    state_change=pb.StateChange(state=pb.JOB_STATE_QUEUED, message=note)
                )
            )
            view = JobView(job_dir)
            self._jobs[view.id] = view
            self._spawn(view, argv, env)
            logger.info("job %s created (%s)", view.id, pb.Stage.Name(spec.stage))
            return view.describe()

    def _name_resumed_job(self, spec: pb.TrainingJobSpec) -> None:
        """``resume`` without a job_id but with an output_dir (LLaMA-Factory's
        ``resume_from_checkpoint: true``: the latest checkpoint in output_dir) names the job that
        writes there."""
        if not (spec.resume and not spec.job_id and spec.output_dir):
            return
        with self._lock:
            for view in self._jobs.values():
                if view.spec.output_dir == spec.output_dir:
                    spec.job_id = view.id
                    return
        raise FailedPrecondition(  # as Transformers: no checkpoint to resume is an error
            f"resume: no job of this service writes to {spec.output_dir}, so there is no "
            "checkpoint to resume; drop resume (resume_from_checkpoint: null) to start afresh",
            reason="NOTHING_TO_RESUME",
            violations=[FieldViolation("spec.resume", "no job writes to output_dir")],
        )

    def _starting_adapter(self, spec: pb.TrainingJobSpec) -> tuple[Path, str] | None:
        """(folder, what) of the adapter the job starts from: a published version of another
        job (init_adapter) or a folder (adapter_path); None without one."""
        if spec.adapter_path:
            return Path(spec.adapter_path), f"the adapter folder {spec.adapter_path}"
        if not spec.HasField("init_adapter"):
            return None
        ref = spec.init_adapter
        source = self._jobs.get(ref.id)
        if source is None:
            raise NotFound(f"spec.init_adapter: no training job {ref.id!r}", reason="JOB_NOT_FOUND")
        version, folder, _ = source.resolve_adapter(ref.version)
        if source.spec.base_model != spec.base_model:
            raise FailedPrecondition(
                f"spec.init_adapter: {ref.id}@{version} was trained on "
                f"{source.spec.base_model}, not on this job's base_model {spec.base_model}",
                reason="ADAPTER_BASE_MISMATCH",
                violations=[FieldViolation("spec.init_adapter", "trained on another base")],
            )
        return folder, f"{ref.id}@{version}"

    def _check_resume_folder(self, spec: pb.TrainingJobSpec) -> None:
        """A named checkpoint must be one of this service's jobs' checkpoints."""
        if not spec.resume_from_checkpoint:
            return
        folder = Path(spec.resume_from_checkpoint).resolve()
        for view in self._jobs.values():
            if folder.parent == (view.dir / "checkpoints").resolve():
                spec.resume_from_checkpoint = str(folder)
                return
        if folder.parent == (self.root / spec.job_id / "checkpoints").resolve():
            return  # this job's own (a job created again with the same id and folder)
        raise FailedPrecondition(
            f"spec.resume_from_checkpoint: {folder} is not a checkpoint of a job of this "
            "service (<job folder>/checkpoints/step-N)",
            reason="CHECKPOINT_NOT_FOUND",
            violations=[FieldViolation("spec.resume_from_checkpoint", "not a job's checkpoint")],
        )

    @property
    def _token(self) -> str:
        return self.config.auth_token

    def _make_job_dir(self, spec: pb.TrainingJobSpec) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        link = self.root / spec.job_id
        if link.exists() or link.is_symlink():
            raise FailedPrecondition(
                f"{link} exists but holds no readable job; move it away to reuse the id",
                reason="JOB_DIR_EXISTS",
            )
        if not spec.output_dir:
            link.mkdir()
            write_spec(link, spec)
            return link
        out = Path(spec.output_dir)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise FailedPrecondition(
                f"spec.output_dir {out} exists and is not empty; pick another folder",
                reason="OUTPUT_DIR_NOT_EMPTY",
                violations=[FieldViolation("spec.output_dir", "exists and is not empty")],
            )
        out.mkdir(parents=True, exist_ok=True)
        write_spec(out, spec)
        link.symlink_to(out, target_is_directory=True)
        return out

    def _create_existing(self, view: JobView, spec: pb.TrainingJobSpec) -> pb.TrainingJob:
        view.refresh()
        same = same_spec(view.spec, spec)
        if same and not (
            spec.resume and view.state in (pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)
        ):
            return view.describe()
        if not same and not spec.resume:
            raise AlreadyExists(
                f"training job {view.id!r} exists with a different spec; choose another job_id, "
                "or set resume to continue that job with this spec",
                reason="JOB_EXISTS",
            )
        if not view.terminal:
            raise FailedPrecondition(
                f"training job {view.id!r} is {pb.JobState.Name(view.state)}; cancel it or wait "
                "for it to finish before resuming it with a changed spec",
                reason="JOB_ACTIVE",
            )
        argv, env = self._launcher(spec, view.dir, self.config.data_address, self._token)
        view.set_spec(spec)
        for name in (RESULT_FILE, CANCEL_FILE, PID_FILE):
            (view.dir / name).unlink(missing_ok=True)
        self._append_state(view, pb.JOB_STATE_QUEUED, "resumed from the last checkpoint")
        self._spawn(view, argv, env)
        logger.info("job %s resumed", view.id)
        return view.describe()

    def _launch_or_fail(self, view: JobView) -> None:
        try:
            argv, env = self._launcher(view.spec, view.dir, self.config.data_address, self._token)
        except Exception as exc:
            self._append_state(view, pb.JOB_STATE_FAILED, f"could not launch the runner: {exc}")
            return
        self._spawn(view, argv, env)

    def _spawn(self, view: JobView, argv: list[str], env: dict[str, str]) -> None:
        if view.spec.stage in (
            pb.STAGE_PPO,
            pb.STAGE_GRPO,
        ):  # the trainer talks to the fleets through Redis
            env = {
                **env,
                PPO_REDIS_URL_ENV: self.config.redis_url,
                DEFAULT_BASE_ENV: self.config.default_base,
            }
        try:
            self._runs[view.id] = process.spawn(view.dir, argv, env)
        except OSError as exc:
            logger.warning("job %s: could not start %s: %s", view.id, argv[:1], exc)
            self._append_state(view, pb.JOB_STATE_FAILED, f"could not start the runner: {exc}")

    def cancel(self, job_id: str) -> pb.TrainingJob:
        view = self.view(job_id)
        with self._lock:
            view.refresh()
            run = self._runs.get(job_id)
            if view.terminal or run is None:
                return view.describe()
            if run.kill_at is None:
                (view.dir / CANCEL_FILE).touch()
                run.kill_at = time.monotonic() + self.config.cancel_grace_s
                run.signal(signal.SIGTERM)
                logger.info("job %s: cancel requested (SIGTERM to group %d)", job_id, run.pid)
            return view.describe()

    # --- the watchdog ----------------------------------------------------------------------

    def _watchdog(self) -> None:
        while not self._stop.wait(self.config.poll_interval_s):
            try:
                self.check_runners()
            except Exception:  # the watchdog must outlive any one job's oddities
                logger.exception("job watchdog iteration failed")

    def check_runners(self) -> None:
        with self._lock:
            for job_id, run in list(self._runs.items()):
                alive, code = run.exit_code()
                if alive:
                    if (
                        run.kill_at is not None
                        and time.monotonic() >= run.kill_at
                        and not run.killed
                    ):
                        logger.warning("job %s: runner ignored SIGTERM; sending SIGKILL", job_id)
                        run.signal(signal.SIGKILL)
                        run.killed = True
                    continue
                if run.proc is not None:
                    run.signal(signal.SIGKILL)  # stray processes left in the runner's group
                del self._runs[job_id]
                self._finish(self._jobs[job_id], code, killed_on_cancel=run.killed)

    def _finish(self, view: JobView, code: int | None, killed_on_cancel: bool = False) -> None:
        """Append the final state of a job whose runner is gone."""
        view.refresh()
        (view.dir / PID_FILE).unlink(missing_ok=True)
        if view.terminal:
            return
        result = read_result(view.dir)
        cancelled = (view.dir / CANCEL_FILE).exists()
        if result is not None:
            state = pb.JobState.Value(f"JOB_STATE_{result['state']}")
            message = str(result.get("message", ""))
        elif cancelled:
            state = pb.JOB_STATE_CANCELLED
            how = (
                f"did not stop within {self.config.cancel_grace_s:g}s of SIGTERM and was killed"
                if killed_on_cancel
                else "stopped without writing result.json"
            )
            message = f"the runner {how}; {self._checkpoint_note(view)}"
        else:
            state = pb.JOB_STATE_FAILED
            message = (
                f"{death_message(code)} at step {view.job.latest_step}; see {view.dir / LOG_FILE}. "
            )
            message += (
                f"Create the job again with resume: true to continue; {self._checkpoint_note(view)}"
            )
        if state == pb.JOB_STATE_FAILED and not message:
            message = f"the runner reported failure without a message; see {view.dir / LOG_FILE}"
        self._append_state(view, state, message)
        logger.info("job %s ended %s", view.id, pb.JobState.Name(state))

    @staticmethod
    def _checkpoint_note(view: JobView) -> str:
        checkpoints = view.checkpoints()
        if not checkpoints:
            return "no checkpoint had been saved"
        return f"the last checkpoint (step {checkpoints[-1].step}) is kept"

    def _append_state(self, view: JobView, state: int, message: str = "") -> None:
        view.refresh()
        repair_event_log(view.dir)
        change = pb.StateChange(previous_state=view.state, state=state, message=message)
        EventLog(view.dir).append(pb.TrainingEvent(state_change=change))
        view.refresh()


def _import_adapter(job_dir: Path, folder: Path, what: str) -> str:
    """Copy the starting adapter into the job folder (``INIT_ADAPTER_DIR``) and record its
    sha256 (of the deterministic archive FetchAdapter would stream) beside it."""
    dest = job_dir / INIT_ADAPTER_DIR
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns(".*"))
    info = adapter_store.archive_info(dest)[1]
    record = {"source": what, "sha256": info.sha256, "size_bytes": info.total_size}
    (job_dir / f"{INIT_ADAPTER_DIR}.json").write_text(json.dumps(record, indent=1) + "\n")
    logger.info("job %s starts from %s (sha256 %s)", job_dir.name, what, info.sha256)
    return f"starts from {what} (sha256 {info.sha256})"


def _remove_job_dir(path: Path) -> None:
    if path.is_symlink():
        target = path.resolve()
        path.unlink()
        shutil.rmtree(target, ignore_errors=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _encode_token(key: tuple[int, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def _decode_token(token: str) -> tuple[int, str]:
    try:
        ns, job_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(ns), str(job_id)
    except (ValueError, TypeError):
        raise InvalidArgument(
            "page_token is not a token this service issued",
            reason="INVALID_PAGE_TOKEN",
            violations=[
                FieldViolation("page_token", "not a next_page_token from ListTrainingJobs")
            ],
        ) from None


def _trimmed(job: pb.TrainingJob) -> pb.TrainingJob:
    """``job`` with its spec cut to what a listing shows (id, stage, base model): for jobs
    created before specs were bounded, which must not make a page too large to send."""
    out = pb.TrainingJob()
    out.CopyFrom(job)
    out.spec.Clear()
    out.spec.job_id = job.spec.job_id[:128]
    out.spec.stage = job.spec.stage
    out.spec.base_model = job.spec.base_model[:1024]
    out.failure_message = job.failure_message[:1024]
    logger.warning("job %s is listed with a trimmed spec (%d bytes)", job.id[:64], job.ByteSize())
    return out


def _merged(first: list[FieldViolation], then: list[FieldViolation]) -> list[FieldViolation]:
    """``first`` and the violations of ``then`` about other fields (one message per field)."""
    fields = {v.field for v in first}
    return [*first, *(v for v in then if v.field not in fields)]
