"""The browser UI: one module per tab, each a thin layer over core/."""
