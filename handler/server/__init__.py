"""The process: settings, API keys, where it listens, workers, the app's routes, /info, /health, /metrics."""
