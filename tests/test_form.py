"""The Train form's fields as gradio components."""
from webui.form import float_step


def test_number_spinners_move_by_a_step_that_fits_the_field(tmp_path, monkeypatch):
    from webui import app

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "workspace"))
    demo = app.build()
    steps = {b.elem_id: b.step for b in demo.blocks.values() if getattr(b, "elem_id", "") and hasattr(b, "step")}
    assert steps["field-train-learning_rate"] == float_step(2e-4) == 1e-5
    assert steps["field-train-epochs"] == 0.1 and steps["field-lora-rank"] == 1
    assert float_step(0.0) == 0.01
