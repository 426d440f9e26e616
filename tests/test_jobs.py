"""The queue and supervisor with real worker processes on the tiny model."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import gradio as gr
import pytest

from conftest import ROOT, run_cli, until
from core import jobs
from core.config import RunConfig
from core.errors import WorkbenchError
from core.runfiles import read_metrics

DATA = ROOT / "presets" / "data" / "identity.jsonl"


def cfg(tiny_model, steps=3, name="t"):
    return RunConfig.from_dict({"model": str(tiny_model), "name": name, "datasets": [str(DATA)],
                                "train": {"max_steps": steps, "batch_size": 2, "save_steps": 0}})



def state(job_id):
    return jobs.get(job_id).state


def test_queue_runs_one_at_a_time_in_order_and_can_be_reordered(tiny_model, workspace):
    a, b, c = (jobs.submit(cfg(tiny_model, name=n)) for n in "abc")
    jobs.move(c.id, -1)
    assert [j.id for j in jobs.queue()] == [a.id, c.id, b.id]
    assert jobs.queue_position(b.id) == 3
    sup = jobs.Supervisor()
    most_active = 0

    def done():
        nonlocal most_active
        states = [state(x.id) for x in (a, b, c)]
        most_active = max(most_active, sum(s in jobs.ACTIVE for s in states))
        return all(s == "completed" for s in states)

    until(done, timeout=240, sup=sup)
    sup.release()
    started = sorted((jobs.get(x.id).started_at, x.id) for x in (a, b, c))
    assert [i for _, i in started] == [a.id, c.id, b.id] and most_active == 1


def test_remove_takes_a_queued_run_off_the_queue(tiny_model, workspace):
    job = jobs.submit(cfg(tiny_model))
    jobs.remove(job.id)
    assert jobs.queue() == [] and not job.dir.root.exists()


def stopped_run(tiny_model, sup, steps_done, method="lora"):
    """A queued run of 300 steps, stopped from the queue once it has trained steps_done of them."""
    run = cfg(tiny_model, steps=300)
    run.method = method
    job = jobs.submit(run)
    until(lambda: job.dir.read_status().get("step", 0) >= steps_done, sup=sup)
    jobs.stop(job.id)
    until(lambda: state(job.id) == "stopped", sup=sup)
    return job


def test_stop_checkpoints_and_resume_continues_the_step_count(tiny_model, workspace):
    sup = jobs.Supervisor()
    job = stopped_run(tiny_model, sup, 3)
    ckpt = job.dir.newest_checkpoint()
    assert ckpt is not None
    jobs.resume(job.id)
    assert state(job.id) == "queued"
    until(lambda: state(job.id) == "completed", timeout=300, sup=sup)
    sup.release()
    steps = [r["step"] for r in read_metrics(job.dir.metrics) if "loss" in r]
    assert steps == list(range(1, 301)) and job.dir.read_status()["step"] == 300


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_stopped_run_offers_its_newest_checkpoint_to_chat(tiny_model, workspace, method):
    """An adapter checkpoint is an adapter on the run's model; a full run's checkpoint is a base."""
    from core import chat_choices
    from core.chat import one_shot
    sup = jobs.Supervisor()
    job = stopped_run(tiny_model, sup, 2, method)
    sup.release()
    ckpt = chat_choices.of_run(jobs.get(job.id))
    assert isinstance(ckpt, chat_choices.Checkpoint) and ckpt.path == job.dir.newest_checkpoint().absolute()
    assert [c.value for c in chat_choices.checkpoints()] == [ckpt.value] and ckpt.is_adapter == (method == "lora")
    assert one_shot(job.id, "Hi", max_new_tokens=4) == one_shot(str(ckpt.path), "Hi", max_new_tokens=4)
    if method == "full":
        assert chat_choices.opening(ckpt) == (str(ckpt.path), "")
        assert str(ckpt.path) in [b.value for b in chat_choices.bases([], [ckpt])]
        return
    assert chat_choices.opening(ckpt) == (str(tiny_model), ckpt.value)
    assert chat_choices.adapter_path(ckpt.value) == ckpt.path
    assert chat_choices.adapter_base(ckpt.value) == str(tiny_model)
    assert str(tiny_model) in [b.value for b in chat_choices.bases([], [ckpt])]
    with pytest.raises(WorkbenchError, match="no longer has its checkpoint of step 999"):
        chat_choices.adapter_path(f"checkpoint:{job.id}/999")
    with pytest.raises(WorkbenchError, match="'gone', was removed from the Runs list"):
        chat_choices.adapter_path("checkpoint:gone/1")
    with pytest.raises(WorkbenchError, match="^field 'adapter': the adapter picked here is not in the library"):
        chat_choices.adapter_path("3f9c2a1b")        # a library entry's id, deleted since it was listed
    with pytest.raises(WorkbenchError, match="or a run that left an adapter or a checkpoint"):
        one_shot("gone", "Hi")
    from webui.chat_tab import adapter_choices
    jobs.resume(job.id)                  # queued again: no longer listed, yet a column that picked it keeps it
    assert chat_choices.checkpoints() == []
    assert (ckpt.label, ckpt.value) in adapter_choices("en", keep=(ckpt.value, ""))
    assert (f"{ckpt.run_name} · 第 {ckpt.step} 步 · 检查点", ckpt.value) in adapter_choices("zh", keep=(ckpt.value,))
    assert ckpt.value not in [v for _, v in adapter_choices("en")]


def test_killed_worker_is_marked_failed_within_seconds(tiny_model, workspace):
    job = jobs.submit(cfg(tiny_model, steps=100000))
    sup = jobs.Supervisor(poll_s=0.5).start_background()
    try:
        until(lambda: jobs.get(job.id).state == "running" and job.dir.read_status().get("step", 0) >= 1)
        os.kill(jobs.get(job.id).pid, signal.SIGKILL)
        killed = time.time()
        until(lambda: state(job.id) == "failed", timeout=10)
        assert time.time() - killed < 5
        failed = jobs.get(job.id)
        assert "SIGKILL" in failed.error and "last log lines" in failed.error
        assert job.dir.read_status()["state"] == "failed"
        assert sup._thread.is_alive() and jobs.list_jobs()
    finally:
        sup.shutdown()


def test_a_restarted_supervisor_reattaches_and_the_run_completes(tiny_model, workspace):
    job = jobs.submit(cfg(tiny_model, steps=150))
    first = subprocess.Popen([sys.executable, "-m", "core", "runs", "supervise", "--poll", "0.3"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until(lambda: job.dir.read_status().get("step", 0) >= 2)
        first.kill()
        first.wait()
        worker = jobs.get(job.id).pid
        assert jobs.pid_alive(worker, job.id), "the worker must outlive the supervisor that started it"
        second = subprocess.run([sys.executable, "-m", "core", "runs", "supervise", "--until-idle", "--poll", "0.3"],
                                cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
    finally:
        if first.poll() is None:
            first.kill()
    assert state(job.id) == "completed" and job.dir.read_status()["step"] == 150


def test_concurrent_start_requests_each_create_exactly_one_run(tiny_model, workspace):
    config = cfg(tiny_model)
    made, errors = [], []

    def press(key):
        try:
            made.append(jobs.submit(config, request_key=key).id)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=press, args=(f"tab-{i}",)) for i in range(5)]
    threads += [threading.Thread(target=press, args=("double-click",)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    all_jobs = jobs.list_jobs()
    assert len(all_jobs) == 6 and len(set(made)) == 6
    assert len(list((workspace / "runs").iterdir())) == 6


def test_damaged_files_and_a_deleted_folder_never_break_the_queue(tiny_model, workspace):
    import shutil
    broken = jobs.submit(cfg(tiny_model))
    broken.dir.status.write_text("{not json")
    with open(broken.dir.metrics, "w") as f:
        f.write('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert broken.dir.read_status() == {} and len(read_metrics(broken.dir.metrics)) == 1
    assert f"{broken.id}" in (listed := run_cli("runs", "list").stdout) and "(status.json cannot be read)" in listed
    with open(broken.dir.metrics, "a") as f:       # rows edited by hand: valid JSON, not the trainer's
        f.write('\n{"step": "x", "loss": "NaN"}\n{"step": 3, "loss": null}\n{"loss": 1.0}\n'
                '{"step": 4, "loss": 1.5, "note": "by hand", "grad_norm": true}\n[1]\n')
    assert read_metrics(broken.dir.metrics) == [{"step": 1, "loss": 2.0}, {"step": 3}, {"step": 4, "loss": 1.5}]
    assert broken.dir.last_metric("loss") == 1.5
    from webui.runs_tab import compare, refresh
    assert "run-progress" in refresh(broken.id, "en", {})[3] and compare([broken.id], "en")[0] is not None
    gone = jobs.submit(cfg(tiny_model))
    shutil.rmtree(gone.dir.root)
    jobs.move(gone.id, -5)
    sup = jobs.Supervisor()
    until(lambda: state(gone.id) == "failed" and state(broken.id) == "completed", timeout=180, sup=sup)
    sup.release()
    assert "deleted" in jobs.get(gone.id).error


@pytest.mark.parametrize("model, words", [("config.json", "configuration file"), ("empty-folder", "no config.json"),
                                          ("missing-folder/", "not found")])
def test_a_model_that_cannot_train_is_refused_before_anything_is_queued(tiny_model, workspace, tmp_path,
                                                                        model, words):
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "config.json").write_text((tiny_model / "config.json").read_text())
    with pytest.raises(WorkbenchError, match=words) as refused:
        jobs.submit(cfg(str(tmp_path / model)))
    assert refused.value.field == "model"
    assert jobs.list_jobs() == [] and not (workspace / "runs").exists()


@pytest.mark.parametrize("change,words,field", [
    ({"datasets": ["/no/such/file.jsonl"]}, "no such file", "datasets"),
    ({"datasets": ["{tmp}/notes.txt-less"]}, "unsupported file type", None),
    ({"datasets": ["{tmp}/broken.jsonl"]}, "no usable rows", "datasets.0"),
    ({"lora": {"target_modules": "nonexistent_proj"}}, "none of nonexistent_proj is a linear layer", "lora.target_modules"),
    ({"datasets": ["{tmp}/long.jsonl"], "data": {"max_seq_len": 32}}, "reply lies beyond the max length", "datasets.0"),
], ids=["missing-file", "unknown-type", "no-usable-rows", "no-such-layer", "every-row-too-long"])
def test_a_run_that_would_fail_at_the_front_of_the_queue_is_refused_now(tiny_model, workspace, tmp_path, change,
                                                                         words, field):
    (tmp_path / "notes.txt-less").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "broken.jsonl").write_text('{"instruction": "", "output": ""}\n')
    (tmp_path / "long.jsonl").write_text(json.dumps({"instruction": "Tell me more. " * 40, "output": "No."}) + "\n")
    data = {**cfg(tiny_model).to_dict(), **{k: v for k, v in change.items() if k != "datasets"}}
    if "datasets" in change:
        data["datasets"] = [p.format(tmp=tmp_path) for p in change["datasets"]]
    with pytest.raises(WorkbenchError, match=words) as refused:
        jobs.submit(RunConfig.from_dict(data))
    assert field is None or refused.value.field == field
    assert jobs.list_jobs() == [] and not (workspace / "runs").exists()


def test_queue_actions_on_a_run_in_the_wrong_state_or_none_say_which(tiny_model, workspace):
    job = jobs.submit(cfg(tiny_model))
    with pytest.raises(WorkbenchError, match="no run 'nope'"):
        jobs.move("nope", 1)
    jobs.stop(job.id)                                  # a queued run stops at once
    with pytest.raises(WorkbenchError, match="this one is stopped"):
        jobs.move(job.id, -1)
    jobs._set(job.id, state="running")
    with pytest.raises(WorkbenchError, match="a running run cannot be removed; stop it first"):
        jobs.remove(job.id)
    assert jobs.get(job.id) and job.dir.root.exists()


def test_a_rerun_asked_twice_with_one_request_key_queues_one_run(tiny_model, workspace):
    job = jobs.submit(cfg(tiny_model))
    first, second = jobs.rerun(job.id, request_key="k"), jobs.rerun(job.id, request_key="k")
    assert first.id == second.id != job.id and len(jobs.list_jobs()) == 2
    assert jobs.rerun(job.id).id not in (first.id, job.id)


def test_a_finished_run_leaves_the_list_and_keeps_its_folder_unless_its_files_are_deleted(tiny_model, workspace,
                                                                                         cli):
    from core import library
    kept, gone = jobs.submit(cfg(tiny_model, name="kept")), jobs.submit(cfg(tiny_model, name="gone"))
    sup = jobs.Supervisor()
    until(lambda: state(kept.id) == state(gone.id) == "completed", timeout=180, sup=sup)
    sup.release()
    library.sync()
    jobs.remove(kept.id)
    assert [j.id for j in jobs.list_jobs()] == [gone.id]
    library.sync()
    assert (kept.dir.adapter / "adapter_model.safetensors").is_file()
    assert str(kept.dir.adapter.absolute()) in [a.path for a in library.list_adapters()]
    done = cli("--workspace", workspace, "runs", "remove", gone.id, "--delete-files")
    assert done.returncode == 0 and done.stdout.strip() == f"{gone.id} removed; its folder was deleted", done.stderr
    assert jobs.list_jobs() == [] and not gone.dir.root.exists()
    assert not any((workspace / "runs" / ".trash").iterdir())
    assert [a.run_id for a in library.list_adapters()] == [kept.id]
    missing = cli("--workspace", workspace, "runs", "remove", gone.id)
    assert missing.returncode != 0 and f"no run '{gone.id}'" in missing.stderr


def test_a_run_folder_deleted_by_hand_is_flagged_and_can_only_be_removed(tiny_model, workspace, cli):
    import shutil
    from core import runview
    job = jobs.submit(cfg(tiny_model))
    jobs.stop(job.id)
    assert not runview.summary(jobs.get(job.id))["folder_missing"]
    shutil.rmtree(job.dir.root)
    assert runview.summary(jobs.get(job.id))["folder_missing"]
    assert "(folder deleted)" in cli("--workspace", workspace, "runs", "list").stdout
    for action in (jobs.resume, jobs.rerun, jobs.config_of):
        with pytest.raises(WorkbenchError, match="folder .* was deleted; remove the run from the list"):
            action(job.id)
    assert len(jobs.list_jobs()) == 1
    jobs.remove(job.id)
    assert jobs.list_jobs() == []


def test_a_run_started_by_hand_joins_the_list_can_be_stopped_and_stays_off_once_removed(tiny_model, workspace,
                                                                                       tmp_path, monkeypatch):
    """`python -m core train` in the workspace, from a shell (it shares the shell's process group, and
    its command line names only its config): the list shows it, the supervisor sees it alive through
    the log it writes (named through a linked workspace, as a workspace on another disk is), and Stop
    reaches it."""
    link = tmp_path / "linked"
    workspace.mkdir()
    link.symlink_to(workspace)
    monkeypatch.setenv("WORKBENCH_HOME", str(link))
    config = tmp_path / "run.yaml"
    cfg(tiny_model, steps=300, name="by-hand").save(config)
    worker = subprocess.Popen([sys.executable, "-m", "core", "train", "--config", str(config)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sup = jobs.Supervisor()
    try:
        until(lambda: [j.state for j in jobs.list_jobs()] == ["running"], timeout=180, sup=sup)
        job = jobs.list_jobs()[0]
        assert job.name == "by-hand" and job.pid == worker.pid and job.dir.root.parent == link / "runs"
        until(lambda: job.dir.read_status().get("step", 0) >= 2, sup=sup)
        sup.tick()
        assert state(job.id) == "running"
        jobs.stop(job.id)
        assert worker.wait(timeout=120) == 143
        until(lambda: state(job.id) == "stopped", sup=sup)
        assert job.dir.newest_checkpoint() is not None
        worker = subprocess.Popen([sys.executable, "-m", "core", "train", "--config", str(job.dir.config),
                                   "--resume"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until(lambda: [j.state for j in jobs.list_jobs()] == ["running"], timeout=180, sup=sup)
        jobs.stop(job.id)                           # resumed by hand, listed as running, stopped from the list
        assert worker.wait(timeout=120) == 143
        until(lambda: state(job.id) == "stopped", sup=sup)
    finally:
        worker.kill()
        sup.release()
    jobs.remove(job.id)
    assert jobs.list_jobs() == [] and job.dir.root.is_dir()


def test_removing_a_run_queued_to_resume_keeps_what_it_trained(tiny_model, workspace):
    sup = jobs.Supervisor()
    job = stopped_run(tiny_model, sup, 2)
    sup.release()
    jobs.resume(job.id)
    assert state(job.id) == "queued"
    assert jobs.remove(job.id) == "kept"
    assert job.dir.newest_checkpoint() is not None and (job.dir.root / "train.log").is_file()
    assert jobs.list_jobs() == [] and job.dir.read_status()["state"] == "stopped"


def test_stop_never_signals_a_process_that_is_not_the_runs_worker(workspace):
    """A run folder that says running, with the pid of a worker long gone that another process now has."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        run = workspace / "runs" / "gone-1"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("model: m\n")
        (run / "status.json").write_text(f'{{"state": "running", "pid": {other.pid}}}')
        assert [j.id for j in jobs.list_jobs()] == ["gone-1"]
        with pytest.raises(WorkbenchError, match="process is gone"):
            jobs.stop("gone-1")
        assert other.poll() is None
        sup = jobs.Supervisor()
        sup.tick()
        sup.release()
        assert state("gone-1") == "failed" and other.poll() is None
    finally:
        other.kill()


