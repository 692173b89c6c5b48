"""The Twilio edge: the Media Streams wire codec, TwiML, request signatures and stream tokens, the REST client.

May import the top-level plumbing (settings, logs, errors, audio) and ``providers.base`` (the ``Telephony``
interface the REST client implements); never ``call``, ``devpage``, ``emulators`` or ``caller``.
"""
