"""LoRA Workbench core: everything that is not UI. Never imports gradio."""
