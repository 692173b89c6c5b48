"""A simulated Twilio caller: places a call against the bot server and speaks the Media Streams protocol.

``SimulatedCaller(server_url, script=[...]).run()`` returns a :class:`CallResult` with the Twilio-side timeline.
The playout queue (mark echoes, ``clear``) is the sans-I/O :class:`PlaybackClock`.
"""

from __future__ import annotations

from voicebot.caller.client import SimulatedCaller
from voicebot.caller.playback import AudioStarted, AudioStopped, HeardSegment, PlaybackClock
from voicebot.caller.script import (
    Dtmf,
    HangUp,
    Say,
    SayWhileBotSpeaks,
    Silence,
    Step,
    WaitForBotAudio,
    WaitForBotSilence,
)
from voicebot.caller.timeline import CallerError, CallResult, EndReason, EventKind, ReceivedMedia, TimelineEvent, Turn
from voicebot.caller.twiml import RejectTwiml, StreamTwiml, parse_twiml, reachable_stream_url
from voicebot.caller.wavio import WavFormatError, read_wav, write_wav

__all__ = [
    "AudioStarted",
    "AudioStopped",
    "CallResult",
    "CallerError",
    "Dtmf",
    "EndReason",
    "EventKind",
    "HangUp",
    "HeardSegment",
    "PlaybackClock",
    "ReceivedMedia",
    "RejectTwiml",
    "Say",
    "SayWhileBotSpeaks",
    "Silence",
    "SimulatedCaller",
    "Step",
    "StreamTwiml",
    "TimelineEvent",
    "Turn",
    "WaitForBotAudio",
    "WaitForBotSilence",
    "WavFormatError",
    "parse_twiml",
    "reachable_stream_url",
    "read_wav",
    "write_wav",
]
