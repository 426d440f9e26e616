"""Comparing runs, and the faults the Runs queue must survive: a locked database, a full disk."""
import json
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

from conftest import ROOT, until
from core import db, jobs, runview
from core.config import RunConfig
from core.errors import WorkbenchError
from webui.charts import compare_figure

DATA = ROOT / "presets" / "data" / "identity.jsonl"


def cfg(model, name="t", train=None, **sections):
    train = {"max_steps": 2, "batch_size": 2, "save_steps": 0, **(train or {})}
    return RunConfig.from_dict({"model": str(model), "name": name, "datasets": [str(DATA)], "train": train,
                                **sections})



# ---- compare ---------------------------------------------------------------------------------

def test_differing_settings_lists_only_what_differs_in_run_order(tiny_model, workspace):
    a = jobs.submit(cfg(tiny_model, "a", lora={"rank": 8}))
    b = jobs.submit(cfg(tiny_model, "b", lora={"rank": 32}))
    c = jobs.submit(cfg(tiny_model, "c", lora={"rank": 8}, train={"learning_rate": 1e-3}))
    configs = {j.name: j.dir.read_config() for j in (a, b, c)}
    assert len({c["output_dir"] for c in configs.values()}) == 3
    diffs = runview.differing_settings(configs)
    assert diffs == {"lora.rank": [8, 32, 8], "train.learning_rate": [2e-4, 2e-4, 1e-3]}
    assert runview.differing_settings({"a": configs["a"], "a again": configs["a"]}) == {}


def test_two_runs_of_one_name_keep_their_own_curves_in_a_comparison(tiny_model, workspace):
    first, second, other = (jobs.submit(cfg(tiny_model, n)) for n in ("same", "same", "other"))
    labels = runview.run_labels({j.id: j for j in (first, second, other)})
    assert labels == {first.id: f"same · {first.id}", second.id: f"same · {second.id}", other.id: "other"}


def test_differing_settings_shows_a_setting_one_run_lacks():
    diffs = runview.differing_settings({"old": {"train": {"lr": 1}}, "new": {"train": {"lr": 1, "seed": 3}}})
    assert diffs == {"train.seed": [None, 3]}


def test_smooth_is_debiased_and_follows_the_trend():
    assert runview.smooth([]) == []
    assert runview.smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert runview.smooth([5.0, 1.0], weight=0.0) == [5.0, 1.0]
    falling = runview.smooth([4.0, 3.0, 2.0, 1.0], weight=0.5)
    assert falling[0] == 4.0 and falling == sorted(falling, reverse=True) and falling[-1] > 1.0


def test_compare_figure_draws_one_smoothed_curve_per_run(workspace, tiny_model):
    runs = {name: jobs.submit(cfg(tiny_model, name)).dir for name in ("rank 8", "rank 32")}
    for i, run in enumerate(runs.values()):
        for step in range(1, 6):
            run.append_metric({"step": step, "loss": 3.0 - 0.1 * step * (i + 1)})
        run.append_metric({"step": 5, "eval_loss": 2.5})
    curves = {name: run.read_metrics() for name, run in runs.items()}
    fig = compare_figure(curves)
    assert [tr.name for tr in fig.data] == list(runs)
    for tr, rows in zip(fig.data, curves.values()):
        losses = [r["loss"] for r in rows if "loss" in r]
        assert list(tr.x) == [1, 2, 3, 4, 5] and list(tr.y) == pytest.approx(runview.smooth(losses))
    assert len(compare_figure({}).data) == 0


# ---- database locked -------------------------------------------------------------------------

@contextmanager
def write_locked(seconds):
    """Another connection holds the workspace database's write lock, released after `seconds`."""
    db.connect().close()
    holder = sqlite3.connect(db.db_path(), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE jobs SET error=error")
    release = threading.Timer(seconds, lambda: (holder.execute("COMMIT"), holder.close()))
    release.start()
    try:
        yield
    finally:
        release.join()


def test_start_and_a_supervisor_tick_wait_for_a_locked_database(tiny_model, workspace):
    with write_locked(2.0):
        began = time.time()
        job = jobs.submit(cfg(tiny_model), request_key="press-1")
        waited = time.time() - began
    assert waited > 1.5, "submit should have waited for the lock"
    assert [j.id for j in jobs.list_jobs()] == [job.id] and jobs.get(job.id).state == "queued"
    assert [p.name for p in (workspace / "runs").iterdir()] == [job.id]
    sup = jobs.Supervisor()
    try:
        with write_locked(2.0):
            sup.tick()
        started = jobs.get(job.id)
        assert started.state == "starting" and jobs.pid_alive(started.pid, job.id)
        until(lambda: jobs.get(job.id).state == "completed", sup=sup)
    finally:
        sup.release()
    assert len(jobs.list_jobs()) == 1


def test_a_lock_held_past_the_busy_timeout_is_a_clear_error_and_the_supervisor_carries_on(
        tiny_model, workspace, monkeypatch, capfd):
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.5)
    gone = jobs.submit(cfg(tiny_model, "gone"))
    shutil.rmtree(gone.dir.root)
    sup = jobs.Supervisor(poll_s=0.2)
    try:
        with write_locked(3.0):
            sup.start_background()
            began = time.time()
            with pytest.raises(WorkbenchError, match="stayed locked") as refused:
                jobs.submit(cfg(tiny_model, "refused"))
            assert time.time() - began < 2.5
            assert isinstance(refused.value, sqlite3.OperationalError)
            assert [j.id for j in jobs.list_jobs()] == [gone.id] and not any((workspace / "runs").iterdir())
            time.sleep(0.5)
            assert jobs.get(gone.id).state == "queued"
        until(lambda: jobs.get(gone.id).state == "failed", timeout=10)
        assert sup._thread.is_alive()
    finally:
        sup.shutdown()
    assert "stayed locked" in capfd.readouterr().err


