"""Assemble the tabs and launch."""
from __future__ import annotations

import gradio as gr

from core.workspace import home


def build() -> gr.Blocks:
    with gr.Blocks(title="LoRA Workbench") as demo:
        gr.Markdown(f"# LoRA Workbench\nWorkspace: `{home()}`\n\n"
                    "Train from the command line: `python -m core train --config presets/demo.yaml`")
    return demo


def launch(host: str, port: int, auth=None, share: bool = False) -> None:
    build().queue().launch(server_name=host, server_port=port, auth=auth, share=share)
