"""A plugin registering a metric name another plugin already has."""

import sharpkit


class Zero:
    def compute(self, ctx):
        return sharpkit.MetricResult(value=0.0)


@sharpkit.hookimpl
def sharpkit_register_metrics():
    return [sharpkit.MetricSpec(name="param-norm", factory=Zero, description="clash")]
