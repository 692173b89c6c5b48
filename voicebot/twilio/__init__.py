"""The Twilio edge: the Media Streams wire codec, TwiML, request signatures and stream tokens, the REST clients,
outbound-call context, status callbacks and the ``python -m voicebot twilio`` commands.

May import the top-level plumbing (settings, logs, errors, audio, metrics) and ``providers.base`` (the
``Telephony`` interface the REST client implements); never ``call``, ``devpage``, ``emulators`` or ``caller``.
"""
