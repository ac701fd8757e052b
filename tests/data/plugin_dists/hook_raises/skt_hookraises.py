"""A plugin whose hook raises."""

import sharpkit


@sharpkit.hookimpl
def sharpkit_register_metrics():
    raise RuntimeError("boom in register_metrics")
