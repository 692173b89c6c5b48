"""Provider clients behind the small interfaces in ``base.py``: speech-to-text, the language model, text-to-speech.

May import the top-level plumbing only (settings, logs, errors, audio); never ``call``, ``twilio``, ``devpage``,
``emulators`` or ``caller``: a provider knows nothing of calls.
"""
