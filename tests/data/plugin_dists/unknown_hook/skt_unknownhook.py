"""A plugin with a typo in its hook name."""

import sharpkit


@sharpkit.hookimpl
def sharpkit_register_metric():
    return []