def test_a_stop_that_finds_the_run_just_started_leaves_it_to_the_worker(tiny_model, workspace):
    """The supervisor may start a queued run between a Stop's read and its write: the run must not be
    marked stopped while its worker trains on unsignalled."""
    job = jobs.submit(cfg(tiny_model))
    jobs._set(job.id, state="starting", position=None)          # as the supervisor's start does
    assert jobs.leave_queue(job) is False
    assert state(job.id) == "starting" and job.dir.read_status()["state"] == "queued"
    jobs._set(job.id, state="queued")
    assert jobs.leave_queue(job) is True
    assert state(job.id) == "stopped" and job.dir.read_status()["state"] == "stopped"


def test_a_stop_sent_as_the_worker_starts_ends_the_run_stopped_not_failed(tiny_model, workspace):
    """The worker is signalled before it has set up its handler for Stop (it is still importing)."""
    sup = jobs.Supervisor()
    job = jobs.submit(cfg(tiny_model, steps=50))
    until(lambda: jobs.get(job.id).pid, timeout=60, sup=sup)
    jobs.stop(job.id)
    until(lambda: state(job.id) not in jobs.ACTIVE, timeout=120, sup=sup)
    sup.release()
    ended = jobs.get(job.id)
    assert ended.state == "stopped" and ended.dir.read_status()["state"] == "stopped", ended.error
    assert (ended.error or "").startswith("stopped before its first checkpoint"), ended.error
    assert not ended.dir.newest_checkpoint()
    with pytest.raises(WorkbenchError, match="no checkpoint to resume from"):
        jobs.resume(job.id)


