"""The kiosk's local web UI (kiosk and PAD modes) and its API: see :mod:`.server`."""
