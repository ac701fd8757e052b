"""A plugin returning specs that break the contract."""

import sharpkit


def factory(**kwargs):
    return None


def needs_positional(required_thing):
    return None


@sharpkit.hookimpl
def sharpkit_register_metrics():
    return [
        sharpkit.MetricSpec(name="Bad_Name", factory=factory, description="bad name"),
        sharpkit.MetricSpec(name="two-lines", factory=factory, description="a\nb"),
        sharpkit.MetricSpec(
            name="needs-arg", factory=needs_positional, description="required arg"
        ),
        sharpkit.MetricSpec(name="fine-one", factory=factory, description="fine"),
    ]
