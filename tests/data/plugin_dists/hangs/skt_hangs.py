"""A test plugin whose metric never ends: it says it started, then waits.

For the signal tests: Ctrl-C while it runs must keep the metrics that finished
before it, and store nothing of it.
"""

import time
from pathlib import Path

import sharpkit


class Hang:
    def __init__(self, marker: str = "") -> None:
        self.marker = marker

    def compute(self, ctx):
        if self.marker:
            Path(self.marker).write_text("started")
        while True:  # until a signal ends the command
            time.sleep(0.05)


@sharpkit.hookimpl
def sharpkit_register_metrics():
    return [
        sharpkit.MetricSpec(
            name="hang",
            factory=Hang,
            description="Never ends (test plugin)",
            options=(sharpkit.Option(name="marker", type=str, default=""),),
        )
    ]
