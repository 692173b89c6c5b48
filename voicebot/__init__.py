"""voicebot: a low-latency Twilio phone voice bot.

Layers, each importing only the ones below it (tests/test_layers.py checks the import graph):

- top level, process-wide plumbing: ``settings``, ``logs``, ``metrics``, ``errors``, ``audio`` (mu-law framing),
  ``access`` (direct-local or outside); and the serving shell above everything else: ``server`` (routes),
  ``serve`` (processes, signals), ``__main__`` (the command line), ``doctor`` (what stands between the
  configuration and a working call).
- ``twilio/``: the Twilio edge (wire codec, TwiML, signatures and stream tokens, the REST clients, outbound-call
  context, status callbacks, the ``twilio numbers|connect|call`` commands).
- ``providers/``: speech-to-text, language model and text-to-speech clients behind ``providers/base.py``.
- ``tools/``: custom tools for the model (declared HTTP tools, Python tools, the per-call runner); loaded once per
  process like the settings, it knows nothing of turns or audio: ``call/`` imports it, never the reverse.
- ``call/``: one phone call, from the WebSocket handshake to the hang-up (session, conversation, turn-taking,
  bot turns, chunker, playout ledger, audio writer, VAD, fixed phrases, transcript).
- ``devpage/``: the local browser softphone; ``emulators/``: the offline providers; ``caller/``: the simulated
  Twilio caller. Nothing in ``twilio/``, ``providers/`` or ``call/`` imports these three.
"""
