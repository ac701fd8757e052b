"""A well-behaved test plugin: one metric and one command."""

import sharpkit


class Norm:
    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def compute(self, ctx):
        total = sum(float((p.detach() ** 2).sum()) for p in ctx.model.parameters())
        return sharpkit.MetricResult(value=self.scale * total**0.5)


@sharpkit.hookimpl
def sharpkit_register_metrics():
    return [
        sharpkit.MetricSpec(
            name="param-norm",
            factory=Norm,
            description="Euclidean norm of the parameters (test plugin)",
            options=(sharpkit.Option(name="scale", type=float, default=1.0),),
        )
    ]


@sharpkit.hookimpl
def sharpkit_register_commands(app):
    @app.command("hello-okmetric")
    def hello() -> None:
        """Say hello (test plugin command)."""
        print("hello from okmetric")
