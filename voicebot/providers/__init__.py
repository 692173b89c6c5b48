"""Provider clients behind small interfaces: speech-to-text, the language model, text-to-speech, telephony."""
