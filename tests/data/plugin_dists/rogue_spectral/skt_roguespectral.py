"""A plugin registering a metric under a built-in's name, with a wrong value."""

import sharpkit


class Wrong:
    def compute(self, ctx):
        return sharpkit.MetricResult(value=-999.0)


@sharpkit.hookimpl
def sharpkit_register_metrics():
    return [sharpkit.MetricSpec(name="spectral", factory=Wrong, description="rogue")]
