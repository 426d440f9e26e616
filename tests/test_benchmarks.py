"""The benchmark scripts' own arithmetic (their GPU runs need a GPU machine: benchmarks/gpu_session.sh)."""
from benchmarks.train_speed import steady_rate


def test_steady_rate_leaves_out_the_warm_up_steps():
    times, tokens = [10.0, 11.0, 12.0, 14.0], [100, 200, 300, 500]     # the first step took its start-up time
    assert steady_rate(times, tokens, warmup=1) == (500 - 100) / (14.0 - 10.0)
    assert steady_rate(times, tokens, warmup=2) == (500 - 200) / (14.0 - 11.0)


def test_steady_rate_needs_two_steps_after_the_warm_up():
    assert steady_rate([1.0, 2.0, 3.0], [10, 20, 30], warmup=2) is None
    assert steady_rate([1.0, 2.0, 3.0], [10, 20, 30], warmup=0) is None


def test_every_arm_is_a_config_the_trainer_accepts(tmp_path):
    """A mistyped key in an arm would only show on the GPU machine, after its set-up time."""
    from benchmarks.train_speed import OURS, VARIANTS, run_config

    spec = {"model": "SmolLM2-135M-Instruct", "method": "qlora", "out": str(tmp_path), "max_len": 512, "steps": 2,
            "batch": 4}
    for arm, overrides in {"ours": {}, **VARIANTS}.items():
        train = {**OURS, **overrides}
        quant = train.pop("quant", {})
        cfg = run_config(spec, {**train, "quant": quant})
        assert all(getattr(cfg.train, k) == v for k, v in train.items()), arm
        assert all(getattr(cfg.quant, k) == v for k, v in quant.items()), arm
    lean = run_config(spec, {**OURS, **VARIANTS["ours-lean"]})
    assert lean.train.liger_kernels and lean.train.gradient_checkpointing and not lean.quant.upcast_unquantized
