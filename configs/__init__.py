"""The configs, Python files with get_config(arg); shared pieces come from configs/ma.py."""