def test_a_run_asked_to_stop_reads_stopping_until_its_worker_ends(tiny_model, workspace, cli):
    """A worker mid-step takes a while to stop: this one, named for the run, does not stop at all.
    A resumed run's new worker is not 'stopping' for the Stop sent to the one before."""
    from core import runview
    job = jobs.submit(cfg(tiny_model))
    worker = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                               "signal.SIG_IGN); print('ready', flush=True); time.sleep(120)", job.id],
                              stdout=subprocess.PIPE, text=True)
    try:
        worker.stdout.readline()
        jobs._set(job.id, state="running", position=None, pid=worker.pid)
        assert runview.summary(jobs.get(job.id))["stopping"] is False
        jobs.stop(job.id)
        summary = runview.summary(jobs.get(job.id))
        assert summary["stopping"] and runview.shown_state(summary) == "stopping" and worker.poll() is None
        assert f"{job.id} stopping" in " ".join(cli("runs", "list").stdout.split())
        with pytest.raises(WorkbenchError, match="still stopping"):
            jobs.resume(job.id)
        jobs._set(job.id, pid=os.getpid())            # the next worker of the same run
        assert not jobs.get(job.id).stopping
    finally:
        worker.kill()


def test_a_run_its_worker_refuses_shows_why_by_field_in_the_ui_language(tiny_model, workspace, tmp_path):
    """The data file is deleted after the run was queued: the worker refuses it, field and file apart."""
    from core import runview
    from webui.runs_tab import error_text

    data = tmp_path / "gone.jsonl"
    data.write_text(DATA.read_text())
    job = jobs.submit(RunConfig.from_dict({"model": str(tiny_model), "name": "gone", "datasets": [str(data)],
                                           "train": {"max_steps": 2, "batch_size": 2}}))
    data.unlink()
    sup = jobs.Supervisor()
    until(lambda: state(job.id) == "failed", timeout=180, sup=sup)
    sup.release()
    summary = runview.summary(jobs.get(job.id))
    assert summary["error_detail"]["field"] == "datasets"
    assert error_text(summary, "en") == f"Datasets (datasets), {data}: no such file, and no saved dataset of that name"
    assert error_text(summary, "zh") == f"数据集（datasets），{data}：没有该文件，也没有同名的已保存数据集"
    jobs._set(job.id, error=f"the worker process of rank 1 exited with code 1; then {summary['error']}")
    under_torchrun = runview.summary(jobs.get(job.id))     # torchrun's root cause comes first, and stays
    assert error_text(under_torchrun, "en") == ("the worker process of rank 1 exited with code 1; then Datasets "
                                                f"(datasets), {data}: no such file, and no saved dataset of that name")
    assert error_text(under_torchrun, "zh").startswith("rank 1 的工作进程以退出码 1 结束；随后：数据集（datasets），")
    job.dir.write_status(state="failed", error="a later crash")     # resumed, then failed otherwise
    jobs._set(job.id, error="a later crash")
    assert error_text(runview.summary(jobs.get(job.id)), "zh") == "a later crash"


