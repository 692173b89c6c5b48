"""voicebot: a low-latency Twilio phone voice bot."""
