"""Vision on a pretrained language model: visual data (data.py, templates.py), LLaVA's two-stage
alignment as objectives of the one training loop (align.py), and the `opengpt4 vision` commands (cli.py)."""