def test_chat_with_a_failed_run_says_whether_it_left_no_checkpoint_or_lost_its_folder(tiny_model, workspace):
    from webui.runs_tab import open_chat

    job = jobs.submit(RunConfig.from_dict({"model": str(tiny_model), "name": "gone", "datasets": [str(DATA)]}))
    jobs._set(job.id, state="failed", error="it broke")
    assert "saved no checkpoint before it ended" in open_chat(job.id, "en")[0]
    shutil.rmtree(jobs.get(job.id).run_dir)
    said = open_chat(job.id, "en")[0]
    assert "was deleted, with its checkpoints" in said and str(jobs.get(job.id).run_dir) in said, said
    assert "文件夹" in open_chat(job.id, "zh")[0]


def test_a_picked_run_that_leaves_the_list_empties_the_pick_and_no_button_acts_on_another(tiny_model, workspace):
    """Removed elsewhere (another tab, the command line): the Runs tab must not slide onto another
    run, which Stop, Resume or Re-run would then act on."""
    from webui.runs_tab import nothing_picked, refresh

    first, second = jobs.submit(cfg(tiny_model, name="first")), jobs.submit(cfg(tiny_model, name="second"))
    assert refresh(None, "en", {})[0]["value"] == second.id          # nothing picked yet: the newest
    seen = refresh(second.id, "en", {})[-1]
    jobs.stop(second.id)
    jobs.remove(second.id)
    out = refresh(second.id, "en", seen)
    assert out[0]["value"] is None and out[2] is False, out[:3]
    assert f"The run you picked, {second.id}, has left the list" in out[3]
    out = refresh(None, "en", out[-1])          # the next ticks leave the pick alone (the user may be picking)
    assert out[0] == gr.skip() and out[2] == gr.skip()
    assert "has left the list" in out[3] and state(first.id) == "queued"
    assert nothing_picked("en") == "Pick a run first."
    jobs.stop(first.id)
    jobs.remove(first.id)
    assert nothing_picked("en").startswith("No run yet")


