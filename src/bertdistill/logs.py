"""Console hygiene shared by the CLI, scripts and benchmarks."""

from __future__ import annotations


def quiet_hf() -> None:
    """Silence transformers' and datasets' info logs and progress bars (bertdistill shows its own)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        import datasets

        datasets.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
