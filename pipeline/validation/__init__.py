"""The data gate: profile.py (the per-image table), suites.py (the expectations), gate.py
(running them, the messages)."""