def test_a_run_folder_deleted_while_it_trains_stays_deleted_and_the_run_says_so(tiny_model, workspace):
    """The worker must not make the folder anew (with a lone status.json) nor end on a raw
    FileNotFoundError: the run is flagged as one whose folder was deleted."""
    job = jobs.submit(cfg(tiny_model, steps=100000, name="doomed"))
    sup = jobs.Supervisor()
    try:
        until(lambda: state(job.id) == "running" and job.dir.last_metric("step"), timeout=180, sup=sup)
        for _ in range(20):                 # the worker writes into it meanwhile
            shutil.rmtree(job.dir.root, ignore_errors=True)
        until(lambda: state(job.id) == "failed", timeout=120, sup=sup)
    finally:
        sup.release()
    gone = jobs.get(job.id)
    assert gone.error == "the run folder was deleted" and jobs.folder_missing(gone), gone.error
    time.sleep(1)
    assert not job.dir.root.exists()


def test_a_moved_workspace_keeps_its_runs_and_adapters_and_a_stopped_run_resumes_there(tiny_model, workspace,
                                                                                       monkeypatch):
    """Moved to another folder (or a Docker volume seen from the host): no run reads as deleted, no
    adapter is listed twice, and a resumed run trains in the new place, not the old."""
    from core import library

    sup = jobs.Supervisor()
    done = jobs.submit(cfg(tiny_model, steps=2, name="done"))
    until(lambda: state(done.id) == "completed", timeout=180, sup=sup)
    stopped = stopped_run(tiny_model, sup, 2)
    sup.release()
    adapters = [(a.name, a.path) for a in library.list_adapters()]
    assert [name for name, _ in adapters] == [done.id]
    alias = workspace.parent / "alias"
    alias.symlink_to(workspace)                 # the same folder by another name: nothing is rewritten
    monkeypatch.setenv("WORKBENCH_HOME", str(alias))
    assert [(a.name, a.path) for a in library.list_adapters()] == adapters
    monkeypatch.setenv("WORKBENCH_HOME", str(workspace))
    assert [(a.name, a.path) for a in library.list_adapters()] == adapters
    moved = workspace.parent / "moved"
    shutil.move(workspace, moved)
    monkeypatch.setenv("WORKBENCH_HOME", str(moved))
    for job in jobs.list_jobs():
        assert job.run_dir.startswith(str(moved / "runs")) and not jobs.folder_missing(job), job
    assert [(a.name, a.path) for a in library.list_adapters()] == [(done.id, str(moved / "runs" / done.id / "adapter"))]
    jobs.resume(stopped.id)
    sup = jobs.Supervisor()
    until(lambda: state(stopped.id) == "completed", timeout=300, sup=sup)
    sup.release()
    assert (moved / "runs" / stopped.id / "adapter" / "adapter_config.json").is_file() and not workspace.exists()


def test_without_a_supervisor_the_command_line_says_so_and_settles_runs_whose_worker_died(tiny_model, workspace,
                                                                                          cli):
    queued = cli("runs", "submit", "--config", ROOT / "presets" / "demo.yaml", f"model={tiny_model}")
    assert queued.returncode == 0 and "1 run(s) queued; nothing starts queued runs" in queued.stderr, queued.stderr
    job_id = queued.stdout.split()[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    jobs._set(job_id, state="running", pid=dead.pid, started_at=time.time())   # its worker killed with the app
    listed = cli("runs", "list")
    assert job_id in listed.stdout and "failed" in listed.stdout.split(job_id)[1].split("\n")[0], listed.stdout
    assert "ended without reporting" in jobs.get(job_id).error
    assert cli("runs", "remove", job_id).returncode == 0 and not jobs.list_jobs()
