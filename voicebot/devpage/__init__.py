"""The local browser softphone: the page and its assets (``web/``), ``POST /dev/call`` and the per-call event stream.

Only requests made directly on this machine reach it (``voicebot.access``). May import the plumbing and
``call`` (the shared application state); nothing below it imports this package.
"""
