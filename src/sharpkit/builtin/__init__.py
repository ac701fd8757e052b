"""Built-in plugins, registered through sharpkit's own entry points (dogfooding)."""
