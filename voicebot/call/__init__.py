"""One phone call: the session (handshake, loops, ending), the conversation and its turn-taking state machine,
bot turns (LLM → chunker → TTS → ordered playout), the playout ledger, the audio writer, VAD, cached fixed phrases,
the transcript, and the per-application state and services the calls share.

May import the plumbing, ``twilio`` and ``providers``; never ``devpage``, ``emulators`` or ``caller``, and never
``server`` (the server builds calls, not the other way round).
"""
