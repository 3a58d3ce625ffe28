"""Quiet by default: the libraries' loading bars and their known-harmless warnings are hidden unless `verbose`.

Hidden (each checked harmless here): transformers' "Loading weights" bars and its "requires torchvision ... falling
back to ...Pil" notices (torchvision cannot be installed on this stack: notes/environment.md), diffusers' "config
attributes {'block_out_channels': ...} were passed to AutoencoderTiny" (the saved config of the emoji-64 VAE carries
a key AutoencoderTiny ignores), and diffusers' "expected CLIPTextModel" notice for the MiniLM text encoder. Errors
still show.
"""

from __future__ import annotations


def quiet_libraries(verbose: bool = False) -> None:
    """Set diffusers' and transformers' logging to errors only and turn their progress bars off (with `verbose`:
    warnings and bars on)."""
    import diffusers
    import transformers

    for lib in (diffusers.utils.logging, transformers.utils.logging):
        if verbose:
            lib.set_verbosity_warning()
            lib.enable_progress_bar()
        else:
            lib.set_verbosity_error()
            lib.disable_progress_bar()
