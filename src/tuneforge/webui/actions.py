"""What the board's buttons do, without Gradio: a `Board` owns the jobs it started (training, prediction,
export: each a `tuneforge` subprocess) and the model loaded for chat. One Board per server; nothing here is
module state, so two browser tabs share a Board only through its locks.

Every job runs the same command a user would type, on a YAML file written first: the file beside a run is
the config that produced it, and it runs unchanged from the command line.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, TuneforgeError
from . import config_io
from .config_io import clean_config
from .jobs import Job, JobError, JobTable
from .progress import ProgressReader, latest_checkpoint

# Keys naming files or folders that the checks in this process must find where the run will.
PATH_KEYS = ("model_name_or_path", "adapter_name_or_path", "reward_model", "ref_model", "ref_model_adapters",
             "tokenized_path")
CHECK_SCRIPT = ("import sys\nfrom tuneforge.webui.config_io import check_config, from_yaml\n"
                "print(check_config(from_yaml(sys.argv[1])) or '')")
CONFIG_NAME = "training_args.yaml"  # beside the run, as LLaMA-Factory's board writes it
PREDICT_FILES = ("predict_results.json", "generated_predictions.jsonl")


@dataclass
class Started:
    job: Job
    config_path: str
    command: str


def command_line(command: str, config_path: str) -> list[str]:
    return [sys.executable, "-m", "tuneforge.cli", command, config_path]




class Board:
    def __init__(self, workdir: str | os.PathLike = "."):
        self.workdir = Path(workdir).resolve()
        self.jobs = JobTable()  # by output folder (absolute): the jobs this board started
        self._lock = threading.Lock()  # one start at a time: checks, then the job
        self._readers: dict[str, ProgressReader] = {}  # folder -> its incremental reader (under _read_lock)
        self._read_lock = threading.Lock()
        self._engine = None
        self._engine_name = ""
        self._engine_lock = threading.Lock()

    # ----- paths ---------------------------------------------------------------------------------------
    def path(self, given: str) -> Path:
        p = Path(given).expanduser()
        return p if p.is_absolute() else self.workdir / p

    def from_workdir(self, config: dict) -> dict:
        """A copy whose relative paths that exist in the working folder are absolute, for work done in this
        process (preview, chat); the jobs themselves run in the working folder with the paths as written."""
        out = dict(config)
        if str(config.get("dataset_dir") or "data") != "ONLINE":
            out["dataset_dir"] = str(self.path(str(config.get("dataset_dir") or "data")))
        for key in PATH_KEYS + ("dataset", "eval_dataset"):  # a dataset may be a file path rather than a name
            if config.get(key):
                parts = [p.strip() for p in str(config[key]).split(",")]
                out[key] = ",".join(str(self.path(p)) if p and self.path(p).exists() else p for p in parts)
        return out

    def _run_on_config(self, config: dict, argv: list[str], timeout: float) -> tuple[str, str]:
        """Runs argv + [a YAML file of config] in the working folder, so relative paths mean what they will
        mean to the run. (stdout, "") on success, else ("", the last line of stderr): the one-line error."""
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory(prefix="tuneforge-webui-") as tmp:
            path = os.path.join(tmp, "config.yaml")
            config_io.save_config(config, path)
            try:
                done = subprocess.run(argv + [path], cwd=self.workdir, text=True, capture_output=True,
                                      timeout=timeout)
            except subprocess.TimeoutExpired:
                return "", f"no answer within {timeout:.0f} s"
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            return "", lines[-1] if lines else f"exit code {done.returncode}"
        return done.stdout, ""

    def check(self, config: dict) -> str | None:
        """`tuneforge train`'s quick check of config (no torch): its one-line error, or None."""
        out, error = self._run_on_config(config, [sys.executable, "-c", CHECK_SCRIPT], timeout=120)
        return error or out.strip() or None

    def job(self, folder: str) -> Job | None:
        return self.jobs.get(str(self.path(folder)))

    # ----- training and prediction ---------------------------------------------------------------------
    def start_train(self, config: dict, resume: bool = False) -> Started:
        """Writes <output_dir>/training_args.yaml and starts `tuneforge train` on it. Refused (ConfigError,
        one line) for a config `train` would refuse, or an output_dir another run is writing."""
        config = clean_config(config)
        if not config.get("output_dir"):
            raise ConfigError("output_dir is empty: name the folder the run writes to (e.g. saves/my-run)")
        folder = self.path(str(config["output_dir"]))
        if resume:
            checkpoint = latest_checkpoint(str(folder))  # the last complete one (a stop may have cut the next short)
            if checkpoint is None:
                raise ConfigError(f"output_dir {folder} has no checkpoint to resume from; start the run instead")
            config.pop("overwrite_output_dir", None)
            config["resume_from_checkpoint"] = checkpoint
        error = self.check(config)
        if error:
            raise ConfigError(error)
        with self._lock:
            try:
                self.jobs.check_free(str(folder))
            except JobError as err:
                raise ConfigError(str(err)) from None
            self._check_previous_run(folder, config)
            folder.mkdir(parents=True, exist_ok=True)
            config_path = folder / CONFIG_NAME
            config_io.save_config(config, config_path)
            try:
                job = self.jobs.start_train(str(config_path), str(folder), cwd=str(self.workdir))
            except JobError as err:
                raise ConfigError(str(err)) from None
        return Started(job, str(config_path), " ".join(["tuneforge", "train", str(config_path)]))

    @staticmethod
    def _check_previous_run(folder: Path, config: dict) -> None:
        """`train`'s own refusal of a folder holding a run, before this page writes its config there."""
        from types import SimpleNamespace

        from ..train.common import check_output_dir

        training = SimpleNamespace(output_dir=str(folder), resume_from_checkpoint=config.get("resume_from_checkpoint"))
        check_output_dir(training, bool(config.get("overwrite_output_dir")))

    def stop(self, folder: str) -> str:
        """Asks the run to stop and returns at once (the progress shows when it has); asked again while it
        still runs, kills it and everything it started."""
        job = self.job(folder)
        if job is None or job.state != "running":
            return "nothing running from this page in that folder"
        if job.stop_requested:
            job.kill()
            return f"killed ({job.describe()}); the last complete checkpoint is kept"
        job.request_stop()
        return "stopping: the current step finishes and a checkpoint is saved (press Stop again to kill it now)"

    def status(self, folder: str, log_lines: int = 40):
        """(Progress, job state or None) of the run in `folder`, whoever started it."""
        if not folder:
            return None, None
        path = str(self.path(folder))
        job = self.job(folder)
        with self._read_lock:  # every tab's timer asks each second: parse only what the log gained since
            reader = self._readers.get(path)
            if reader is None:
                if len(self._readers) > 64:  # folders typed once and left: keep the watched ones
                    self._readers.clear()
                reader = self._readers[path] = ProgressReader(path, log_lines)
            progress = reader.read()
        return progress, (job.state if job else None)

    def start_predict(self, config: dict) -> Started:
        """Batch prediction with BLEU/ROUGE: `tuneforge train` with do_predict and predict_with_generate."""
        config = clean_config(config)
        config.update(stage="sft", do_predict=True, predict_with_generate=True)
        for key in ("do_train", "dataset", "resume_from_checkpoint"):
            config.pop(key, None)
        return self.start_train(config)

    def predict_results(self, folder: str, rows: int = 20) -> tuple[dict, list[dict]]:
        path = self.path(folder)
        results, predictions = {}, []
        try:  # the files may be half written by a run still going (started here or from the shell)
            if (path / PREDICT_FILES[0]).is_file():
                results = json.loads((path / PREDICT_FILES[0]).read_text(encoding="utf-8"))
            if (path / PREDICT_FILES[1]).is_file():
                with open(path / PREDICT_FILES[1], encoding="utf-8") as f:
                    for line in f:
                        if len(predictions) >= rows or not line.endswith("\n"):
                            break
                        predictions.append(json.loads(line))
        except (OSError, ValueError):
            pass
        return results, predictions

    def estimate(self, config: dict, timeout: float = 600) -> dict:
        """`tuneforge estimate --json` on the form's config, in a subprocess (it tokenizes the data, as the run
        will, into the same cache): the JSON report, or {"error": its one-line message}."""
        argv = [sys.executable, "-m", "tuneforge.cli", "estimate", "--json"]
        out, error = self._run_on_config(clean_config(config), argv, timeout)
        if error:
            return {"error": error}
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return {"error": "tuneforge estimate printed no report"}

    # ----- export --------------------------------------------------------------------------------------
    def start_export(self, config: dict) -> Started:
        config = clean_config(config)
        if not config.get("export_dir"):
            raise ConfigError("export_dir is empty: name the folder the export writes to (e.g. saves/my-model-gguf)")
        folder = self.path(str(config["export_dir"]))
        with self._lock:
            log_dir = self.workdir / ".tuneforge-webui"
            log_dir.mkdir(exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            config_path = log_dir / f"export-{stamp}.yaml"
            config_io.save_config(config, config_path)
            try:
                job = self.jobs.start(str(folder), command_line("export", str(config_path)),
                                      str(log_dir / f"export-{stamp}.log"), cwd=str(self.workdir))
            except JobError as err:
                raise ConfigError(f"export into {folder}: {err}") from None
        return Started(job, str(config_path), f"tuneforge export {config_path}")

    def export_files(self, folder: str) -> list[str]:
        path = self.path(folder)
        if not path.is_dir():
            return []
        return [f"{p}  ({p.stat().st_size / 2**20:.1f} MB)" for p in sorted(path.iterdir()) if p.is_file()]

    # ----- chat ----------------------------------------------------------------------------------------
    def load_chat(self, config: dict) -> str:
        """Loads model (+ adapters) for the Chat tab, replacing the one loaded before."""
        from ..infer.engine import ChatEngine
        from ..infer.serve_config import parse_serve_args

        given = clean_config(config)
        if not given.get("model_name_or_path"):
            raise ConfigError("no model is chosen: pick one in the Model field on top, then Load model")
        config = self.from_workdir(given)
        keys = ("model_name_or_path", "adapter_name_or_path", "template", "finetuning_type", "default_system",
                "enable_thinking", "infer_dtype", "quantization_bit")
        argv = [f"{k}={config[k]}" for k in keys if k in config]
        args, _ = parse_serve_args(argv, "webchat", default_port=7860)
        with self._engine_lock:
            self._close_engine()
            self._engine = ChatEngine.from_args(args, max_batch_size=4, max_waiting=16)
            adapter = given.get("adapter_name_or_path")
            self._engine_name = given["model_name_or_path"] + (f" + {adapter}" if adapter else "")
        return self._engine_name

    def engine(self):
        with self._engine_lock:
            if self._engine is None:
                raise TuneforgeError("no model is loaded: press Load model first")
            return self._engine

    def unload_chat(self) -> None:
        with self._engine_lock:
            self._close_engine()

    def _close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine, self._engine_name = None, ""

    def close(self) -> None:
        self.unload_chat()
        self.jobs.stop_all()
