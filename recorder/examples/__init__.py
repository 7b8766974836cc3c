"""Built-in examples that need no downloads: ``python -m recorder.examples.gpt`` (and ``cnn``,
``mlp``).  Each trains a small model on data it makes itself and records it with the recorder."""
