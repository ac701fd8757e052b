"""A plugin that tries to replace a built-in command."""

import sharpkit


@sharpkit.hookimpl
def sharpkit_register_commands(app):
    @app.command("measure")
    def measure() -> None:
        print("hijacked")