# ---- disk full while saving ------------------------------------------------------------------

FILE_LIMIT = 64 * 1024


def _file_size_limit():
    """Writes past FILE_LIMIT bytes fail with EFBIG, the way writes to a full disk fail with ENOSPC."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_a_full_disk_while_saving_fails_the_run_cleanly_and_the_queue_goes_on(tiny_model, workspace):
    """The big adapter (32768 fp32 weights, 128 KiB) cannot be written; status.json, metrics, the log,
    the database and the small adapter behind it (2048 weights) all stay under the limit."""
    big = jobs.submit(cfg(tiny_model, "big", lora={"rank": 32}))
    small = jobs.submit(cfg(tiny_model, "small", lora={"rank": 2}))
    assert db.db_path().stat().st_size < FILE_LIMIT
    supervisor = subprocess.run([sys.executable, "-m", "core", "runs", "supervise", "--until-idle", "--poll", "0.3"],
                                cwd=ROOT, preexec_fn=_file_size_limit, capture_output=True, text=True, timeout=300)
    assert supervisor.returncode == 0, supervisor.stderr
    failed, status = jobs.get(big.id), big.dir.read_status()
    assert status["trainable_params"] * 4 > FILE_LIMIT and status["step"] == 2
    assert failed.state == "failed" == status["state"]
    assert "disk is full" in failed.error and "File too large" in failed.error
    assert failed.error == status["error"]
    assert not big.dir.adapter.exists() and not list(big.dir.root.glob(".adapter*"))
    done = jobs.get(small.id)
    assert done.state == "completed", done.error
    assert (small.dir.adapter / "adapter_model.safetensors").is_file()


def test_the_runs_list_reads_a_runs_last_loss_from_the_end_of_its_metrics(tmp_path):
    from core.runfiles import RunDir

    run = RunDir(tmp_path / "r")
    run.root.mkdir()
    rows = [{"step": i, "loss": 10 - i / 1000} for i in range(1, 5001)] + [{"step": 5000, "eval_loss": 1.5}]
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5001, "lo')   # cut mid-line
    assert run.last_metric("loss") == 10 - 5000 / 1000 and run.last_metric("eval_loss") == 1.5
    assert run.last_metric("accuracy") is None and RunDir(tmp_path / "none").last_metric("loss") is None


def test_a_workspace_that_is_a_file_or_a_damaged_database_is_one_line_not_a_traceback(cli, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    damaged = tmp_path / "ws"
    damaged.mkdir()
    (damaged / "workbench.db").write_bytes(b"not sqlite at all" * 300)
    for args, said in [(["--workspace", afile, "runs", "list"], "is a file, not a folder"),
                       (["--workspace", damaged, "library", "list"], "workbench.db cannot be read"),
                       (["--workspace", damaged, "data", "list"], "move it aside")]:
        r = cli(*args)
        assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    for workspace, said in [(afile, "is a file, not a folder"), (damaged, "workbench.db cannot be read")]:
        r = subprocess.run([sys.executable, "app.py", "--port", "0", "--workspace", str(workspace)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)     # the app, as `make run` starts it
        assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_numbers_past_what_the_model_or_a_gpu_can_be_are_refused(cli, tiny_model):
    r = cli("chat", "--model", tiny_model, "--prompt", "hi", "--max-new-tokens", "100000000")
    assert r.returncode == 2 and "the model's context length" in r.stderr, r.stderr
    r = cli("estimate", "--model", "Qwen2.5-0.5B", "--gpu-gib", "nan")
    assert r.returncode == 2 and "must be more than 0 GiB" in r.stderr, r.stderr
