"""Everything Twilio-specific: webhooks, callbacks, outbound calls and the account's numbers."""
